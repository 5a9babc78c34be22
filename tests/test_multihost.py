"""Two processes on loopback (jax.distributed, gloo) train one model together through the CLI."""
import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, cli_overrides, run_env, write_imported_dataset


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _cmd(workdir, data_dir):
  return [sys.executable, '-m', 'pixelreg_jax.main', '--config=configs/fashion_mnist.py', f'--workdir={workdir}'] + \
      cli_overrides(data_dir, num_epochs=2, batch_size=48, **{'reg.alpha': 1.0, 'reg.threshold': 0.8,
                                                              'optim.learning_rate': 0.02})


@pytest.mark.slow  # ~70 s on 2 cores; the 8-device mesh test in test_parallel.py covers the sharded step
def test_two_processes_train_like_one(tmp_path):
  data_dir = tmp_path / 'data'
  write_imported_dataset(data_dir, n_train=160, n_test=48)
  port = _free_port()
  procs = []
  for pid in range(2):
    env = run_env()
    env.update(XLA_FLAGS=env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2',
               JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(_cmd(tmp_path / 'multi', data_dir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # Process 0 reports; process 1 stays quiet.
  result = json.loads(outs[0][0].strip().splitlines()[-1])
  assert [l for l in outs[1][0].splitlines() if not l.startswith('[Gloo]')] == []   # (gloo's own chatter)
  metrics = [json.loads(l) for l in open(tmp_path / 'multi' / 'metrics.jsonl')]
  assert [m.get('epoch') for m in metrics] == [1, 2, None]          # written once, not twice
  assert sorted(p.name for p in (tmp_path / 'multi' / 'checkpoints').iterdir() if p.name.isdigit()) == ['0', '1']

  env = run_env()
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
  single = subprocess.run(_cmd(tmp_path / 'single', data_dir), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  ref = json.loads(single.stdout.strip().splitlines()[-1])
  # 2 processes × 2 devices = the same 4-device program, so the same numbers up to reduction
  # order (6 steps: this loss amplifies float reordering over many steps).
  assert result['test_loss'] == pytest.approx(ref['test_loss'], rel=1e-3)
  assert abs(result['test_accuracy'] - ref['test_accuracy']) <= 1 / 48 + 1e-9


_WAIT_JOINED = textwrap.dedent('''
    import time
    from pixelreg_jax import parallel
    assert parallel.maybe_initialize_distributed()
    print('joined', flush=True)
    time.sleep(60)
    print('slept through', flush=True)
''')


def test_sigterm_ends_a_process_of_a_multi_process_run(tmp_path):
  """jax.distributed's preemption service would catch SIGTERM and let the process sleep through
  it (exit 0 after the sleep); with it off (parallel.maybe_initialize_distributed), SIGTERM ends
  the process at once, as in a single-process run."""
  script = tmp_path / 'joined.py'
  script.write_text(_WAIT_JOINED)
  port = _free_port()
  procs = []
  for pid in range(2):
    env = run_env()
    env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True))
  try:
    for p in procs:
      assert p.stdout.readline().strip() == 'joined'
    start = time.time()
    procs[1].send_signal(signal.SIGTERM)
    out, _ = procs[1].communicate(timeout=30)
    assert procs[1].returncode == -signal.SIGTERM and 'slept through' not in out
    assert time.time() - start < 20
  finally:
    for p in procs:
      p.kill()
      p.wait()
