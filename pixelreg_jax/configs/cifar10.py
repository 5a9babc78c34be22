"""The design card's entry: CIFAR10 regularized by ImageNet, the same experiment as
cifar10_by_imagenet.py under a short name (the benchmark's default config).

    python -m pixelreg_jax.main --config=configs/cifar10.py   # into runs/cifar10/
"""
from pixelreg_jax.configs import cifar10_by_imagenet


def get_config():
  return cifar10_by_imagenet.get_config()
