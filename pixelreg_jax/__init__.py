"""pixelreg_jax: pixel-similarity regularization (Attias, Pehlevan & Obeid) in JAX/Flax.

Modules: similarity (targets, model similarity, loss, pair sampler), models (ResNet18/34 with
taps), input_pipeline (on-device batches), train (step and loop), data / tfds_source /
import_data (datasets), checkpoint / runs (orbax), attacks / evaluate / report / analysis
(robustness and figures), parallel (mesh, multi-host), benchmark, config / experiments, cli.
"""
__version__ = '0.1.0'
