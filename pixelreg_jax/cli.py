"""The command-line convention of every entry point (main, evaluate, analysis, report, import_data, benchmark).

    if __name__ == '__main__':
      define_flags()
      cli.run(main)

``run`` is absl's ``app.run`` with one way to fail: a bad flag, a bad config file, a user error
(any ``errors.UserError``, or an ``OSError`` such as a full disk) and a
usage error each print one line ``error: <message>`` on stderr and exit with status 2; Ctrl-C
prints ``error: interrupted`` and exits with 130 (128 + SIGINT, as shells do), wherever it lands
(one that Python drops inside a garbage-collector callback, or that a library's bare ``except:``
swallows, is delivered again; also in a process started with SIGINT ignored, as a script's
background job is) and without the interpreter's teardown, which an interrupted XLA compilation
can crash. Anything else is a bug and
keeps its traceback. With ``--verbosity=1`` the traceback of a user error is logged too.

Logging: progress goes through absl logging (``logging.info``) to stderr, so stdout carries only
the final one-line JSON result. Unless ``--verbosity`` is given, INFO lines are shown from this
package (and scripts) only; the INFO chatter of installed libraries (orbax, JAX, TFDS, which all
log through absl) is dropped, while their warnings and errors still show.

This module imports nothing heavy (no JAX, orbax or TensorFlow): light tools (report,
import_data) use it and stay fast to start.
"""
from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import sys
from typing import Any, Callable

from absl import app, flags, logging

from pixelreg_jax import errors, interrupts
from pixelreg_jax.errors import UserError

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = interrupts.EXIT_INTERRUPTED


# The exception types printed as one line: every ``errors.UserError`` and the operating system's
# errors (a full disk, a missing file).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


def one_line(message: str, limit: int = 400) -> str:
  """A message on one line: its first line, and its last if it has several (e.g. an error
  wrapped around a traceback ends with the actual exception)."""
  lines = [l.strip() for l in str(message).splitlines() if l.strip()]
  if not lines:
    return ''
  text = lines[0] if len(lines) == 1 else f'{lines[0].rstrip(":")}: {lines[-1]}'
  return text if len(text) <= limit else text[:limit - 1] + '…'


def describe(e: BaseException) -> str:
  """The one-line message of a user error."""
  if isinstance(e, OSError) and e.strerror and e.filename:
    return f'{e.filename}: {e.strerror}'
  return one_line(str(e)) or type(e).__name__


def fail(message: str, status: int = EXIT_USER_ERROR) -> None:
  """Prints ``error: <message>`` on stderr and exits with ``status``."""
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(status)


@contextlib.contextmanager
def one_line_errors():
  """Turns the user errors raised inside into ``error: <message>`` and exit status 2, and Ctrl-C
  into ``error: interrupted`` and exit status 130."""
  try:
    yield
  except KeyboardInterrupt:
    interrupts.interrupted()
  except Exception as e:  # pylint: disable=broad-except
    if not isinstance(e, USER_ERRORS):
      raise
    logging.debug('user error', exc_info=True)
    fail(describe(e))


# ---------------------------------------------------------------------------------------
# Flags.
# ---------------------------------------------------------------------------------------


def _config_override_error(e: BaseException, argv: list[str]) -> str | None:
  """A misspelt ``--config.a.b=v`` field: ml_collections raises KeyError/AttributeError chains
  whose innermost message is the unknown key, maybe with 'Did you mean "x"'."""
  chain = errors.chain(e)
  if not all(isinstance(c, (KeyError, AttributeError)) for c in chain):
    return None
  key = str(chain[-1].args[0]) if chain[-1].args else ''
  suggestion = None
  for c in chain:
    m = re.search(r'Did you mean "([^"]+)"', str(c.args[0] if c.args else ''))
    suggestion = suggestion or (m.group(1) if m else None)
  flag = next((a.split('=')[0] for a in argv if a.startswith('--') and '.' in a.split('=')[0]
               and key in a.split('=')[0].split('.')), None)
  if flag is None:
    return None
  where = flag.lstrip('-').rsplit('.', 1)[0]
  return (f'{flag}: {where} has no field {key!r}' + (f' (did you mean {suggestion!r}?)' if suggestion else ''))


