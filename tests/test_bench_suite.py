"""The GPU benchmark suite, run end to end at toy sizes on the CPU."""
import json

import pytest

from pixelreg_jax import benchmark, configs


@pytest.mark.slow   # ~60 s on 2 cores; a GPU-only suite: run this before spending device time on it
def test_suite_runs_at_toy_sizes_and_writes_its_tables(tmp_path):
  rows = benchmark.run_suite(configs.load('cifar10_by_imagenet'), str(tmp_path), tiny=True)
  train_rows = [r for r in rows if r['mode'] == 'suite_train']
  assert {(r['num_seeds'], r['dtype'], r['passes']) for r in train_rows} == {
      (1, d, p) for d in ('float32', 'bfloat16') for p in ('fused', 'three')}
  for r in train_rows:
    assert r['ms_per_step'] > 0 and r['images_per_sec'] > 0
    # 40 epochs of CIFAR10's 49 500 images at the toy batch of 16: 3093 steps per epoch.
    assert abs(r['projected_minutes'] - 3093 * 40 * r['ms_per_step'] / 60000) < 0.01
    assert r['gflops_per_step'] > 0
  evals = {r['what']: r for r in rows if r['mode'] == 'suite_eval'}
  assert set(evals) == {'noise sweep', 'transferred FGSM', 'Boundary (release protocol)'}
  assert all(r['seconds'] > 0 and r['seconds_warm'] > 0 for r in evals.values())
  lines = [json.loads(line) for line in (tmp_path / 'suite.jsonl').read_text().splitlines()]
  assert len(lines) == len(rows) and all('device_kind' in line and 'jax' in line for line in lines)
  table = (tmp_path / 'suite.md').read_text()
  assert table.count('| 1 |') >= 4 and 'Boundary' in table
