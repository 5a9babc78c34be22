"""The package's shape: no import cycle, every error type in a leaf module, no module too long.

The imports are read from the source (``ast``), top-level and function-level alike: an import
deferred into a function is still an edge of the graph a reader has to follow.
"""
from __future__ import annotations

import ast
import os

import pytest

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'pixelreg_jax')
MAX_LINES = 520   # "no module over ~500 lines"


def package_modules(package_dir: str) -> dict[str, str]:
  """{dotted module name: path} of every .py file under ``package_dir``."""
  root = os.path.dirname(package_dir)
  out = {}
  for directory, _, files in os.walk(package_dir):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(directory, f)
        name = os.path.relpath(path, root)[:-3].replace(os.sep, '.')
        out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
  return out


def import_graph(package_dir: str) -> dict[str, set[str]]:
  """{module: the package's modules it imports}; ``from a import b`` counts as importing ``a.b``
  when that is a module, else ``a``."""
  modules = package_modules(package_dir)
  graph = {m: set() for m in modules}
  for name, path in modules.items():
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = package.split('.')[:len(package.split('.')) - node.level + 1]
          base = '.'.join(parts + ([base] if base else []))
        targets = [f'{base}.{a.name}' for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in modules:
          t = t.rpartition('.')[0]
        if t and t != name:
          graph[name].add(t)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle():
  found = cycles(import_graph(PACKAGE_DIR))
  assert not found, f'import cycles: {found}'


def test_the_cycle_finder_finds_cycles(tmp_path):
  """The finder on a package with a cycle through a function-level and a relative import."""
  pkg = tmp_path / 'pkg'
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'sub' / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from pkg.sub import b\n')
  (pkg / 'sub' / 'b.py').write_text('def f():\n  from .. import c\n')
  (pkg / 'c.py').write_text('import pkg.a\n')
  (pkg / 'd.py').write_text('from pkg import a\n')
  assert cycles(import_graph(str(pkg))) == [['pkg.a', 'pkg.c', 'pkg.sub.b']]


def test_errors_is_a_leaf():
  assert import_graph(PACKAGE_DIR)['pixelreg_jax.errors'] == set()


@pytest.mark.parametrize('name', sorted(package_modules(PACKAGE_DIR)))
def test_no_module_is_too_long(name):
  with open(package_modules(PACKAGE_DIR)[name]) as f:
    lines = sum(1 for _ in f)
  assert lines <= MAX_LINES, f'{name} has {lines} lines; split it by concern'
