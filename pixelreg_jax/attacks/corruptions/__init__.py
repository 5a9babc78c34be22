"""Common corruptions (Hendrycks & Dietterich 2019) and MNIST-C (Mu & Gilmer 2019) in JAX.

  ops (filters, resampling, warps) · hendrycks, jpeg, mnist_c (the corruptions) · registry (table,
  parameters, ``corrupt``, per-severity counts) · mce (CE, mCE). What each corruption is, the variants
  and how each is checked against its reference: docs/corruptions.md.
"""
from pixelreg_jax.attacks.corruptions.hendrycks import elastic_transform, glass_blur
from pixelreg_jax.attacks.corruptions.jpeg import jpeg_compression, jpeg_quant_table
from pixelreg_jax.attacks.corruptions.mce import corruption_errors, mean_corruption_error, mean_errors
from pixelreg_jax.attacks.corruptions.ops import affine_warp
from pixelreg_jax.attacks.corruptions.registry import (
    CORRUPTIONS,
    FAMILY_CORRUPTIONS,
    FAMILY_VARIANT,
    MNIST_C_SEVERITY,
    PARAMS,
    VARIANTS,
    correct_per_corruption,
    correct_per_severity,
    corrupt,
    corruption_key,
    severities,
)

__all__ = [
    'CORRUPTIONS', 'FAMILY_CORRUPTIONS', 'FAMILY_VARIANT', 'MNIST_C_SEVERITY', 'PARAMS', 'VARIANTS', 'affine_warp',
    'correct_per_corruption', 'correct_per_severity', 'corrupt', 'corruption_errors', 'corruption_key',
    'elastic_transform', 'glass_blur', 'jpeg_compression', 'jpeg_quant_table', 'mean_corruption_error', 'mean_errors',
    'severities',
]
