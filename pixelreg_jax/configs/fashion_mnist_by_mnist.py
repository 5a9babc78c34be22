"""Paper experiment 'fashion_mnist_by_mnist' (docs/method.md §6; settings in pixelreg_jax/experiments.py).

The unregularized baseline: --config.reg.alpha=0.
"""
from pixelreg_jax.experiments import experiment


def get_config():
  return experiment('fashion_mnist_by_mnist')
