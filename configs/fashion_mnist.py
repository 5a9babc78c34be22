"""The demo: Fashion-MNIST regularized by Fashion-MNIST, a narrow ResNet18, minutes on 2 CPU cores.

Real data read offline (Debian's dataset-fashion-mnist, or an imported copy). Paper-scale
settings are in fashion_mnist_by_mnist.py; this one trades width and data for speed.
"""
from pixelreg_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset = 'fashion_mnist'
  c.model.name = 'resnet18'
  c.model.width = 8
  c.train_subset = 12000
  c.num_epochs = 4
  c.batch_size = 64
  c.eval_batch_size = 1000
  # 4 epochs: one learning-rate step per epoch (0.1, 0.03, 0.009, 0.0027) instead of per 4 epochs.
  c.optim.lr_step_epochs = 1
  c.optim.lr_cycle_epochs = 4
  c.reg.dataset = 'fashion_mnist'
  c.reg.num_images = 1000
  c.reg.alpha = 4.0
  c.reg.threshold = 0.2
  c.log_every_steps = 50
  return c
