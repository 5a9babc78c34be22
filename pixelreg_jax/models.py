"""CIFAR-style ResNet18/34 of the release (METHOD.md section 4), with the 5 similarity taps.

Stem: conv 7×7 stride 1 pad 3 → BN → ReLU (no max-pool). Four stages of basic blocks with
widths w, 2w, 4w, 8w and strides 1, 2, 2, 2; 1×1 conv + BN shortcut when the shape changes.
Average-pool 4×4, linear head. Taps: the stem output and each stage's output.

Variables:
  params       conv/BN/dense weights and ``layer_weights`` [5] (softmax weights of the taps).
  batch_stats  BatchNorm running statistics.
  sim_stats    ``running_mean_{t}`` [C_t]: the per-channel running means of the taps used to
               centre features before the similarity cosine (β = 0.9, starting at 0).

Initialisation follows PyTorch's defaults (uniform ±1/√fan_in for convs and the head), so the
two implementations start from the same distribution.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pixelreg_jax import similarity

STAGE_SIZES = {
    'resnet18': (2, 2, 2, 2),
    'resnet34': (3, 4, 6, 3),
}

# kaiming_uniform(a=√5), PyTorch's default for Conv2d and Linear weights: U(±1/√fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _uniform_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BasicBlock(nn.Module):
  """conv3×3-BN-ReLU-conv3×3-BN + shortcut, then ReLU."""
  features: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=torch_kernel_init)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    y = conv(self.features, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(norm()(y))
    y = conv(self.features, (3, 3), 1, padding=1)(y)
    y = norm()(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = norm()(conv(self.features, (1, 1), self.strides, padding=0)(x))
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """The release's CIFAR-style ResNet.

  Attributes:
    stage_sizes: blocks per stage, (2,2,2,2) for ResNet18, (3,4,6,3) for ResNet34.
    num_classes: classifier outputs.
    width: channels of the stem and first stage (64 in the paper; smaller for CPU runs).
    beta: decay of the taps' running means.
    dtype: compute dtype (bfloat16 for mixed precision; params stay float32).
  """
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  beta: float = 0.9
  dtype: Any = jnp.float32

  @property
  def tap_channels(self) -> tuple[int, ...]:
    return (self.width,) + tuple(self.width * 2**i for i in range(len(self.stage_sizes)))

  def setup(self):
    self.stem_conv = nn.Conv(self.width, (7, 7), 1, padding=3, use_bias=False, dtype=self.dtype,
                             kernel_init=torch_kernel_init)
    self.stem_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    stages = []
    for i, n in enumerate(self.stage_sizes):
      feats = self.width * 2**i
      stages.append([BasicBlock(feats, (1 if i == 0 else 2) if j == 0 else 1, dtype=self.dtype)
                     for j in range(n)])
    self.stages = stages
    head_in = self.width * 2**(len(self.stage_sizes) - 1)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=torch_kernel_init,
                         bias_init=_uniform_bias_init(head_in))
    n_taps = len(self.stage_sizes) + 1
    self.layer_weights = self.param('layer_weights', nn.initializers.zeros, (n_taps,), jnp.float32)
    self.running_means = [
        self.variable('sim_stats', f'running_mean_{t}', jnp.zeros, (c,), jnp.float32)
        for t, c in enumerate(self.tap_channels)
    ]

  def features(self, x: jax.Array, train: bool) -> list[jax.Array]:
    """[B, H, W, C] -> the 5 taps [B, H_t, W_t, C_t] (stem, stage 1…4)."""
    x = x.astype(self.dtype)
    h = nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    taps = [h]
    for blocks in self.stages:
      for block in blocks:
        h = block(h, train)
      taps.append(h)
    return taps

  def classify(self, last_tap: jax.Array) -> jax.Array:
    """Average-pool 4×4, flatten, linear head; logits in float32."""
    pooled = nn.avg_pool(last_tap, (4, 4), strides=(4, 4))
    return self.head(pooled.reshape(pooled.shape[0], -1)).astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool = True) -> tuple[jax.Array, list[jax.Array]]:
    """[B, H, W, C] -> (logits [B, num_classes] float32, the 5 taps)."""
    taps = self.features(x, train)
    return self.classify(taps[-1]), taps

  def similarity(self, row_images: jax.Array, col_images: jax.Array, train: bool = True,
                 update_stats: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """S^model for pairs (row_images[p], col_images[p]) as in the release.

    The row and the column batches run as two separate forward passes (each BatchNorm uses
    its own batch statistics in train mode). Each tap's running mean is updated from both
    batches first (when ``update_stats``, default ``train``), then used for centring.

    Args:
      row_images, col_images: [P, H, W, C].
      train: BatchNorm mode.
      update_stats: whether to update the running means (needs ``sim_stats`` mutable).

    Returns:
      (S^model [P] float32, per-tap cosines [P, 5] float32).
    """
    update_stats = train if update_stats is None else update_stats
    taps_a = self.features(row_images, train)
    taps_b = self.features(col_images, train)
    means = []
    for var, a, b in zip(self.running_means, taps_a, taps_b):
      if update_stats and not self.is_initializing():
        var.value = similarity.update_running_mean(var.value, a, b, self.beta)
      means.append(var.value)
    cosines = similarity.tap_similarities(taps_a, taps_b, means)
    return similarity.combine_layers(cosines, self.layer_weights), cosines


def create_model(name: str, num_classes: int, width: int = 64, beta: float = 0.9,
                 dtype: Any = jnp.float32) -> ResNet:
  """ResNet by name ('resnet18' or 'resnet34')."""
  if name not in STAGE_SIZES:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(STAGE_SIZES)}')
  return ResNet(STAGE_SIZES[name], num_classes, width=width, beta=beta, dtype=dtype)
