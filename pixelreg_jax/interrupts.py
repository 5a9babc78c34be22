"""Ctrl-C, delivered once and exited cleanly (``cli.run`` installs this).

Python turns SIGINT into a KeyboardInterrupt at the main thread's next bytecode, wherever that
is, and code there may lose it: a bare ``except:`` (JAX has dozens, e.g. in
``pxla._get_layouts_from_executable``, run while a first step compiles), a garbage-collector
callback (JAX's ``_xla_gc_callback``), a ``__del__`` or weakref callback (Python prints
"Exception ignored" and drops it). And a process started with SIGINT ignored (a background job
``cmd &`` of a script or of CI, which the shell starts so) gets no KeyboardInterrupt at all.
So ``run`` installs its own handler, and while an interrupt is pending (raised, not yet caught
by ``one_line_errors``/``run``) a helper thread watches the main thread: when it is no longer
handling a KeyboardInterrupt (no ``except``/``finally``/``__exit__`` running with one in its
chain: the run's clean-up is never cut short), SIGINT is sent to it again.
"""
from __future__ import annotations

import logging as std_logging
import os
import queue
import signal
import sys
import threading
import time

from pixelreg_jax import errors

EXIT_INTERRUPTED = 130   # 128 + SIGINT, as shells do


REDELIVER_AFTER_S = 0.5   # the main thread ran this long without the pending interrupt: lost
_POLL_S = 0.05
_RAISED, _DROPPED = 'raised', 'dropped'


class _Interrupt:
  """The Ctrl-C of this process: ``pending`` once raised, ``delivered`` once caught by the CLI."""

  def __init__(self):
    self.pending = False
    self.delivered = False
    self.main_ident: int | None = None
    self.events: queue.SimpleQueue = queue.SimpleQueue()   # reentrant: safe in a signal handler
    self.watcher: threading.Thread | None = None


STATE = _Interrupt()


def _on_sigint(signum, frame) -> None:  # pylint: disable=unused-argument
  """The SIGINT handler: a KeyboardInterrupt, noted as pending; none once the CLI has caught one
  (its line is printed, the exit follows)."""
  if STATE.delivered:
    return
  STATE.pending = True
  STATE.events.put(_RAISED)
  raise KeyboardInterrupt


def report_interrupt() -> None:
  """The CLI caught the interrupt: no more of them (the exit follows); its one line."""
  STATE.delivered = True
  print('error: interrupted (Ctrl-C)', file=sys.stderr, flush=True)


def interrupted() -> None:
  """``error: interrupted (Ctrl-C)`` and exit status 130 (``SystemExit``)."""
  report_interrupt()
  sys.exit(EXIT_INTERRUPTED)


def _main_handles_interrupt() -> bool:
  """Whether the main thread runs an ``except``/``finally``/``__exit__`` with a KeyboardInterrupt
  in the chain of the exception it handles (its clean-up after Ctrl-C)."""
  e = sys._current_exceptions().get(STATE.main_ident)  # pylint: disable=protected-access
  if isinstance(e, tuple):   # Python < 3.12: (type, value, traceback)
    e = e[1]
  return any(isinstance(c, KeyboardInterrupt) for c in errors.chain(e))


def _watch() -> None:
  """The helper thread: sends SIGINT to the main thread again while an interrupt is pending and
  not handled there for ``REDELIVER_AFTER_S`` (swallowed), or at once when Python dropped it
  (``_interrupt_again``); one signal at a time, the next only after the handler ran."""
  state = STATE
  lost_since, awaiting_handler = None, False
  while True:
    active = state.pending and not state.delivered
    try:
      event = state.events.get(timeout=_POLL_S if active else None)
    except queue.Empty:
      event = None
    if event == _RAISED or not state.pending or state.delivered:
      lost_since, awaiting_handler = None, False
      continue
    if awaiting_handler:
      continue
    if event == _DROPPED:
      time.sleep(_POLL_S)   # out of the garbage collector (or __del__) first
    elif _main_handles_interrupt():
      lost_since = None
      continue
    elif lost_since is None:
      lost_since = time.monotonic()
      continue
    elif time.monotonic() - lost_since < REDELIVER_AFTER_S:
      continue
    if not state.delivered:
      lost_since, awaiting_handler = None, True
      signal.pthread_kill(state.main_ident, signal.SIGINT)


def _interrupt_again(unraisable, previous_hook=None) -> None:
  """``sys.unraisablehook``: a ``KeyboardInterrupt`` raised where Python can only print and drop
  it (a garbage-collector callback such as JAX's ``_xla_gc_callback``, a ``__del__``, a weakref
  callback) is not printed but noted as pending, and the helper thread sends SIGINT again a
  moment later (sent from here, the handler would run inside this hook, where the exception is
  dropped again). Anything else goes to ``previous_hook``."""
  if issubclass(unraisable.exc_type, KeyboardInterrupt):
    STATE.pending = True
    STATE.events.put(_DROPPED)
    return
  (previous_hook or sys.__unraisablehook__)(unraisable)


def redeliver_lost_interrupts() -> None:
  """Installs ``_interrupt_again`` as ``sys.unraisablehook`` (once). Without it a Ctrl-C that
  arrives while the garbage collector runs a callback is printed as "Exception ignored" and the
  run goes on to the end as if never interrupted."""
  hook = sys.unraisablehook
  if getattr(hook, '_pixelreg_redeliver', False):
    return
  def redeliver(unraisable):
    _interrupt_again(unraisable, hook)
  redeliver._pixelreg_redeliver = True  # pylint: disable=protected-access
  sys.unraisablehook = redeliver


def catch_interrupts() -> None:
  """Ctrl-C as ``run`` promises it: its own SIGINT handler (also where SIGINT was ignored at
  start), the unraisable hook and the helper thread (started once; idle until a Ctrl-C)."""
  redeliver_lost_interrupts()
  if threading.current_thread() is not threading.main_thread():
    return   # signal handlers can only be set from the main thread
  STATE.pending = STATE.delivered = False
  STATE.main_ident = threading.main_thread().ident
  signal.signal(signal.SIGINT, _on_sigint)
  if STATE.watcher is None:
    STATE.watcher = threading.Thread(target=_watch, name='pixelreg-interrupts', daemon=True)
    STATE.watcher.start()


def exit_at_once(status: int) -> None:
  """Flushes the standard streams and the logging handlers, then ends the process with
  ``status`` without the interpreter's teardown.

  Used after Ctrl-C, once every ``with``/``finally`` of the run (checkpoint writes, the workdir
  lock) has completed: a ``KeyboardInterrupt`` raised inside JAX's lowering of a computation
  leaves XLA/MLIR objects that crash the teardown (SIGSEGV, exit -11) after the one-line error.
  """
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  std_logging.shutdown()
  os._exit(status)  # pylint: disable=protected-access