def _flag_error(e: BaseException, argv: list[str]) -> str:
  """One line for an error raised while parsing the command line."""
  text = str(e)
  m = re.search(r'Flag --(\S+) must have a value other than None', text)
  if m:
    return f'--{m.group(1)} is required'
  if isinstance(e, SyntaxError):
    return f'{e.filename}:{e.lineno}: syntax error: {e.msg}'
  if "has no attribute 'get_config'" in text:
    arg = next((a for a in argv if re.match(r'--\w*config=', a)), '--config')
    return f'{arg}: the file defines no get_config()'
  if 'Failed loading config file' in text or 'earlier failure to load' in text:
    return f'config file {_config_load_error(e)}'
  override = _config_override_error(e, argv)
  if override:
    return override
  if isinstance(e, flags.Error):
    return one_line(text)
  return f'{type(e).__name__}: {one_line(text)}'


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, failing as one ``error:`` line (status 2) instead of a usage text or
  a traceback (e.g. a missing or broken config file, a misspelt config field)."""
  try:
    return flags.FLAGS(argv)
  except KeyboardInterrupt:
    interrupts.interrupted()
  except Exception as e:  # pylint: disable=broad-except
    fail(_flag_error(e, argv))
  return []   # not reached


def config_value(holder) -> Any:
  """The ConfigDict of a ``config_flags.DEFINE_config_file`` flag, or a ``UserError`` saying why
  there is none: the file is missing or failed to load (ml_collections defers that error until
  the config is first used), or its ``get_config()`` returned no ConfigDict."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  path = flags.FLAGS[holder.name].config_filename
  value = holder.value
  error = vars(value).get('_error') if type(value).__name__ == '_ErrorConfig' else None
  if error is not None:
    raise UserError(f'--{holder.name}: {_config_load_error(error)}')
  if not isinstance(value, ml_collections.ConfigDict):
    raise UserError(f'--{holder.name}={path}: get_config() returned {type(value).__name__}, not a ConfigDict')
  return value


def _config_load_error(e: BaseException) -> str:
  """'No such file or directory' rather than ml_collections' multi-line list of attempts."""
  text = ' '.join(f'{c}' for c in errors.chain(e))
  m = re.search(r"\[Errno \d+\] ([^:\]]+): '([^']*)'", text)
  return f"{m.group(2)}: {m.group(1)}" if m else one_line(describe_cause(e))


def describe_cause(e: BaseException) -> str:
  """The innermost cause of an exception chain, as 'Type: message'."""
  e = errors.chain(e)[-1]
  return f'{type(e).__name__}: {e}'


# ---------------------------------------------------------------------------------------
# Logging.
# ---------------------------------------------------------------------------------------


class _NoLibraryInfo(std_logging.Filter):
  """Passes warnings and errors from everyone; INFO and below only from this package and from
  scripts, not from installed libraries (files under site-packages: orbax, JAX, TFDS, absl)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    path = os.path.abspath(record.pathname)
    parts = path.split(os.sep)
    return path.startswith(_PACKAGE_DIR) or not ('site-packages' in parts or 'dist-packages' in parts)


_FILTER = _NoLibraryInfo()


def setup_logging() -> None:
  """INFO progress of this package on stderr; installed libraries' INFO dropped, unless the user
  asked for a level with ``--verbosity`` (then absl's own behaviour, everything at that level)."""
  handler = logging.get_absl_handler()
  if flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].present:
    handler.removeFilter(_FILTER)
    return
  logging.set_verbosity(logging.INFO)
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)


quiet_logging = setup_logging   # The former name, still called by evaluate and benchmark.


def run(main: Callable[[list[str]], Any]) -> None:
  """``app.run(main)`` with the project's convention (see the module docstring)."""
  def wrapped(argv):
    setup_logging()
    with one_line_errors():
      try:
        return main(argv)
      except app.UsageError as e:
        fail(str(e))

  interrupts.catch_interrupts()
  try:
    try:
      app.run(wrapped, flags_parser=parse_flags)
    except KeyboardInterrupt:   # during start-up or shutdown, outside main
      interrupts.interrupted()
  except SystemExit as e:
    if e.code in (0, None) and interrupts.STATE.pending and not interrupts.STATE.delivered:
      interrupts.report_interrupt()   # a Ctrl-C swallowed too close to the end to be delivered again
      interrupts.exit_at_once(EXIT_INTERRUPTED)
    if e.code == EXIT_INTERRUPTED:
      interrupts.exit_at_once(EXIT_INTERRUPTED)
    raise
  finally:
    interrupts.STATE.pending = False   # ended otherwise (a user error, a bug): nothing more to deliver
