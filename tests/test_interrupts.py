"""Ctrl-C through ``cli.run``: one line ``error: interrupted (Ctrl-C)``, exit status 130, wherever
the KeyboardInterrupt lands and however the process was started; never lost (a run that goes on
to exit 0 after Ctrl-C), and the run's clean-up still complete.

Each script is a real process that gets a real SIGINT. None depends on how pytest itself was
started: a suite run as a background job (``pytest &`` in a script or CI) has SIGINT ignored, and
its children inherit that; the test that needs it so starts its child with SIGINT ignored itself.
The interrupt Python drops inside a garbage-collector callback is tested in test_cli.py.
"""
import signal
import subprocess
import sys
import textwrap
import time

from conftest import ROOT, run_env

_ONE_LINE = ['error: interrupted (Ctrl-C)']


def _script(tmp_path, text):
  path = tmp_path / 'script.py'
  path.write_text(textwrap.dedent(text))
  return path


def _run(cmd, timeout=60):
  """Runs ``cmd`` to its end: (the finished process, seconds it took)."""
  start = time.monotonic()
  out = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=timeout)
  return out, time.monotonic() - start


def _interrupted(out):
  assert out.returncode == 130, (out.returncode, out.stdout, out.stderr)
  assert 'finished' not in out.stdout and 'Exception ignored' not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines() == _ONE_LINE, out.stderr


_SLEEPS = '''
    import signal, time
    from pixelreg_jax import cli

    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    def main(argv):
      print('SIGINT ignored at start' if ignored else 'SIGINT handled at start', flush=True)
      time.sleep(20)
      print('finished as if never interrupted', flush=True)

    cli.run(main)
'''


def test_ctrl_c_stops_a_run_started_with_sigint_ignored(tmp_path):
  """A background job of a script (``cmd &`` without job control, e.g. a test suite run in the
  background in CI) starts with SIGINT ignored, where Python raises no KeyboardInterrupt: the
  interrupts lost in a suite run so (exit 0 after all epochs, nothing on stderr)."""
  script = _script(tmp_path, _SLEEPS)
  start = time.monotonic()
  # As the shell starts a background job; exec keeps the ignored disposition.
  proc = subprocess.Popen(['sh', '-c', 'trap "" INT; exec "$0" "$@"', sys.executable, str(script)], cwd=ROOT,
                          env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline() == 'SIGINT ignored at start\n'
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
    proc.wait()
  _interrupted(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
  assert time.monotonic() - start < 15


_SWALLOWED = '''
    import signal, time
    from pixelreg_jax import cli

    def main(argv):
      try:
        signal.raise_signal(signal.SIGINT)   # Ctrl-C, while in a library's bare except
        time.sleep(20)
      except:   # as JAX's (pxla._get_layouts_from_executable, lax.broadcast_shapes)
        print('swallowed', flush=True)
      try:
        time.sleep(20)
        print('finished as if never interrupted', flush=True)
      finally:   # the run's clean-up, longer than cli.REDELIVER_AFTER_S: not cut short
        for _ in range(40):
          time.sleep(0.05)
        print('cleanup done', flush=True)

    cli.run(main)
'''


def test_ctrl_c_swallowed_by_a_bare_except_is_delivered_again(tmp_path):
  """A KeyboardInterrupt that lands in a library's bare ``except:`` (JAX has dozens; one in the
  compilation of a first step lost a Ctrl-C while a run was starting) is raised again once the
  main thread is no longer handling it, and the clean-up it then unwinds through is left to
  finish: no second interrupt while an ``except``/``finally`` handles the first."""
  out, seconds = _run([sys.executable, str(_script(tmp_path, _SWALLOWED))])
  _interrupted(out)
  assert out.stdout == 'swallowed\ncleanup done\n'
  assert seconds < 15


_SWALLOWED_AT_THE_END = '''
    import signal
    from pixelreg_jax import cli

    def main(argv):
      try:
        signal.raise_signal(signal.SIGINT)
      except:
        pass
      print('the result', flush=True)

    cli.run(main)
'''


def test_ctrl_c_swallowed_just_before_the_end_still_exits_130(tmp_path):
  """Swallowed too close to the end of the run for it to be raised again: the exit says it."""
  out, _ = _run([sys.executable, str(_script(tmp_path, _SWALLOWED_AT_THE_END))])
  assert out.returncode == 130, (out.returncode, out.stdout, out.stderr)
  assert out.stderr.strip().splitlines() == _ONE_LINE, out.stderr
