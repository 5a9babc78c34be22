r"""Per-layer convolution timings of the ResNet18 shapes: forward, input gradient, kernel gradient.

    python benchmarks/conv_profile.py            # JAX only
    python benchmarks/conv_profile.py --torch    # and PyTorch's (needs a local pip install torch)

Prints one JSON line per layer shape (batch 64): milliseconds for JAX's forward convolution and
for each of its two gradient convolutions, and with --torch the same for
torch.nn.functional.conv2d (the gradients timed as forward+backward minus forward). This is the
profile behind the README's performance section: on CPU, XLA's gradient convolutions are the
bottleneck of the train step.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

# name: (batch, spatial size, in channels, out channels, kernel)
LAYERS = {'stem 7x7 1->64': (64, 32, 1, 64, 7), 'stage1 3x3 64': (64, 32, 64, 64, 3),
          'stage2 3x3 128': (64, 16, 128, 128, 3), 'stage3 3x3 256': (64, 8, 256, 256, 3),
          'stage4 3x3 512': (64, 4, 512, 512, 3)}


def timed(fn, *args, repeats=5):
  out = fn(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return 1000 * (time.perf_counter() - t) / repeats


def jax_layer(b, h, ci, co, k):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, h, h, ci)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, ci, co)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(b, h, h, co)), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',  # noqa: E731
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  d_input = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  d_kernel = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  return {'jax_forward_ms': timed(jax.jit(conv), x, w), 'jax_input_grad_ms': timed(d_input, x, w, g),
          'jax_kernel_grad_ms': timed(d_kernel, x, w, g)}


def torch_layer(b, h, ci, co, k):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  x = torch.randn(b, ci, h, h, requires_grad=True)
  w = torch.randn(co, ci, k, k, requires_grad=True)
  g = torch.randn(b, co, h, h)

  def t(fn, repeats=5):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
      fn()
    return 1000 * (time.perf_counter() - start) / repeats

  fwd = t(lambda: F.conv2d(x, w, padding=k // 2))
  d_in = t(lambda: torch.autograd.grad(F.conv2d(x, w, padding=k // 2), [x], g)) - fwd
  d_k = t(lambda: torch.autograd.grad(F.conv2d(x, w, padding=k // 2), [w], g)) - fwd
  return {'torch_forward_ms': fwd, 'torch_input_grad_ms': d_in, 'torch_kernel_grad_ms': d_k}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--torch', action='store_true')
  a = p.parse_args()
  for name, shape in LAYERS.items():
    row = {'layer': name, **jax_layer(*shape)}
    if a.torch:
      row.update(torch_layer(*shape))
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == '__main__':
  main()
