"""Every error type of the package (and ``chain``, an exception's causes), in one leaf module that
imports nothing.

A ``UserError`` is something the user can fix (a value, a file, a flag, the data); every entry
point prints it as one line ``error: <message>`` and exits with status 2 (``cli.run``).
Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
  """An error the user can fix; printed as one line by every entry point."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value or flag."""


class DataUnavailableError(UserError, RuntimeError):
  """A dataset is neither imported, on the system, nor obtainable from TFDS."""


class DataError(UserError, ValueError):
  """A data file is damaged (truncated, not its format) or holds wrong contents (image shape,
  labels out of range, an unknown split)."""


class ImportDataError(UserError, ValueError):
  """Official dataset files that cannot be imported (missing, damaged, of another dataset)."""


class CheckpointError(UserError, RuntimeError):
  """No usable checkpoint where one is required, an incompatible checkpoint, or a failed save."""


class TrainingError(UserError):
  """Training cannot go on (a non-finite loss): the last good checkpoint is kept."""


class ReportError(UserError, ValueError):
  """Run directories that cannot be reported together (missing evaluation, duplicate runs, bad
  labels)."""


def chain(e: BaseException | None) -> list[BaseException]:
  """``e`` and the exceptions behind it (``__cause__``, else ``__context__``), outermost first."""
  out, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    out.append(e)
    e = e.__cause__ or e.__context__
  return out
