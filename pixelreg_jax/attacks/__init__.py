"""Robustness attacks as pure JAX functions (docs/method.md §7 and §8, and beyond the paper).

  levels       noise and transferred FGSM, one strength per call (``LEVEL_ATTACKS``)
  boundary     the decision-based Boundary attack (``boundary_attack``; release or strong protocol)
  whitebox     white-box PGD, L∞ and L2 (``whitebox.pgd``, ``whitebox.PGD_VARIANTS``)
  corruptions  common corruptions and MNIST-C (``corruptions.corrupt``)
  masking      gradient-masking checks over accuracy curves

Every attack works on images in [0, 1] at the network's input size and sees a model only
through a function of such images (logits or predicted labels).
"""
from pixelreg_jax.attacks import boundary, corruptions, masking, whitebox
from pixelreg_jax.attacks.boundary import BoundaryConfig, boundary_attack, release_score
from pixelreg_jax.attacks.levels import (
    LEVEL_ATTACKS,
    MAX_LEVELS,
    FgsmAux,
    LevelAttack,
    attack_levels,
    batch_range,
    clip_to_image_range,
    correct_per_level,
    fgsm,
    gaussian_noise,
    gradient_sign,
    image_range,
    salt_and_pepper,
    uniform_noise,
)

__all__ = [
    'boundary', 'corruptions', 'masking', 'whitebox', 'BoundaryConfig', 'boundary_attack', 'release_score',
    'LEVEL_ATTACKS', 'MAX_LEVELS', 'FgsmAux', 'LevelAttack', 'attack_levels', 'batch_range', 'clip_to_image_range',
    'correct_per_level', 'fgsm', 'gaussian_noise', 'gradient_sign', 'image_range', 'salt_and_pepper',
    'uniform_noise',
]
