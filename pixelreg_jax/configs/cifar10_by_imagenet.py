"""CIFAR10 classified, regularized by ImageNet (the paper's Figs. 2b, 3a): ResNet18, α=10, Th=0.8, 40
epochs; the regularization source is the 32×32 downsampled ImageNet (TFDS imagenet_resized/32x32
or an imported Imagenet32).

    python -m pixelreg_jax.main --config=configs/cifar10_by_imagenet.py   # into runs/cifar10_by_imagenet/
    # the unregularized twin: the same with --config.reg.alpha=0 (and another --workdir)
    # the release feeds the ImageNet images in [0, 1], not 5·(x − 0.5): add --config.reg.normalize=source

The paper reports: more robust to Gaussian noise (Fig. 2b) and to transferred FGSM (Fig. 3a),
slightly lower clean accuracy.
Everything not set here is the paper's (``config.base_config``): width 64, batch 64 + 16 pairs,
the first 5000 images of the source's train split, SGD 0.1 / momentum 0.9 with Li et al.'s cyclic
schedule, 1 % validation, grayscale input at the dataset's own size (docs/method.md §4-6).
"""
from pixelreg_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar10'
  c.augment = True             # random crop (4-pixel reflect padding) + horizontal flip
  c.model.name = 'resnet18'
  c.num_epochs = 40
  c.reg.dataset = 'imagenet32'
  c.reg.alpha = 10.0
  c.reg.threshold = 0.8
  return c
