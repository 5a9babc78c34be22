"""CIFAR10 regularized by ImageNet (the design card's entry; paper Fig. 2b/3a).

ResNet18, α=10, Th=0.8, 40 epochs, 5000 grayscale 32×32 ImageNet images as the
regularization source (TFDS imagenet_resized/32x32), CIFAR augmentation.
"""
from pixelreg_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar10'
  c.augment = True
  c.num_epochs = 40
  c.model.name = 'resnet18'
  c.model.width = 64
  c.reg.dataset = 'imagenet32'
  c.reg.num_images = 5000
  c.reg.alpha = 10.0
  c.reg.threshold = 0.8
  return c
