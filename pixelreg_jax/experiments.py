"""The paper's experiments (docs/method.md §6), each one ``base_config()`` plus its settings.

``configs/<name>.py`` files call ``experiment(name)``; the README's configs table is this dict.
"""
from __future__ import annotations

import ml_collections

from pixelreg_jax.config import base_config

# name: (classify, regularize by, model, α, Th, epochs, what the paper reports)
PAPER = {
    'mnist_by_mnist': ('mnist', 'mnist', 'resnet18', 4.0, 0.2, 20,
                       'much more robust to Gaussian noise at high σ, no loss of clean accuracy (Fig. 2a)'),
    'fashion_mnist_by_mnist': ('fashion_mnist', 'mnist', 'resnet18', 10.0, 0.4, 20,
                               'more robust across black-box attacks (text, no figure)'),
    'cifar10_by_imagenet': ('cifar10', 'imagenet32', 'resnet18', 10.0, 0.8, 40,
                            'more robust to Gaussian noise (Fig. 2b) and transferred FGSM (Fig. 3a), '
                            'slightly lower clean accuracy'),
    'cifar10_by_cifar10': ('cifar10', 'cifar10', 'resnet18', 10.0, 0.8, 40,
                           'more robust to transferred FGSM (Fig. 3b)'),
    'cifar100_by_imagenet': ('cifar100', 'imagenet32', 'resnet34', 10.0, 0.8, 60,
                             'more robust to Gaussian noise (Fig. 2c), slightly lower clean accuracy'),
    # Not a figure of the paper: its setting for "other combinations" (docs/method.md §6); the full-scale
    # study of launch/full_scale.sh.
    'fashion_mnist_by_fashion_mnist': ('fashion_mnist', 'fashion_mnist', 'resnet18', 10.0, 0.8, 20,
                                       '— (the paper\'s setting for other combinations, α=10, Th=0.8)'),
}


def experiment(name: str) -> ml_collections.ConfigDict:
  """The config of a paper experiment: 5000 regularization images, 16 pairs, batch 64, the
  cyclic schedule, full width; CIFAR-like data augmented."""
  classify, reg, model, alpha, th, epochs, _ = PAPER[name]
  c = base_config()
  c.dataset = classify
  c.augment = classify.startswith('cifar')
  c.num_epochs = epochs
  c.model.name = model
  c.reg.dataset = reg
  c.reg.alpha = alpha
  c.reg.threshold = th
  return c
