"""Training progress on the console: steps per second, the ETA, and the step metrics on one line.

clu's ``periodic_actions.ReportProgress`` is what the flax examples use for this; its last
release (0.0.12) imports TensorFlow and TensorBoard whenever its writers are imported, which
would put TensorFlow on every run's start (and it is absent on bare GPU machines), so this is
the project's own, in a few lines.
"""
from __future__ import annotations

import time
from typing import Optional

import jax
import numpy as np


def format_duration(seconds: float) -> str:
  """'4m05s', or '1h02m03s' from an hour on."""
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Progress:
  """Steps per second measured between log points, compilation excluded, and the ETA.

  Usage: ``skip(1)`` for the first (compiling) step, ``start()`` once its result is ready, then
  ``advance(n)`` at every log point, once the results of the ``n`` steps since are ready.
  """

  def __init__(self, total_steps: int):
    self.remaining = total_steps
    self.steps, self.seconds = 0, 0.0
    self._mark: Optional[float] = None

  def start(self) -> None:
    """The clock runs from now."""
    self._mark = time.time()

  def advance(self, steps: int) -> None:
    """``steps`` more steps are finished."""
    now = time.time()
    if self._mark is not None:
      self.steps += steps
      self.seconds += now - self._mark
    self._mark = now
    self.remaining -= steps

  def skip(self, steps: int) -> None:
    """``steps`` finished steps whose time is not measured."""
    self.remaining -= steps

  @property
  def rate(self) -> float:
    """Steps per second (NaN before any was measured)."""
    return self.steps / self.seconds if self.seconds > 0 else float('nan')

  def eta(self) -> float:
    """Seconds left at the measured rate (NaN before any was measured)."""
    return self.remaining / self.rate if self.rate > 0 else float('nan')


# The console line: metric name -> label, in this order; metrics not listed follow by name.
CONSOLE = (('loss', 'loss'), ('ce_loss', 'ce'), ('sim_loss', 'sim'), ('accuracy', 'acc'))


def console_line(metrics: dict[str, float]) -> str:
  """'loss 0.5123 ce 0.4011 sim 0.0278 acc 0.8120 …' from every scalar of the step metrics."""
  labels = dict(CONSOLE)
  order = [k for k, _ in CONSOLE if k in metrics] + sorted(k for k in metrics if k not in labels)
  return ' '.join(f'{labels.get(k, k)} {metrics[k]:.4f}' for k in order)


def member_means(tree: dict) -> dict[str, float]:
  """{name: mean over members} of a dict of device arrays [M] (fetched to the host)."""
  return {k: float(np.mean(v)) for k, v in jax.device_get(tree).items()}
