"""Paper experiment 'cifar10_by_cifar10' (docs/method.md §6; settings in pixelreg_jax/experiments.py).

The unregularized baseline: --config.reg.alpha=0.
"""
from pixelreg_jax.experiments import experiment


def get_config():
  return experiment('cifar10_by_cifar10')
