"""Fashion-MNIST regularized by Fashion-MNIST at the paper's scale (α=10, Th=0.8: docs/method.md §6's
setting for other combinations); the full-scale study of launch/full_scale.sh.

The unregularized baseline: --config.reg.alpha=0.
"""
from pixelreg_jax.experiments import experiment


def get_config():
  return experiment('fashion_mnist_by_fashion_mnist')
