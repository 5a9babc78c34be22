"""CIFAR10 regularized by ImageNet: the design card's entry, identical to cifar10_by_imagenet.py.

ResNet18, α=10, Th=0.8, 40 epochs, the first 5000 grayscale 32×32 ImageNet images
(TFDS imagenet_resized/32x32 or an imported Imagenet32) as the regularization source.
"""
from pixelreg_jax.experiments import experiment


def get_config():
  return experiment('cifar10_by_imagenet')
