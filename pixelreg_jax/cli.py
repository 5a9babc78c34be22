"""Command-line helpers: user errors as one line (exit status 2, no traceback), quiet logging."""
from __future__ import annotations

import contextlib
import sys

from absl import flags, logging

from pixelreg_jax.checkpoint import CheckpointError
from pixelreg_jax.config import ConfigError
from pixelreg_jax.data import DataUnavailableError

USER_ERRORS = (ConfigError, DataUnavailableError, CheckpointError)


@contextlib.contextmanager
def one_line_errors():
  """Turns the user errors raised inside into ``error: <message>`` and ``sys.exit(2)``."""
  try:
    yield
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


def quiet_logging() -> None:
  """Orbax and JAX log every step of their work at INFO: show warnings and errors only, unless
  the user asked for a level with --verbosity."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
