"""Experiment configs: one ``get_config()`` file per experiment, loaded by path with ``--config=``.

They install with the package, so ``python -m pixelreg_jax.main`` finds its default
(``fashion_mnist.py``) from any directory; in a checkout, ``configs/`` at the repository root is
a link to this folder, so ``--config=configs/cifar10.py`` works from the root.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def config_path(name: str) -> str:
  """The file of the config called ``name`` (e.g. 'fashion_mnist'): ``<package>/configs/<name>.py``."""
  return os.path.join(CONFIG_DIR, f'{name}.py')


def with_default(argv: list[str], name: str) -> list[str]:
  """``argv`` with ``--config=<this folder>/<name>.py`` added when it names no ``--config``.

  Entry points give their default config this way rather than to ``DEFINE_config_file``, which
  would load it, with any ``--config.x=…`` overrides, when the flag is defined: at import time,
  where a misspelt field is a traceback instead of the one-line error of flag parsing.
  """
  if any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
    return list(argv)
  return [argv[0], f'--config={config_path(name)}', *argv[1:]]


def load(name: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the config file called ``name`` (e.g. 'cifar10_by_imagenet')."""
  spec = importlib.util.spec_from_file_location(f'pixelreg_jax.configs.{name}', config_path(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
