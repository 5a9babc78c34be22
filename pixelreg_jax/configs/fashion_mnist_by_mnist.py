"""Fashion-MNIST classified, regularized by MNIST: ResNet18, α=10, Th=0.4, 20 epochs.

    python -m pixelreg_jax.main --config=configs/fashion_mnist_by_mnist.py   # into runs/fashion_mnist_by_mnist/
    # the unregularized twin: the same with --config.reg.alpha=0 (and another --workdir)

The paper reports: more robust across black-box attacks (in the text; no figure).
Everything not set here is the paper's (``config.base_config``): width 64, batch 64 + 16 pairs,
the first 5000 images of the source's train split, SGD 0.1 / momentum 0.9 with Li et al.'s cyclic
schedule, 1 % validation, grayscale input at the dataset's own size (docs/method.md §4-6).
"""
from pixelreg_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset = 'fashion_mnist'
  c.model.name = 'resnet18'
  c.num_epochs = 20
  c.reg.dataset = 'mnist'
  c.reg.alpha = 10.0
  c.reg.threshold = 0.4
  return c
