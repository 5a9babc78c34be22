"""Experiment configs: one ``get_config()`` file per experiment, loaded by path with ``--config=``.

They install with the package, so ``python -m pixelreg_jax.main`` finds its default
(``fashion_mnist.py``) from any directory; in a checkout, ``configs/`` at the repository root is
a link to this folder, so ``--config=configs/cifar10.py`` works from the root.
"""
from __future__ import annotations

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def config_path(name: str) -> str:
  """The file of the config called ``name`` (e.g. 'fashion_mnist'): ``<package>/configs/<name>.py``."""
  return os.path.join(CONFIG_DIR, f'{name}.py')
