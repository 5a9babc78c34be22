"""User-facing errors: one line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import contextlib
import sys

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
