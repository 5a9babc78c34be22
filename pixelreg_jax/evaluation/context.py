"""What every evaluator gets (``Context``) and the generic accuracy sweep over batches and seeds."""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import population, rundir


@dataclasses.dataclass
class Context:
  """What every evaluator gets.

  Attributes:
    run: the evaluated run (all K seeds).
    images, labels: the evaluated test images [N, H, W, C] (uint8, native size) and labels [N].
    first_image: test-set index of ``images[0]``.
    bounds: (min, max) of the whole test set in [0, 1] input space (the release's Boundary bounds).
    key: the evaluation's PRNG key, from ``settings.seed`` (each evaluator folds in its name).
    settings: the evaluation settings (``settings.evaluation_config``).
    source: the FGSM source run, or None.
    log: progress lines.
  """
  run: rundir.Run
  images: np.ndarray
  labels: np.ndarray
  first_image: int
  bounds: tuple[float, float]
  key: jax.Array
  settings: ml_collections.ConfigDict
  source: Optional[rundir.Run] = None
  log: Callable[[str], None] = lambda s: None

  def key_for(self, name: str) -> jax.Array:
    """The key of evaluator ``name``: independent of which other evaluators run."""
    return jax.random.fold_in(self.key, zlib.crc32(name.encode()))

  def subset(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` evaluated images and labels (all for n = 0)."""
    return (self.images, self.labels) if not n else (self.images[:n], self.labels[:n])


def sweep(ctx: Context, correct_fn: Callable, key: jax.Array, images: Optional[np.ndarray] = None,
          labels: Optional[np.ndarray] = None, per_image: tuple = (), shared: Any = None) -> Any:
  """Accuracy of every seed under ``correct_fn``, over all images: a pytree of [K, ...] arrays.

  ``correct_fn(logits_fn, key, x, labels, mask, *per_image_batch, shared) -> correct counts``
  (any pytree, e.g. [L] per level) runs on one batch: x [B, H, W, C] in [0, 1] native size. The
  program maps over batches (``lax.map``, batch i keyed by fold_in(key, i)) and vmaps over seeds
  on accelerators; on CPUs (``seed_parallelism`` 'loop') the host loops over seeds and batches
  around one compiled batch program (``_host_loop_sweep``). Images, per-image arrays and
  ``shared`` (e.g. the FGSM source's variables) are arguments, not constants of the program.
  """
  images = ctx.images if images is None else images
  labels = ctx.labels if labels is None else labels
  (xb, yb, *extras), mb = pipe.pad_to_batches(ctx.settings.batch_size, images, labels, *per_image)
  run = ctx.run
  extras = tuple(extras)

  def one_batch(variables, i, x_u8, y, m, ex, shared):
    return correct_fn(run.logits_fn(variables), jax.random.fold_in(key, i), run.model_input(x_u8), y, m, *ex, shared)

  if population.seed_mode(run.config) != 'vmap':
    return _host_loop_sweep(jax.jit(one_batch), run, xb, yb, mb, extras, shared)

  def one_model(variables, xb, yb, mb, extras, shared):
    correct = jax.lax.map(lambda a: one_batch(variables, *a, shared), (jnp.arange(xb.shape[0]), xb, yb, mb, extras))
    return jax.tree.map(lambda c: c.sum(0) / mb.sum(), correct)

  fn = jax.jit(population.seeded(one_model, run.num_seeds, (0, None, None, None, None, None), 'vmap'))
  return jax.device_get(fn(run.variables, xb, yb, mb, extras, shared))


def _host_loop_sweep(batch_fn: Callable, run, xb, yb, mb, extras: tuple, shared: Any) -> Any:
  """``sweep`` on CPUs: one compiled (model, batch) program, called for each seed and batch.

  XLA:CPU runs backward convolutions inside a loop body (``lax.map`` / ``scan`` / ``while``)
  20-35× slower than outside one (non-canonical layouts; jax-ml/jax#12868), which made FGSM and
  PGD sweeps crawl; keeping the seed and batch loops on the host avoids it and gives the same keys
  and sums as the one-program path.
  """
  per_seed = []
  for k in range(run.num_seeds):
    variables = run.seed_variables(k)
    total = None
    for i in range(xb.shape[0]):
      c = batch_fn(variables, jnp.int32(i), xb[i], yb[i], mb[i], tuple(e[i] for e in extras), shared)
      total = c if total is None else jax.tree.map(jnp.add, total, c)
    per_seed.append(jax.tree.map(lambda c: c / mb.sum(), total))
  return jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed))


def decision_attack(ctx: Context, attack: Callable, fields: tuple[str, ...]) -> Callable:
  """A jitted ``(variables, key, x_u8 [B, H, W, C]) -> {field: array}`` of a decision-based attack
  ``attack(predict, key, x, labels, bounds)`` run on one seed's model: the images in [0, 1], the
  label to move away from the model's own prediction, the bounds the whole test set's range."""
  run, bounds = ctx.run, ctx.bounds

  @jax.jit
  def fn(variables, key, x_u8):
    x = run.model_input(x_u8)
    logits_fn = run.logits_fn(variables)
    predict = lambda z: jnp.argmax(logits_fn(z), -1)  # noqa: E731
    out = attack(predict, key, x, predict(x), bounds)
    return {f: out[f] for f in fields}
  return fn


def over_batches(fn: Callable, variables: dict, key: jax.Array, xb: np.ndarray, mask: np.ndarray) -> dict:
  """``fn(variables, fold_in(key, i), xb[i])`` for every batch i of ``xb`` [nb, B, ...]: each output
  concatenated over the images (its last axis) with the padding (``mask`` [nb, B] of 0) dropped."""
  outs = [jax.device_get(fn(variables, jax.random.fold_in(key, i), xb[i])) for i in range(xb.shape[0])]
  real = mask.reshape(-1) > 0
  return {k: np.concatenate([o[k] for o in outs], axis=-1)[..., real] for k in outs[0]}


def clean_accuracy(ctx: Context) -> list[float]:
  """Accuracy [K] of every seed on the unperturbed images."""
  def correct(logits_fn, key, x, y, m, shared):
    del key, shared
    return jnp.sum((jnp.argmax(logits_fn(x), -1) == y) * m)
  return [float(a) for a in np.asarray(sweep(ctx, correct, ctx.key))]


def unit_images(run: rundir.Run, images: np.ndarray, chunk: int = 2000) -> np.ndarray:
  """uint8 native images [N, H, W, C] -> float32 [0, 1] input space (host array), in chunks."""
  fn = jax.jit(run.model_input)
  return np.concatenate([np.asarray(fn(images[i:i + chunk])) for i in range(0, len(images), chunk)])


def test_set_bounds(run: rundir.Run, images: np.ndarray) -> tuple[float, float]:
  """(min, max) over the whole test set in [0, 1] input space: the release's Boundary bounds."""
  x = unit_images(run, images)
  return float(x.min()), float(x.max())


def log_curve(ctx: Context, name: str, acc: np.ndarray, seconds: float) -> None:
  """One progress line: the seed-mean accuracy [L] of a curve ``acc`` [K, L]."""
  ctx.log(f'{name}: accuracy {" ".join(f"{a:.3f}" for a in np.mean(acc, 0))} (mean over '
          f'{ctx.run.num_seeds} seed(s)) in {seconds:.1f}s')
