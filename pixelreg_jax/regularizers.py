"""Similarity regularizers: the one place where a loss term declares its data and targets.

A similarity regularizer adds α·L_sim to the cross-entropy: the model's similarity S^model of
pairs of regularization images (5 taps, running-mean centring, softmax layer weights; see
``models.ResNet.tap_similarity``) is pulled toward a target similarity by the arctanh² loss
(``similarity.similarity_loss``). Regularizers differ only in their **target matrix** over the N
regularization images, so a new one is one function and one ``REGULARIZERS`` entry, selected
by ``config.reg.name``:

  pixel_similarity  S^pixel, the cosine similarity of the centred grayscale pixels (the paper)
  label_similarity  1 where two images share a class label, 0 otherwise (the release's
                    ``categorical_s_matrix``; needs a labelled regularization source)

The matrix is computed once, before training; each step draws 16 pairs i < j
(``similarity.pair_indices``) and thresholds their entries at the member's Th (eq. 3;
``similarity.threshold_targets``, Th = 0 keeps the raw values).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pixelreg_jax import data as data_lib
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import similarity
from pixelreg_jax.errors import ConfigError

Array = jax.Array


def pixel_target(images: np.ndarray, labels: np.ndarray, config: ml_collections.ConfigDict) -> Array:
  """S^pixel [N, N] of the regularization images, at the size the network sees them (docs/method.md §2)."""
  del labels
  size = None if config.reg.keep_size else data_lib.input_size(config.dataset, config.image_size)
  return similarity.pixel_similarity(pipe.model_input(jnp.asarray(images), size, config.model.channels))


def label_target(images: np.ndarray, labels: np.ndarray, config: ml_collections.ConfigDict) -> Array:
  """[N, N] 1 where the labels agree, 0 elsewhere (the release's ``categorical_s_matrix``)."""
  del images, config
  labels = jnp.asarray(labels)
  return (labels[:, None] == labels[None, :]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Regularizer:
  """A similarity regularizer: its name and its target matrix.

  Attributes:
    name: the ``config.reg.name`` that selects it.
    target_matrix: (images uint8 [N, ...], labels int32 [N], config) -> float32 [N, N] in [−1, 1].
    needs_labels: whether the regularization source must be labelled.
  """
  name: str
  target_matrix: Callable[[np.ndarray, np.ndarray, ml_collections.ConfigDict], Array]
  needs_labels: bool = False


REGULARIZERS: dict[str, Regularizer] = {
    r.name: r for r in [
        Regularizer('pixel_similarity', pixel_target),
        Regularizer('label_similarity', label_target, needs_labels=True),
    ]
}


def get(config: ml_collections.ConfigDict) -> Regularizer:
  if config.reg.name not in REGULARIZERS:
    raise ConfigError(f'config.reg.name={config.reg.name!r} is unknown; choose one of '
                                 f'{sorted(REGULARIZERS)}')
  return REGULARIZERS[config.reg.name]


@flax.struct.dataclass
class RegData:
  """What the train step reads for the regularizer, resident on the device.

  Attributes:
    images: uint8 [N, H_r, W_r, C_r] the regularization images.
    matrix: float32 [N, N] the un-thresholded target matrix.
  """
  images: Array
  matrix: Array


def load(config: ml_collections.ConfigDict, train_x: np.ndarray, train_y: np.ndarray) -> dict[str, np.ndarray]:
  """The first ``reg.num_images`` images (and labels) of the regularization source (host arrays).

  The classified dataset's own train split is reused rather than read twice.
  """
  c = config.reg
  if c.dataset == config.dataset and c.split == 'train':
    images, labels = train_x, train_y
  else:
    images, labels = data_lib.load_split(c.dataset, c.split, config.data_dir, download=config.download,
                                         num_examples=c.num_images, manual_dir=config.tfds_manual_dir)
  return {'images': images[:c.num_images], 'labels': labels[:c.num_images]}


def prepare(config: ml_collections.ConfigDict, host: dict[str, np.ndarray]) -> RegData:
  """The device data of the regularizer: its images and target matrix (computed once)."""
  matrix = get(config).target_matrix(host['images'], host['labels'], config)
  return RegData(jnp.asarray(host['images']), jnp.asarray(matrix, jnp.float32))


def pair_batch(data: RegData, key: Array, step: Array, threshold, spec: pipe.PipelineSpec) -> dict[str, Array]:
  """One step's pairs: {'reg_a', 'reg_b': [P, S, S, C] network inputs, 'target': [P]}.

  Args:
    data: the device-resident ``RegData``.
    key: the member's pair-stream key.
    step: the global step (the pair stream is a function of (key, step), so runs resume exactly).
    threshold: Th of this member (a number, or traced in a population); 0 = raw matrix entries.
    spec: static pipeline settings.
  """
  rows, cols = similarity.pair_indices(key, step, spec.pairs_per_step, data.images.shape[0])
  return {'reg_a': pipe.network_input(data.images[rows], spec, spec.reg_keep_size, spec.reg_family),
          'reg_b': pipe.network_input(data.images[cols], spec, spec.reg_keep_size, spec.reg_family),
          'target': similarity.threshold_targets(data.matrix[rows, cols], threshold)}


NORMALIZE = ('task', 'source')


def family(config: ml_collections.ConfigDict) -> str:
  """The family whose normalisation the regularization images get (``input_pipeline.normalize``):
  the classified dataset's (``reg.normalize='task'``), or, as the release's loaders do, their own
  dataset's, ImageNet's being none (``'source'``: ``data.release_family``)."""
  if config.reg.get('normalize', 'task') == 'source':
    return data_lib.release_family(config.reg.dataset)
  return data_lib.get_info(config.dataset).family


def optional(config: ml_collections.ConfigDict, alphas) -> Optional[Regularizer]:
  """The regularizer, or None when every member trains with α = 0 (plain cross-entropy)."""
  return get(config) if any(a > 0 for a in alphas) else None
