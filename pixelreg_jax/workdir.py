"""The run directory of a training run: checked before use, and held by one run at a time.

    workdir.ensure_directory(path)       # refuse a file, create the directory
    with workdir.lock(path):             # one training run per directory
      ...train...

The lock is ``flock`` on ``<workdir>/.lock``: the kernel releases it when the holding process
ends in any way (exit, exception, SIGKILL, OOM kill), so a killed run never leaves a stale
lock behind, and the next run simply takes it. The file keeps the holder's pid and host for the
message a second run gets. ``flock`` works on local file systems and on NFSv4; on file systems
without it, the lock is refused with a clear message rather than silently not held.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from typing import Iterator

from pixelreg_jax.errors import ConfigError

LOCK_NAME = '.lock'


def ensure_directory(path: str) -> str:
  """Creates ``path`` (and its parents) if needed; returns its absolute path.

  Raises:
    ConfigError: ``path`` is an existing file (or a parent is), or it cannot be created.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--workdir={path} is an existing file, not a directory; choose a directory')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'--workdir={path} cannot be created: {e.strerror}') from e
  return os.path.abspath(path)


def _holder(lock_path: str) -> str:
  try:
    with open(lock_path) as f:
      text = f.read().split()
  except OSError:
    text = []
  return f'pid {text[0]} on {text[1]}' if len(text) >= 2 else 'a process that has not written its pid yet'


@contextlib.contextmanager
def lock(path: str, enabled: bool = True) -> Iterator[None]:
  """Holds an exclusive lock on the run directory ``path`` (which must exist) while inside.

  Args:
    path: the run directory.
    enabled: False makes this a no-op (e.g. on processes other than 0 of a multi-host run,
      which share process 0's directory and lock).

  Raises:
    ConfigError: another process holds the lock (the message names the directory and the
      holder's pid and host), or the file system offers no locks.
  """
  if not enabled:
    yield
    return
  lock_path = os.path.join(path, LOCK_NAME)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise ConfigError(f'--workdir={path} is in use by another run ({_holder(lock_path)}); wait for it '
                            'to finish, or use another --workdir') from None
      raise ConfigError(f'--workdir={path}: cannot lock {lock_path} ({e.strerror}); the file system '
                          'offers no locks') from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)   # Closing releases the lock (so does the process's death).
