"""White-box projected gradient descent (Madry et al. 2018), L∞ and L2, as pure JAX functions.

Images are float32 [B, H, W, C] at the network's input size; a model is seen only through
``logits_fn(images) -> [B, classes]`` (normalisation included), differentiated through.

  x⁰ = clip(x + δ⁰, lo, hi),  δ⁰ uniform in the ε-ball (``random_start``) or 0
  xᵗ⁺¹ = Π(xᵗ + α·d(∇ₓ loss(xᵗ)))     d = sign (L∞) or g/‖g‖₂ per image (L2)
  Π = projection onto the ε-ball around x, then onto the valid range [lo, hi]

with α = ``rel_step_size``·ε/steps (Madry's 2.5·ε/steps by default) and loss the cross-entropy
of the true labels or the margin max_{j≠y} z_j − z_y (``loss='margin'``, Carlini & Wagner). Box
clipping after the ball projection keeps the point inside the ball (it only moves coordinates
toward x, which lies in the box), so every returned image is in both.

Worst case over iterates and restarts: each image keeps the first iterate that the model
misclassifies (across all steps of a restart, then across ``restarts`` independent random
starts); an image never fooled returns the last iterate of the last restart. So an image counts
as correct only if no iterate of any restart fooled the model.

Levels follow ``levels.MAX_LEVELS``: 10 strengths linspace(0, max) per dataset (``PGD_MAX_EPS``);
the grids are chosen so that the customary values are exact levels (MNIST L∞ 0.1/0.2/0.3, L2
1/2/3; CIFAR L∞ 2/255·k including 8/255 and 16/255, L2 0.125·k including 0.25/0.5/1.0). ε is
in [0, 1] pixel units, the evaluation passes lo=0, hi=1 (the test set's range).

``correct_under_pgd`` mirrors ``levels.correct_per_level`` (vmapped over levels, [L] counts);
named variants (``PGD_VARIANTS``: PGD-10, PGD-40, PGD-40×5 restarts, L2) let an evaluation check
that more steps or restarts never raise accuracy (``attacks.masking``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.errors import ConfigError

Array = jax.Array
NORMS = ('linf', 'l2')
LOSSES = ('ce', 'margin')

# ε grids (linspace(0, max, 10)), in [0, 1] pixel units.
PGD_MAX_EPS = {
    'mnist': {'linf': 0.3, 'l2': 3.0},
    'fashion_mnist': {'linf': 0.3, 'l2': 3.0},
    'cifar10': {'linf': 18 / 255, 'l2': 1.125},
    'cifar100': {'linf': 18 / 255, 'l2': 1.125},
}


@dataclasses.dataclass(frozen=True)
class PgdConfig:
  """Settings of ``pgd`` (hashable: a static argument under ``jax.jit``).

  Attributes:
    norm: 'linf' or 'l2'.
    steps: gradient steps per restart (0 = the random start only).
    restarts: independent random starts; per image the worst case is kept.
    rel_step_size: α = rel_step_size·ε/steps (Madry et al.: 2.5).
    loss: 'ce' (cross-entropy of the true label) or 'margin' (max_{j≠y} z_j − z_y).
    random_start: start uniformly in the ε-ball (else at x; with steps=1, rel_step_size=1 and
      norm='linf' that is FGSM).
  """
  norm: str = 'linf'
  steps: int = 10
  restarts: int = 1
  rel_step_size: float = 2.5
  loss: str = 'ce'
  random_start: bool = True

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ConfigError(f'PGD norm {self.norm!r} is not one of {NORMS}')
    if self.loss not in LOSSES:
      raise ConfigError(f'PGD loss {self.loss!r} is not one of {LOSSES}')
    if self.steps < 0 or self.restarts < 1:
      raise ConfigError(f'PGD needs steps >= 0 and restarts >= 1, got steps={self.steps}, '
                        f'restarts={self.restarts}')

  def settings(self) -> dict:
    """JSON-serialisable settings (the ``'settings'`` entry of a robustness record)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_settings(cls, settings: dict) -> 'PgdConfig':
    return cls(**settings)

  @property
  def name(self) -> str:
    """Record name: 'pgd_<norm>' plus '_steps<n>' (n ≠ 10), '_restarts<r>' (r > 1), '_margin'."""
    name = f'pgd_{self.norm}'
    if self.steps != 10:
      name += f'_steps{self.steps}'
    if self.restarts != 1:
      name += f'_restarts{self.restarts}'
    if self.loss != 'ce':
      name += f'_{self.loss}'
    if not self.random_start:
      name += '_nostart'
    if self.rel_step_size != 2.5:
      name += f'_step{self.rel_step_size:g}'
    return name


