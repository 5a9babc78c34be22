"""CIFAR-style ResNet18/34 of the release (docs/method.md §4), with the 5 similarity taps.

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

One fused pass: the release runs a training step's three batches (classification images, row
images, column images) as three forward passes, each BatchNorm normalising with its own batch's
statistics and updating its running statistics three times in a row. ``groups`` runs them as
one batch through every layer (one convolution over all images) while ``BatchNorm`` normalises
each group with its own statistics and chains the running-statistics updates in group order,
so the result equals the three passes (tests/test_fused.py).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


Groups = Optional[Sequence[int]]


class BatchNorm(nn.Module):
  """BatchNorm over (N, H, W) with flax's numerics, and optional per-group statistics.

  Same variables and arithmetic as ``flax.linen.BatchNorm`` (params ``scale``/``bias``,
  batch_stats ``mean``/``var``, float32 statistics, var = E[x²] − E[x]², running update
  r ← m·r + (1 − m)·batch statistic). With ``groups=(n₀, n₁, …)`` in train mode the batch is
  treated as consecutive groups: each is normalised by its own statistics, and the running
  statistics are updated once per group in order — exactly as separate forward passes would.
  ``group_mask`` (bools, may be traced) skips the running update of masked-out groups.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, groups: Groups = None, group_mask=None) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))

    def normalize(v, mean, var):
      y = v.astype(jnp.float32) - mean
      return (y * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias).astype(self.dtype)

    if not train:
      return normalize(x, ra_mean.value, ra_var.value)
    sizes = tuple(groups) if groups else (x.shape[0],)
    if sum(sizes) != x.shape[0]:
      raise ValueError(f'groups {sizes} do not add up to the batch of {x.shape[0]}')
    bounds = np.cumsum((0,) + sizes)
    outs, mean_r, var_r = [], ra_mean.value, ra_var.value
    for g in range(len(sizes)):
      part = x[bounds[g]:bounds[g + 1]].astype(jnp.float32)
      mean = part.mean(axis=(0, 1, 2))
      var = jnp.maximum(0.0, jnp.square(part).mean(axis=(0, 1, 2)) - jnp.square(mean))
      outs.append(normalize(part, mean, var))
      new_mean = self.momentum * mean_r + (1 - self.momentum) * mean
      new_var = self.momentum * var_r + (1 - self.momentum) * var
      keep = True if group_mask is None else group_mask[g]
      mean_r, var_r = jnp.where(keep, new_mean, mean_r), jnp.where(keep, new_var, var_r)
    if not self.is_initializing():
      ra_mean.value, ra_var.value = mean_r, var_r
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)


class BasicBlock(nn.Module):
  """conv3×3-BN-ReLU-conv3×3-BN + shortcut, then ReLU."""
  features: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, groups: Groups = None, group_mask=None) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=torch_kernel_init)

    def norm(v):
      return BatchNorm(dtype=self.dtype)(v, train, groups, group_mask)

    y = conv(self.features, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(norm(y))
    y = conv(self.features, (3, 3), 1, padding=1)(y)
    y = norm(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = norm(conv(self.features, (1, 1), self.strides, padding=0)(x))
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
    self.stem_bn = BatchNorm(dtype=self.dtype)
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

  def features(self, x: jax.Array, train: bool, groups: Groups = None, group_mask=None) -> list[jax.Array]:
    """[B, H, W, C] -> the 5 taps [B, H_t, W_t, C_t] (stem, stage 1…4); ``groups``: see ``BatchNorm``."""
    x = x.astype(self.dtype)
    h = nn.relu(self.stem_bn(self.stem_conv(x), train, groups, group_mask))
    taps = [h]
    for blocks in self.stages:
      for block in blocks:
        h = block(h, train, groups, group_mask)
      taps.append(h)
    return taps

  def classify(self, last_tap: jax.Array) -> jax.Array:
    """Average-pool 4×4, flatten, linear head; logits in float32."""
    pooled = nn.avg_pool(last_tap, (4, 4), strides=(4, 4))
    return self.head(pooled.reshape(pooled.shape[0], -1)).astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool = True, groups: Groups = None,
               group_mask=None) -> tuple[jax.Array, list[jax.Array]]:
    """[B, H, W, C] -> (logits [B, num_classes] float32, the 5 taps)."""
    taps = self.features(x, train, groups, group_mask)
    return self.classify(taps[-1]), taps

  def tap_similarity(self, taps_a: Sequence[jax.Array], taps_b: Sequence[jax.Array],
                     update_stats: bool = True, update_mask=True) -> tuple[jax.Array, jax.Array]:
    """S^model of pairs (a[p], b[p]) from their taps, as the release's pair forward does.

    Each tap's running mean is first updated from both batches (when ``update_stats``; needs
    ``sim_stats`` mutable; ``update_mask`` may be a traced bool that keeps the old value), then
    used to centre the features; the 5 cosines are combined with softmax(layer_weights).

    Returns:
      (S^model [P] float32, per-tap cosines [P, 5] float32).
    """
    means = []
    for var, a, b in zip(self.running_means, taps_a, taps_b):
      if update_stats and not self.is_initializing():
        var.value = jnp.where(update_mask, similarity.update_running_mean(var.value, a, b, self.beta), var.value)
      means.append(var.value)
    cosines = similarity.tap_similarities(taps_a, taps_b, means)
    return similarity.combine_layers(cosines, self.layer_weights), cosines

  def similarity(self, row_images: jax.Array, col_images: jax.Array, train: bool = True,
                 update_stats: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """S^model for pairs (row_images[p], col_images[p]) with two separate forward passes.

    The row and the column batches run as two forward passes (each BatchNorm uses its own
    batch statistics in train mode), then ``tap_similarity``.

    Args:
      row_images, col_images: [P, H, W, C].
      train: BatchNorm mode.
      update_stats: whether to update the running means (default ``train``).

    Returns:
      (S^model [P] float32, per-tap cosines [P, 5] float32).
    """
    update_stats = train if update_stats is None else update_stats
    return self.tap_similarity(self.features(row_images, train), self.features(col_images, train), update_stats)


def create_model(name: str, num_classes: int, width: int = 64, beta: float = 0.9,
                 dtype: Any = jnp.float32) -> ResNet:
  """ResNet by name ('resnet18' or 'resnet34')."""
  if name not in STAGE_SIZES:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(STAGE_SIZES)}')
  return ResNet(STAGE_SIZES[name], num_classes, width=width, beta=beta, dtype=dtype)
