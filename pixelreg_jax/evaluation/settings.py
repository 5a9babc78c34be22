"""The evaluation settings: one ``ml_collections.ConfigDict``, every field with its default.

On the command line each field is ``--eval.<field>=value`` (``evaluate`` defines the flag with
``config_flags.DEFINE_config_dict('eval', evaluation_config())``), the way ``--config.<field>``
overrides training. What to evaluate and where to write (``--workdir``, ``--attacks``,
``--source_workdir``, ``--output``) stay plain flags. The settings used are stored in the record
(``record['settings']``).

``validate`` checks every field before anything is loaded or compiled and raises ``ConfigError``
with a one-line message naming the field; ``argv_problem`` turns the flags of the former command
line (``--num_images``, ``--boundary_images``, …) and unknown ``--eval.*`` fields into one line.
"""
from __future__ import annotations

import difflib
from typing import Optional, Sequence

import ml_collections

from pixelreg_jax.attacks import boundary, corruptions
from pixelreg_jax.errors import ConfigError


def evaluation_config(overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The defaults (the release's protocol where it has one), with ``overrides`` applied: a dict of
  dotted field names, e.g. ``{'num_images': 1000, 'boundary.images': 100}``."""
  c = ml_collections.ConfigDict()
  c.num_images = 0              # Test images evaluated, from first_image on (0 = all).
  c.first_image = 0             # Index of the first test image (e.g. to tune on images disjoint from those reported).
  c.batch_size = 500            # Images per evaluation batch.
  c.seed = 0                    # Seed of the noise draws, of the attacks' keys and of the Boundary images.
  c.source_seed_index = 0       # Which seed of --source_workdir gives the transferred FGSM its gradients.

  c.boundary = ml_collections.ConfigDict()
  c.boundary.protocol = 'release'   # 'release' (foolbox 3.3.4 as the release runs it) or 'strong'.
  c.boundary.images = 1000      # Random test images attacked (the release: 1000).
  c.boundary.steps = 50         # Attack steps (the release: 50).
  c.boundary.repeats = 5        # Repeats; the score is the mean over repeats (the release: 5).
  c.boundary.batch = 250        # Images per compiled attack batch.
  c.boundary.init_tries = 1000  # Uniform-noise draws per image to find a start (foolbox: 1000).
  c.boundary.images_per_seed = False   # Draw the images anew per training seed (the release) instead of one set.

  c.pgd = ml_collections.ConfigDict()
  c.pgd.images = 0              # Test images for white-box PGD (0 = the same as the other evaluators).

  c.corruptions = ml_collections.ConfigDict()
  c.corruptions.images = 0      # Test images for the corruptions (0 = the same as the other evaluators).
  c.corruptions.names = ''      # Comma-separated corruptions ('' = the CIFAR-10-C set or MNIST-C, by dataset).

  c.smoothing = ml_collections.ConfigDict()   # Randomized smoothing (docs/smoothing.md); checked by its evaluator.
  c.smoothing.sigmas = '0.12,0.25,0.5'        # Comma-separated noise levels σ, in [0, 1] input space (the paper's).
  c.smoothing.radii = '0,0.25,0.5,0.75,1,1.25,1.5,1.75,2'   # L2 radii of the certified-accuracy curve.
  c.smoothing.n0 = 100          # Selection samples per image (the paper: 100).
  c.smoothing.n = 1000          # Estimation samples per image (the paper: 100000, meant for a GPU).
  c.smoothing.alpha = 0.001     # Each certificate holds with probability 1 − alpha (the paper: 0.001).
  c.smoothing.batch = 1000      # Noisy images per model call (memory).
  c.smoothing.images = 100      # The first N evaluated images are certified (0 = all evaluated images).
  c.hopskipjump = ml_collections.ConfigDict()   # HopSkipJump (docs/hopskipjump.md); checked by its evaluators.
  c.hopskipjump.images = 100    # Random test images attacked (chosen as the Boundary images are).
  c.hopskipjump.budgets = '1000,5000,25000'   # Comma-separated query budgets; the best distance within each.
  c.hopskipjump.batch = 50      # Images per compiled attack batch; like batch_size, it changes the draws.
  c.hopskipjump.init_tries = 1000   # Uniform-noise draws per image for an adversarial start (foolbox: 1000).
  c.hopskipjump.eval_chunk = 100    # Gradient-estimate directions per image in one model call (memory only).
  c.square = ml_collections.ConfigDict()   # The Square attack (docs/square.md); checked by its evaluators.
  c.square.images = 500         # The first N evaluated images attacked (0 = all evaluated images).
  c.square.n_queries = 1000     # Query budget per image and ε, the start included.
  c.square.p_init = 0.8         # Fraction of pixels the first steps change (halved by the paper's schedule).
  c.square.linf_eps = ''        # Comma-separated L∞ radii ('' = MNIST 0,.1,.2,.3; CIFAR 0,2,4,8,16/255).
  c.square.l2_eps = ''          # Comma-separated L2 radii ('' = MNIST 0,1,2,3; CIFAR 0,.25,.5,1).
  c.square.queries = ''         # Comma-separated query counts of the accuracy-vs-queries curve ('' = 1,2,5·10^k).
  c.square.query_level = -1     # Index into the radii of the ε of the accuracy-vs-queries curve (-1 = the largest).
  c.square.batch = 500          # Images per compiled attack batch; like batch_size, it changes the draws.
  if overrides:
    c.update_from_flattened_dict(dict(overrides))
  return c


def corruption_names(settings: ml_collections.ConfigDict) -> list[str]:
  """``corruptions.names`` as a list ([] = the dataset family's benchmark list)."""
  return [n.strip() for n in str(settings.corruptions.names).split(',') if n.strip()]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


_LOWER_BOUNDS = {'num_images': 0, 'first_image': 0, 'batch_size': 1, 'seed': 0, 'source_seed_index': 0,
                 'boundary.images': 1, 'boundary.steps': 1, 'boundary.repeats': 1, 'boundary.batch': 1,
                 'boundary.init_tries': 1, 'pgd.images': 0, 'corruptions.images': 0}


def validate(settings: ml_collections.ConfigDict) -> None:
  """Checks every field (types, ranges, names). Raises ConfigError naming the field."""
  defaults, flat = _flat(evaluation_config()), _flat(settings)
  for key, value in flat.items():
    if key not in defaults:
      raise ConfigError(f'eval.{key}: no such evaluation setting; choose from {sorted(defaults)}')
    if _is_int(defaults[key]) and not _is_int(value):
      raise ConfigError(f'eval.{key}={value!r}: an integer is needed')
  missing = sorted(set(defaults) - set(flat))
  if missing:
    raise ConfigError(f'eval.{missing[0]} is missing; build the settings with evaluation_config()')
  for key, low in _LOWER_BOUNDS.items():
    if flat[key] < low:
      raise ConfigError(f'eval.{key}={flat[key]}: must be at least {low}')
  if not isinstance(settings.boundary.images_per_seed, bool):
    raise ConfigError(f'eval.boundary.images_per_seed={settings.boundary.images_per_seed!r}: true or false')
  if settings.boundary.protocol not in boundary.PROTOCOLS:
    raise ConfigError(f'eval.boundary.protocol={settings.boundary.protocol!r}: choose one of {boundary.PROTOCOLS}')
  unknown = [n for n in corruption_names(settings) if n not in corruptions.CORRUPTIONS]
  if unknown:
    raise ConfigError(f'eval.corruptions.names: unknown corruption(s) {unknown}; choose from '
                      f'{sorted(corruptions.CORRUPTIONS)}')


def _flat(settings: ml_collections.ConfigDict) -> dict:
  """{'boundary.images': 1000, …}: the fields of ``settings`` with dotted names."""
  out = {}
  for key, value in settings.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f'{key}.{k}': v for k, v in _flat(value).items()})
    else:
      out[key] = value
  return out


# The flags of the former command line and their new spelling.
RENAMED_FLAGS = {
    'num_images': 'eval.num_images', 'first_image': 'eval.first_image', 'batch_size': 'eval.batch_size',
    'seed': 'eval.seed', 'source_seed_index': 'eval.source_seed_index',
    'boundary_protocol': 'eval.boundary.protocol', 'boundary_images': 'eval.boundary.images',
    'boundary_steps': 'eval.boundary.steps', 'boundary_repeats': 'eval.boundary.repeats',
    'boundary_batch': 'eval.boundary.batch', 'pgd_images': 'eval.pgd.images',
    'corruption_images': 'eval.corruptions.images', 'corruptions': 'eval.corruptions.names'}


def argv_problem(argv: Sequence[str], flag: str = 'eval') -> Optional[str]:
  """The one-line error for a flag of the former command line ('--num_images is now
  --eval.num_images') or an unknown ``--eval.<field>``, else None.

  Checked before the flags are defined: ml_collections reads the ``--eval.*`` overrides while
  defining the flag and would fail on an unknown field with a traceback.
  """
  fields = sorted(_flat(evaluation_config()))
  for arg in argv:
    if arg == '--':
      break
    if not arg.startswith('-'):
      continue
    name = arg.lstrip('-').split('=', 1)[0]
    if name in RENAMED_FLAGS:
      return f'--{name} is now --{RENAMED_FLAGS[name]}'
    if name.startswith(f'{flag}.'):
      field = name[len(flag) + 1:]
      group = [f for f in fields if f.startswith(f'{field}.')]
      if group:
        return f'--{name} is a group of settings; set its fields: {", ".join(f"--{flag}.{f}" for f in group)}'
      if field not in fields:
        close = difflib.get_close_matches(field, fields, n=1)
        hint = f' (did you mean --{flag}.{close[0]}?)' if close else f'; fields: {", ".join(fields)}'
        return f'--{name}: {flag} has no field {field!r}{hint}'
  return None
