"""Grayscale baseline JPEG round trip with libjpeg's integer arithmetic (bit-exact with PIL/libjpeg-turbo).

The corruption ``jpeg_compression(x [H, W, 1], draws, p)``: 8-bit samples, the quality-scaled luminance
table, libjpeg's "islow" forward and inverse DCTs. Colour images are refused (ConfigError): libjpeg's
chroma subsampling is not reproduced. Details and checks: docs/corruptions.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pixelreg_jax.errors import ConfigError

Array = jax.Array

_JPEG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64).reshape(8, 8)


def jpeg_quant_table(quality: int) -> np.ndarray:
  """libjpeg's luminance table at ``quality`` (jpeg_quality_scaling, baseline: clamped to [1, 255])."""
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality      # integers, as libjpeg
  return np.clip(np.floor((_JPEG_LUMINANCE * scale + 50) / 100), 1, 255)


# libjpeg's "islow" integer DCTs (jfdctint.c, jidctint.c; libjpeg-turbo's default, SIMD bit-exact):
# 13-bit fixed-point constants sqrt(2)·cos combinations, PASS1_BITS = 2 extra bits between passes.
_FIX = {'0_298631336': 2446, '0_390180644': 3196, '0_541196100': 4433, '0_765366865': 6270,
        '0_899976223': 7373, '1_175875602': 9633, '1_501321110': 12299, '1_847759065': 15137,
        '1_961570560': 16069, '2_053119869': 16819, '2_562915447': 20995, '3_072711026': 25172}
_CONST_BITS, _PASS1_BITS = 13, 2


def _descale(v: Array, n: int) -> Array:
  return jnp.right_shift(v + (1 << (n - 1)), n)


def _odd_part(t0, t1, t2, t3):
  """The shared odd-part rotation of jfdctint/jidctint (LL&M figure 8): returns (t0, t1, t2, t3) updated."""
  f = _FIX
  z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
  z5 = (z3 + z4) * f['1_175875602']
  t0, t1 = t0 * f['0_298631336'], t1 * f['2_053119869']
  t2, t3 = t2 * f['3_072711026'], t3 * f['1_501321110']
  z1, z2 = z1 * -f['0_899976223'], z2 * -f['2_562915447']
  z3, z4 = z3 * -f['1_961570560'] + z5, z4 * -f['0_390180644'] + z5
  return t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4


def _fdct_pass(d: Array, first: bool) -> Array:
  """One pass of jpeg_fdct_islow along the last axis of int32 d [..., 8]."""
  x = [d[..., i] for i in range(8)]
  t0, t7, t1, t6 = x[0] + x[7], x[0] - x[7], x[1] + x[6], x[1] - x[6]
  t2, t5, t3, t4 = x[2] + x[5], x[2] - x[5], x[3] + x[4], x[3] - x[4]
  t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
  n = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS
  out = [None] * 8
  if first:
    out[0], out[4] = jnp.left_shift(t10 + t11, _PASS1_BITS), jnp.left_shift(t10 - t11, _PASS1_BITS)
  else:
    out[0], out[4] = _descale(t10 + t11, _PASS1_BITS), _descale(t10 - t11, _PASS1_BITS)
  z1 = (t12 + t13) * _FIX['0_541196100']
  out[2] = _descale(z1 + t13 * _FIX['0_765366865'], n)
  out[6] = _descale(z1 + t12 * -_FIX['1_847759065'], n)
  o7, o5, o3, o1 = _odd_part(t4, t5, t6, t7)
  out[7], out[5], out[3], out[1] = (_descale(v, n) for v in (o7, o5, o3, o1))
  return jnp.stack(out, -1)


def _idct_pass(d: Array, first: bool) -> Array:
  """One pass of jpeg_idct_islow along the last axis of int32 d [..., 8] (first: the column pass)."""
  x = [d[..., i] for i in range(8)]
  z1 = (x[2] + x[6]) * _FIX['0_541196100']
  t2, t3 = z1 + x[6] * -_FIX['1_847759065'], z1 + x[2] * _FIX['0_765366865']
  t0, t1 = jnp.left_shift(x[0] + x[4], _CONST_BITS), jnp.left_shift(x[0] - x[4], _CONST_BITS)
  t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
  o0, o1, o2, o3 = _odd_part(x[7], x[5], x[3], x[1])
  n = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
  out = [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
  return jnp.stack([_descale(v, n) for v in out], -1)


def jpeg_compression(x, draws, p):
  """Grayscale baseline JPEG round trip at quality p['quality'] with libjpeg's integer arithmetic.

  8-bit samples (round(255·x)), edges replicated to whole 8×8 blocks, sample − 128, islow forward
  DCT (output scaled by 8), quantisation round(|F|/(8Q)) half up with the sign kept, dequantisation,
  islow inverse DCT, + 128 clamped to [0, 255].
  """
  del draws
  if x.shape[-1] != 1:
    raise ConfigError('jpeg_compression is implemented for 1-channel images only (libjpeg subsamples '
                      'color); use model.channels=1 or leave jpeg_compression out')
  h, w = x.shape[:2]
  hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
  samples = jnp.round(jnp.clip(x[..., 0], 0, 1) * 255.0).astype(jnp.int32)
  samples = jnp.pad(samples, ((0, hp - h), (0, wp - w)), mode='edge') - 128
  blocks = samples.reshape(hp // 8, 8, wp // 8, 8).transpose(0, 2, 1, 3)      # [bh, bw, row, col]
  coef = _fdct_pass(blocks, True)                                           # rows
  coef = jnp.swapaxes(_fdct_pass(jnp.swapaxes(coef, -1, -2), False), -1, -2)  # columns
  q = jnp.asarray(jpeg_quant_table(p['quality']), jnp.int32)
  level = jnp.sign(coef) * ((jnp.abs(coef) + 4 * q) // (8 * q))
  deq = level * q
  rec = jnp.swapaxes(_idct_pass(jnp.swapaxes(deq, -1, -2), True), -1, -2)  # columns
  rec = _idct_pass(rec, False)                                              # rows
  rec = rec.transpose(0, 2, 1, 3).reshape(hp, wp)[:h, :w]
  return (jnp.clip(rec + 128, 0, 255).astype(x.dtype) / 255.0)[..., None]


# (name, apply, draw) of this module's corruption (deterministic).
ENTRIES = (('jpeg_compression', jpeg_compression, None),)