PGD_VARIANTS: dict[str, PgdConfig] = {c.name: c for c in [
    PgdConfig('linf', steps=10),
    PgdConfig('linf', steps=40),
    PgdConfig('linf', steps=40, restarts=5),
    PgdConfig('l2', steps=10),
    PgdConfig('l2', steps=40),
]}


def pgd_levels(dataset: str, norm: str, num: int = 10) -> np.ndarray:
  """The ``num`` ε of ``norm`` PGD on ``dataset``: linspace(0, PGD_MAX_EPS[dataset][norm])."""
  if dataset not in PGD_MAX_EPS:
    raise ConfigError(f'no PGD levels for dataset {dataset!r}; add them to whitebox.PGD_MAX_EPS')
  if norm not in NORMS:
    raise ConfigError(f'PGD norm {norm!r} is not one of {NORMS}')
  return np.linspace(0.0, PGD_MAX_EPS[dataset][norm], num).astype(np.float32)


def _per_image_l2(v: Array) -> Array:
  """‖v_b‖₂ over all but the first axis, shaped [B, 1, ..., 1]."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def project(x_adv: Array, x: Array, eps: Array, norm: str, lo: Any = 0.0, hi: Any = 1.0) -> Array:
  """Projects ``x_adv`` onto the ``norm`` ε-ball around ``x`` and then into [lo, hi].

  Args:
    x_adv, x: [B, H, W, C]. eps: scalar (or broadcastable to [B, 1, 1, 1]).
    lo, hi: the valid pixel range, scalars or [B, 1, 1, 1].
  """
  delta = x_adv - x
  if norm == 'linf':
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = _per_image_l2(delta)
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))
  return jnp.clip(x + delta, lo, hi)


def random_start(key: Array, x: Array, eps: Array, norm: str) -> Array:
  """A perturbation uniform in the ε-ball, [B, H, W, C] (L2: Gaussian direction, radius ε·U^(1/D))."""
  if norm == 'linf':
    return eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  k_dir, k_rad = jax.random.split(key)
  direction = jax.random.normal(k_dir, x.shape, x.dtype)
  direction = direction / jnp.maximum(_per_image_l2(direction), 1e-12)
  d = np.prod(x.shape[1:])
  radius = eps * jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1.0 / d)
  return direction * radius


def attack_loss(logits: Array, labels: Array, loss: str) -> Array:
  """Per-image loss the attack ascends, [B]: CE of the label or the margin max_{j≠y} z_j − z_y."""
  logits = logits.astype(jnp.float32)
  if loss == 'ce':
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
  true = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  other = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return other.max(-1) - true


def _select(cond: Array, a: Array, b: Array) -> Array:
  """Per-image where: cond [B], a and b [B, ...]."""
  return jnp.where(cond.reshape(cond.shape + (1,) * (a.ndim - 1)), a, b)


def unroll_loops(unroll: Optional[bool] = None) -> bool:
  """Whether PGD unrolls its step and restart loops: ``unroll``, or by default on CPUs only.

  XLA:CPU runs the backward convolutions of a loop body far slower than unrolled ones
  (jax-ml/jax#12868; measured in docs/performance.md); unrolling costs compile time and gives the
  same iterates. Accelerators keep the compact ``lax.scan``.
  """
  return jax.default_backend() == 'cpu' if unroll is None else unroll


def _repeat(body: Callable, carry: Any, xs: range, unroll: bool) -> tuple[Any, None]:
  """``lax.scan(body, carry, xs)`` without outputs, or a Python loop (no XLA loop at all) when
  ``unroll``: even a fully unrolled ``scan`` keeps a one-trip while loop, which is enough to slow
  XLA:CPU down."""
  if not unroll:
    return jax.lax.scan(body, carry, jnp.arange(len(xs), dtype=jnp.int32))
  for i in xs:
    carry, _ = body(carry, jnp.int32(i))
  return carry, None


def pgd(logits_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array, eps: Array,
        lo: Any = 0.0, hi: Any = 1.0, cfg: PgdConfig = PgdConfig(), unroll: Optional[bool] = None) -> Array:
  """White-box PGD of ``cfg`` at radius ``eps``: adversarial images [B, H, W, C].

  Jittable (``cfg`` static) and vmappable over ``eps`` and over images; no loops over images.

  Args:
    logits_fn: the attacked model, [B, H, W, C] -> [B, classes].
    key: PRNG key (restart r uses fold_in(key, r)).
    x: [B, H, W, C] clean images in [lo, hi]; labels: [B] true labels.
    eps: scalar radius in pixel units (ε = 0 returns x).
    lo, hi: valid pixel range (scalars or [B, 1, 1, 1]); the evaluation passes 0 and 1.
    cfg: ``PgdConfig``.
    unroll: unroll the step and restart loops (``unroll_loops``: default on CPUs only).
  """
  unroll = unroll_loops(unroll)
  eps = jnp.asarray(eps, x.dtype)
  alpha = cfg.rel_step_size * eps / max(cfg.steps, 1)

  def loss_sum(z):
    logits = logits_fn(z)
    return jnp.sum(attack_loss(logits, labels, cfg.loss)), logits

  def keep_fooling(z, logits, best, done):
    hit = jnp.argmax(logits, -1) != labels
    return _select(~done & hit, z, best), done | hit

  def step(carry, _):
    z, best, done = carry
    g, logits = jax.grad(loss_sum, has_aux=True)(z)      # logits at z: is z already adversarial?
    best, done = keep_fooling(z, logits, best, done)
    if cfg.norm == 'linf':
      d = jnp.sign(g)
    else:
      d = g / jnp.maximum(_per_image_l2(g), 1e-12)
    return (project(z + alpha * d, x, eps, cfg.norm, lo, hi), best, done), None

  def restart(carry, r):
    best, done = carry
    if cfg.random_start:
      z = jnp.clip(x + random_start(jax.random.fold_in(key, r), x, eps, cfg.norm), lo, hi)
    else:
      z = x
    (z, best, done), _ = _repeat(step, (z, best, done), range(cfg.steps), unroll)
    best, done = keep_fooling(z, logits_fn(z), best, done)
    return (_select(done, best, z), done), None        # never fooled: the latest iterate

  init = (x, jnp.zeros(labels.shape, bool))
  (best, _), _ = _repeat(restart, init, range(cfg.restarts), unroll)
  return best


def correct_under_pgd(logits_fn: Callable[[Array], Array], key: Array, x: Array, labels: Array,
                      levels: Array, lo: Any = 0.0, hi: Any = 1.0, cfg: PgdConfig = PgdConfig(),
                      mask: Optional[Array] = None, sequential_levels: bool = False,
                      unroll: Optional[bool] = None) -> Array:
  """Correct predictions under ``cfg`` PGD at each ε: [L], vmapped over the levels.

  Mirrors ``levels.correct_per_level``: each level gets its own fold of ``key``. The vmap holds
  L·B images' activations for the backward pass at once; ``sequential_levels=True`` runs the
  levels one after another (``lax.map``, same results) to bound memory.

  Args:
    logits_fn: the attacked model.
    key: PRNG key of this batch.
    x: [B, H, W, C] clean images in [lo, hi]; labels: [B].
    levels: [L] radii ε.
    lo, hi: valid pixel range (scalars or [B, 1, 1, 1]).
    cfg: ``PgdConfig`` (static).
    mask: [B] weights of real (1) and padding (0) images.
    sequential_levels: ``lax.map`` over the levels instead of ``vmap`` (bounds memory on an
      accelerator; on CPUs a loop around gradients is slow, see ``unroll_loops``).
    unroll: passed to ``pgd``.
  """
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask

  def one(eps, k):
    x_adv = pgd(logits_fn, k, x, labels, eps, lo, hi, cfg, unroll)
    pred = jnp.argmax(logits_fn(x_adv), -1)
    return jnp.sum((pred == labels) * mask)

  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(levels.shape[0]))
  if sequential_levels:
    return jax.lax.map(lambda a: one(*a), (jnp.asarray(levels), keys))
  return jax.vmap(one)(jnp.asarray(levels), keys)
