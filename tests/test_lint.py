"""The code passes `ruff check` with the repository's configuration (pyproject.toml [tool.ruff])."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from conftest import ROOT

CHECKED = ('pixelreg_jax', 'tests', 'benchmarks')


def _ruff() -> list[str]:
  """ruff as installed with the test extra: the executable beside this Python, else on PATH."""
  beside = os.path.join(os.path.dirname(sys.executable), 'ruff')
  found = beside if os.path.isfile(beside) else shutil.which('ruff')
  assert found, "ruff is not installed: pip install -c constraints.txt -e '.[test]'"
  return [found]


def test_ruff_check_passes():
  proc = subprocess.run(_ruff() + ['check', '--no-cache', '--output-format=concise', *CHECKED], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, f'ruff check found problems (fix with `ruff check --fix` or by hand):\n' \
      f'{proc.stdout}{proc.stderr}'


def test_ruff_reads_the_project_configuration():
  """A line of 121 characters and a 2-space indented block: only the first is a violation."""
  code = 'def f():\n  return 1\n\n\nX = ' + '1 + ' * 28 + '10000\n'
  assert len(code.splitlines()[-1]) == 121
  proc = subprocess.run(_ruff() + ['check', '--no-cache', '--output-format=concise', '--stdin-filename',
                                   'pixelreg_jax/lint_probe.py', '-'],
                        cwd=ROOT, input=code, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert re.findall(r':(\d+):\d+: ([A-Z]+\d+) ', proc.stdout) == [('5', 'E501')], proc.stdout
