"""pixelreg_jax: pixel-similarity regularization (Attias, Pehlevan & Obeid) in JAX/Flax.

The package's map, module by module and in import order, is docs/ARCHITECTURE.md.
"""
__version__ = '0.1.0'
