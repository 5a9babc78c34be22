r"""Fig. 1 analogue: how well a trained model's representational similarity follows S^pixel.

    python -m pixelreg_jax.analysis --workdir=runs/reg [--num_images=500] [--out=DIR]

For the first N images of the run's regularization set (its ``reg.dataset`` / ``reg.split``),
computes S^pixel (N×N) and, for every seed of the run, the model's similarity matrix at each
of the 5 taps (cosine after subtracting the tap's running mean, as in training) and their
softmax(w)-weighted combination S^model. Reports the Pearson and Spearman correlation over the
N(N−1)/2 pairs i < j, and the share of pairs whose sign agrees with the thresholded target,
as JSON (``analysis.json``) and a hexbin figure (``analysis.png``) per tap.
BatchNorm runs in inference mode by default (``--bn=train`` uses the N images' statistics).
The matrices take memory quadratic in N (``memory_bytes``); N is capped at ``MAX_IMAGES``. A
population's root (several settings) is refused, naming its settings' run directories
(``evaluation.workdirs.one_setting``). Both outputs are strict JSON (``jsonio``: a NaN
correlation is null).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from scipy import stats

from pixelreg_jax import cli, jsonio, regularizers, rundir, similarity
from pixelreg_jax import config as config_lib
from pixelreg_jax import data as data_lib
from pixelreg_jax.errors import ConfigError
from pixelreg_jax.evaluation import workdirs

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_string('workdir', None, 'Trained run directory.', required=True)
  flags.DEFINE_integer('num_images', 500, f'Regularization images (pairs = N(N−1)/2), 2 to {MAX_IMAGES}.')
  flags.DEFINE_enum('bn', 'eval', ['eval', 'train'], 'BatchNorm mode of the forward pass.')
  flags.DEFINE_string('out', None, 'Output directory (default: the workdir).')


TAP_NAMES = ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4']
MAX_IMAGES = 10000


def memory_bytes(n: int) -> int:
  """Rough peak memory of an analysis of ``n`` images: on the device S^pixel, its target, five
  tap Gram matrices and S^model (float32 N×N each), on the host their upper triangles in
  float64 (N(N−1)/2 each): 64·N² bytes."""
  return 8 * 4 * n * n + 8 * 8 * n * (n - 1) // 2


def check_num_images(n: int) -> None:
  """Raises ConfigError unless 2 ≤ n ≤ MAX_IMAGES, saying how much memory n would need."""
  if n < 2:
    raise ConfigError(f'--num_images={n}: at least 2 images are needed for a pair')
  if n > MAX_IMAGES:
    raise ConfigError(
        f'--num_images={n} would need about {memory_bytes(n) / 2**30:.0f} GiB for its N×N similarity matrices; '
        f'use at most {MAX_IMAGES} (about {memory_bytes(MAX_IMAGES) / 2**30:.0f} GiB)')


def model_similarity_matrices(run: rundir.Run, variables: dict, images01: jax.Array, train: bool = False,
                              batch_size: int = 250) -> tuple[jax.Array, jax.Array]:
  """Per-tap similarity matrices [T, N, N] and the combined S^model [N, N] of one model.

  Each tap's features are centred by the checkpoint's running mean, flattened and
  L2-normalised; a Gram matrix of the normalised rows gives every pair's cosine at once. The
  images are regularization images: normalised as training normalised them (``regularizers.family``).
  """
  family = regularizers.family(run.config)
  means = [variables['sim_stats'][f'running_mean_{t}'] for t in range(5)]

  @jax.jit
  def unit_features(x):
    from pixelreg_jax import input_pipeline as pipe  # pylint: disable=import-outside-toplevel
    taps = run.model.apply(variables, pipe.normalize(x, family), train, method='features',
                           mutable=['batch_stats'] if train else False)
    taps = taps[0] if train else taps
    out = []
    for tap, m in zip(taps, means):
      f = (tap.astype(jnp.float32) - m).reshape(tap.shape[0], -1)
      out.append(f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-8))
    return out

  if train:   # Batch statistics over all N images: one pass.
    feats = unit_features(images01)
  else:
    chunks = [unit_features(images01[i:i + batch_size]) for i in range(0, images01.shape[0], batch_size)]
    feats = [jnp.concatenate([c[t] for c in chunks]) for t in range(5)]
  grams = jnp.stack([jnp.matmul(f, f.T, precision=jax.lax.Precision.HIGHEST) for f in feats])
  combined = jnp.einsum('t,tij->ij', jax.nn.softmax(variables['params']['layer_weights']), grams)
  return grams, combined


def upper(m: np.ndarray) -> np.ndarray:
  return np.asarray(m)[np.triu_indices(m.shape[0], 1)]


def correlations(x: np.ndarray, y: np.ndarray) -> dict:
  return {'pearson': float(stats.pearsonr(x, y)[0]), 'spearman': float(stats.spearmanr(x, y)[0])}


def analyze(workdir: str, num_images: int = 500, bn: str = 'eval', log=None) -> dict:
  """The Fig. 1 statistics of every seed of a run (see the module docstring). Warnings (e.g.
  a corrupt newest checkpoint skipped) go to ``log`` if given, else to absl logging."""
  check_num_images(num_images)
  alpha, th = workdirs.one_setting(workdir, rundir.load_config(workdir))
  run = rundir.load_run(workdir, log=log)
  c = run.config
  images, _ = data_lib.load_split(c.reg.dataset, c.reg.split, c.data_dir, download=c.download,
                                  num_examples=num_images, manual_dir=c.get('tfds_manual_dir', ''))
  # As training computes the targets (train.similarity_targets): at the network's input size.
  size = None if c.reg.get('keep_size', False) else config_lib.input_size(c)
  from pixelreg_jax import input_pipeline as pipe  # pylint: disable=import-outside-toplevel
  x = pipe.model_input(jnp.asarray(images), size, c.model.channels)
  s_pixel = upper(np.asarray(similarity.pixel_similarity(x)))
  target = upper(np.asarray(similarity.threshold_targets(similarity.pixel_similarity(x), th)))
  record = {'workdir': os.path.abspath(workdir), 'reg_dataset': c.reg.dataset, 'num_images': int(len(images)),
            'num_pairs': int(len(s_pixel)), 'alpha': alpha, 'threshold': th, 'bn': bn,
            **run.checkpoint_record, 'seeds': []}
  samples = None
  for k, seed in enumerate(run.seeds):
    v = run.seed_variables(k)
    grams, combined = model_similarity_matrices(run, v, x, train=(bn == 'train'))
    taps = [upper(np.asarray(g)) for g in grams]
    s_model = upper(np.asarray(combined))
    entry = {'seed': seed, 'layer_weights': np.asarray(jax.nn.softmax(v['params']['layer_weights'])).tolist(),
             'taps': {name: correlations(t, s_pixel) for name, t in zip(TAP_NAMES, taps)},
             'combined': correlations(s_model, s_pixel)}
    if th:
      nonzero = target != 0
      entry['sign_agreement_with_target'] = float(np.mean(np.sign(s_model[nonzero]) == target[nonzero])) \
          if nonzero.any() else None
    record['seeds'].append(entry)
    if samples is None:
      samples = (s_pixel, taps, s_model)
  record['combined_mean'] = {m: float(np.mean([e['combined'][m] for e in record['seeds']]))
                             for m in ('pearson', 'spearman')}
  record['_samples'] = samples
  return record


def plot(record: dict, path: str) -> None:
  """Hexbins of S^model (per tap and combined, first seed) against S^pixel."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  s_pixel, taps, s_model = record['_samples']
  first = record['seeds'][0]
  panels = list(zip(TAP_NAMES, taps, [first['taps'][n] for n in TAP_NAMES])) + \
      [('S^model (softmax-weighted)', s_model, first['combined'])]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.3), squeeze=False)
  for ax, (name, y, corr) in zip(axes[0], panels):
    ax.hexbin(s_pixel, y, gridsize=40, bins='log', cmap='viridis', mincnt=1)
    ax.set_title(f'{name}\nr={corr["pearson"]:.2f}  ρ={corr["spearman"]:.2f}', fontsize=9)
    ax.set_xlabel('S^pixel')
  axes[0][0].set_ylabel('model similarity')
  label = 'unregularized' if not record['alpha'] else f'α={record["alpha"]:g}, Th={record["threshold"]:g}'
  fig.suptitle(f'{label}: {record["num_pairs"]} pairs of {record["num_images"]} {record["reg_dataset"]} images '
               f'(seed {first["seed"]}, BN {record["bn"]})', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(record: dict, out: str) -> str:
  os.makedirs(out, exist_ok=True)
  plot(record, os.path.join(out, 'analysis.png'))
  jsonio.write(os.path.join(out, 'analysis.json'), {k: v for k, v in record.items() if not k.startswith('_')})
  return out


def main(argv):
  del argv
  record = analyze(FLAGS.workdir, FLAGS.num_images, FLAGS.bn)
  logging.info('combined S^model vs S^pixel: Pearson %.3f, Spearman %.3f (mean over %d seed(s))',
               record['combined_mean']['pearson'], record['combined_mean']['spearman'], len(record['seeds']))
  out = write(record, FLAGS.out or FLAGS.workdir)
  print(jsonio.dumps({'workdir': record['workdir'], 'num_pairs': record['num_pairs'],
                    'combined': record['combined_mean'],
                    'per_tap_pearson': {n: float(np.mean([e['taps'][n]['pearson'] for e in record['seeds']]))
                                        for n in TAP_NAMES},
                    'json': os.path.join(out, 'analysis.json'), 'plot': os.path.join(out, 'analysis.png')}),
        flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
