"""The configuration schema (every field with its default) and its validation.

Experiment files in ``configs/`` call ``base_config()`` and override what differs, so a field
exists in one place only. ``validate`` runs before any data is loaded or anything compiled
and raises ``ConfigError`` with a one-line message naming the field and what to do.
"""
from __future__ import annotations

import math

import ml_collections

from pixelreg_jax import data, models, regularizers, similarity
from pixelreg_jax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment (the paper's settings where it has them)."""
  c = ml_collections.ConfigDict()
  c.dataset = 'fashion_mnist'   # The classified dataset (data.DATASETS).
  c.data_dir = ''               # Imported datasets and TFDS data ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.download = True             # Let TFDS download when the network answers.
  c.tfds_manual_dir = ''        # TFDS manual download dir (imagenet2012's tar files).
  c.image_size = 0              # Network input size; 0 = the dataset's own (MNIST 28, CIFAR 32, the release).
  c.augment = False             # Random crop (4-pixel reflect pad) + flip; on for CIFAR.
  c.seed = 0
  c.num_seeds = 1               # Independent models trained together, seeds seed..seed+K-1.
  c.seed_parallelism = 'auto'   # How: 'vmap' (batched; GPUs), 'loop' (one after another; CPUs), 'auto'.
  # A population: several (α, Th) settings, each × num_seeds seeds, trained together in one program,
  # e.g. '0:0,4:0.8,10:0.8'; each setting also gets its own run directory <workdir>/a<α>_th<Th>/.
  # '' = the one setting reg.alpha:reg.threshold.
  c.population = ''
  # True: one network pass over the classification and pair images (per-group models.BatchNorm);
  # False: the release's three passes. Equal results (tests/test_fused.py); which is faster depends
  # on the machine (docs/performance.md; python -m pixelreg_jax.benchmark measures both).
  c.fused_pass = False
  c.batch_size = 64             # Classification batch (global, over all devices).
  c.eval_batch_size = 500
  c.num_epochs = 20
  c.train_subset = 0            # Use only this many training images (0 = all).
  c.val_fraction = 0.01         # Held out from the train split for model selection.
  c.half_precision = False      # bfloat16 compute, float32 params and loss.
  c.log_every_steps = 100
  c.tensorboard = False         # Also write TensorBoard event files (imports TF once per run).

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet18'     # resnet18 | resnet34
  c.model.width = 64            # Stem/first-stage channels; the paper's 64.
  c.model.channels = 1          # Input channels; 1 = grayscale (the release's default).

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  # lr = learning_rate · lr_decay^((epoch mod lr_cycle_epochs) div lr_step_epochs) (Li et al.).
  c.optim.lr_decay = 0.3
  c.optim.lr_step_epochs = 4
  c.optim.lr_cycle_epochs = 20

  c.reg = ml_collections.ConfigDict()
  c.reg.name = 'pixel_similarity'  # The target (regularizers.REGULARIZERS): pixel_similarity | label_similarity.
  c.reg.dataset = 'fashion_mnist'  # Source of the regularization images.
  c.reg.split = 'train'
  c.reg.num_images = 5000       # The first N images of the split.
  c.reg.keep_size = False       # Feed them at their own size (e.g. imagenet2012's 36×64), not image_size.
  c.reg.normalize = 'task'      # Their network normalisation: 'task' (as the classified images) | 'source' (the
                                # release: by their own dataset, ImageNet as is; docs/method.md §2).
  c.reg.alpha = 10.0            # Regularization strength; 0 = plain cross-entropy.
  c.reg.threshold = 0.8         # Th of eq. 3; 0 = use S^pixel itself (Fig-1 variant).
  c.reg.pairs_per_step = 16
  c.reg.beta = 0.9              # Decay of the taps' running means.
  c.reg.eps = 1e-5              # ε inside the arctanh² loss.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 3         # Latest checkpoints kept (each also carries the best-by-validation variables so far).
  return c


def input_size(c: ml_collections.ConfigDict) -> int:
  """The network's input size: ``image_size``, or the classified dataset's own size when 0."""
  return data.input_size(c.dataset, c.image_size)


def settings(c: ml_collections.ConfigDict) -> list[tuple[float, float]]:
  """The (α, Th) settings of a run: ``population`` parsed, or [(reg.alpha, reg.threshold)]."""
  if not str(c.population).strip():
    return [(float(c.reg.alpha), float(c.reg.threshold))]
  out = []
  for item in str(c.population).split(','):
    parts = item.strip().split(':')
    try:
      if len(parts) != 2:
        raise ValueError
      out.append((float(parts[0]), float(parts[1])))
    except ValueError:
      raise ConfigError(f'config.population={c.population!r}: {item.strip()!r} is not α:Th; write e.g. '
                        "'0:0,4:0.8,10:0.8'") from None
  return out


def setting_name(alpha: float, threshold: float) -> str:
  """The run directory of a population setting: 'a4_th0.8'."""
  return f'a{alpha:g}_th{threshold:g}'


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every field that can be checked without data. Raises ConfigError."""
  _check(c.dataset in data.DATASETS and data.DATASETS[c.dataset].classification,
         f'config.dataset={c.dataset!r} is not a classification dataset; choose one of '
         f'{sorted(k for k, v in data.DATASETS.items() if v.classification)}')
  _check(c.reg.dataset in data.DATASETS,
         f'config.reg.dataset={c.reg.dataset!r} is unknown; choose one of {sorted(data.DATASETS)}')
  data.check_split_name(c.reg.dataset, c.reg.split)
  _check(c.model.name in models.STAGE_SIZES,
         f'config.model.name={c.model.name!r} is unknown; choose one of {sorted(models.STAGE_SIZES)}')
  _check(isinstance(c.model.width, int) and c.model.width >= 1,
         f'config.model.width={c.model.width!r} must be a positive integer')
  _check(c.model.channels in (1, 3), f'config.model.channels={c.model.channels!r} must be 1 or 3')
  _check(c.seed_parallelism in ('auto', 'vmap', 'loop'),
         f"config.seed_parallelism={c.seed_parallelism!r} must be 'auto', 'vmap' or 'loop'")
  _check(isinstance(c.image_size, int) and (c.image_size == 0 or c.image_size >= 25),
         f'config.image_size={c.image_size!r} must be 0 (the dataset\'s own size) or ≥ 25 (the ResNet '
         'downsamples by 8, then pools 4×4)')
  for name in ('batch_size', 'eval_batch_size', 'num_epochs', 'num_seeds', 'log_every_steps'):
    v = c[name]
    _check(isinstance(v, int) and v >= 1, f'config.{name}={v!r} must be a positive integer')
  _check(isinstance(c.train_subset, int) and c.train_subset >= 0,
         f'config.train_subset={c.train_subset!r} must be an integer ≥ 0 (0 = all)')
  _check(_finite(c.val_fraction) and 0 <= c.val_fraction < 1,
         f'config.val_fraction={c.val_fraction!r} must be in [0, 1)')
  o = c.optim
  _check(_finite(o.learning_rate) and o.learning_rate > 0,
         f'config.optim.learning_rate={o.learning_rate!r} must be > 0')
  _check(_finite(o.momentum) and 0 <= o.momentum < 1, f'config.optim.momentum={o.momentum!r} must be in [0, 1)')
  _check(_finite(o.weight_decay) and o.weight_decay >= 0,
         f'config.optim.weight_decay={o.weight_decay!r} must be ≥ 0')
  _check(_finite(o.lr_decay) and 0 < o.lr_decay <= 1, f'config.optim.lr_decay={o.lr_decay!r} must be in (0, 1]')
  _check(isinstance(o.lr_step_epochs, int) and o.lr_step_epochs >= 1,
         f'config.optim.lr_step_epochs={o.lr_step_epochs!r} must be a positive integer')
  _check(isinstance(o.lr_cycle_epochs, int) and o.lr_cycle_epochs >= 1,
         f'config.optim.lr_cycle_epochs={o.lr_cycle_epochs!r} must be a positive integer')
  r = c.reg
  _check(r.name in regularizers.REGULARIZERS,
         f'config.reg.name={r.name!r} is unknown; choose one of {sorted(regularizers.REGULARIZERS)}')
  population = bool(str(c.population).strip())
  alpha_name, th_name = ('config.population: α', 'config.population: Th') if population else \
      ('config.reg.alpha', 'config.reg.threshold')
  pairs = settings(c)
  for alpha, th in pairs:
    _check(math.isfinite(alpha) and alpha >= 0,
           f'{alpha_name}={alpha!r} must be a finite number ≥ 0 (0 turns the regularizer off)')
    _check(math.isfinite(th) and 0 <= th < 1, f'{th_name}={th!r} must be in [0, 1) (0 = un-thresholded S^pixel)')
  _check(len(set(pairs)) == len(pairs), f'config.population={c.population!r} lists a setting twice')
  names = [setting_name(a, th) for a, th in pairs]
  twice = [n for n in names if names.count(n) > 1] or ['']
  _check(twice == [''], f'config.population={c.population!r}: two settings share the run directory {twice[0]!r} '
                        '(α and Th are named to 6 significant digits)')
  _check(isinstance(r.num_images, int) and 2 <= r.num_images <= 65535,
         f'config.reg.num_images={r.num_images!r} must be an integer in [2, 65535]')
  _check(isinstance(r.pairs_per_step, int) and r.pairs_per_step >= 1,
         f'config.reg.pairs_per_step={r.pairs_per_step!r} must be a positive integer')
  _check(r.pairs_per_step <= similarity.num_pairs(r.num_images),
         f'config.reg.pairs_per_step={r.pairs_per_step} exceeds the {similarity.num_pairs(r.num_images)} '
         f'pairs of config.reg.num_images={r.num_images}; lower it or use more images')
  _check(r.normalize in regularizers.NORMALIZE,
         f'config.reg.normalize={r.normalize!r} is unknown; choose one of {regularizers.NORMALIZE}')
  _check(_finite(r.beta) and 0 <= r.beta < 1, f'config.reg.beta={r.beta!r} must be in [0, 1)')
  _check(_finite(r.eps) and r.eps > 0, f'config.reg.eps={r.eps!r} must be > 0')
  _check(isinstance(c.checkpoint.keep, int) and c.checkpoint.keep >= 1,
         f'config.checkpoint.keep={c.checkpoint.keep!r} must be a positive integer')


def regularized(c: ml_collections.ConfigDict) -> bool:
  """Whether any setting of the run has α > 0 (then the pair pass is part of the step)."""
  return any(alpha > 0 for alpha, _ in settings(c))


def validate_against_data(c: ml_collections.ConfigDict, num_train: int, num_reg_available: int) -> None:
  """Checks that need the data's sizes (after loading, still before compiling)."""
  _check(c.batch_size <= num_train,
         f'config.batch_size={c.batch_size} exceeds the {num_train} training images; lower it or '
         'raise config.train_subset')
  if regularized(c):
    _check(c.reg.num_images <= num_reg_available,
           f'config.reg.num_images={c.reg.num_images} exceeds the {num_reg_available} images of '
           f'{c.reg.dataset} ({c.reg.split}); lower it')
