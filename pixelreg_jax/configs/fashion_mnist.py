"""The demo (and ``main``'s default): Fashion-MNIST regularized by Fashion-MNIST, a narrow ResNet18,
minutes on 2 CPU cores.

    python -m pixelreg_jax.main --config=configs/fashion_mnist.py   # into runs/fashion_mnist/
    # the unregularized twin: the same with --config.reg.alpha=0 (and another --workdir)
    bash launch/demo.sh                                                  # both, then noise sweeps and a plot

Real data read offline (Debian's dataset-fashion-mnist, or an imported copy). Paper-scale
settings are in fashion_mnist_by_mnist.py; this one trades width and data for speed.
"""
from pixelreg_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset = 'fashion_mnist'
  c.model.name = 'resnet18'
  c.model.width = 8
  c.train_subset = 10000   # the whole demo (two models, noise sweeps, plot) in ~6 min on 2 cores
  c.num_epochs = 5
  c.batch_size = 64
  c.eval_batch_size = 1000
  # 5 epochs: one learning-rate step per epoch (0.1, 0.03, 0.009, …) instead of one per 4 epochs.
  c.optim.lr_step_epochs = 1
  c.optim.lr_cycle_epochs = 5
  c.reg.dataset = 'fashion_mnist'
  c.reg.num_images = 1000
  # Tuned for this small budget (α=4/Th=0.2, the paper's MNIST setting, costs >10 points of
  # accuracy in 5 narrow epochs; see docs/results for the grid).
  c.reg.alpha = 1.0
  c.reg.threshold = 0.8
  c.log_every_steps = 50
  return c
