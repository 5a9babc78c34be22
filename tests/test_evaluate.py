"""The evaluation of a run directory: every evaluator of the registry, on a tiny trained run."""
import json

import numpy as np
import pytest

from conftest import synthetic_host_data, tiny_config
from pixelreg_jax import attacks, errors, evaluate
from pixelreg_jax.attacks import whitebox
from pixelreg_jax.trainer import create_trainer, train_loop


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp('run')
  host = synthetic_host_data(n_train=96, n_test=40)
  config = tiny_config(num_epochs=1, num_seeds=2)
  (wd / 'config.json').write_text(config.to_json_best_effort())
  result = train_loop(create_trainer(config, host), str(wd), log=lambda s: None).result
  return wd, host, result


def test_every_evaluator_records_every_seed(trained, monkeypatch):
  wd, host, result = trained
  monkeypatch.setattr(evaluate.data_lib, 'load_split', lambda *a, **k: (host['test_x'], host['test_y']))
  options = evaluate.Options(attacks.BoundaryConfig(steps=3, init_tries=20), boundary_images=6, boundary_repeats=2,
                             boundary_batch=3, pgd_images=12, corruption_images=8,
                             corruptions=('shot_noise', 'stripe'))
  names = ['gaussian', 'salt_pepper', 'fgsm', 'boundary', 'pgd_linf', 'corruptions']
  rec = evaluate.evaluate_run(str(wd), names, source_workdir=str(wd), batch_size=16, options=options,
                              log=lambda s: None)
  assert rec['seeds'] == [0, 1] and rec['checkpoint']['checkpoint_epoch'] == 1
  for name in ('gaussian', 'salt_pepper', 'fgsm', 'pgd_linf'):
    acc = np.asarray(rec['attacks'][name]['accuracy'])
    assert acc.shape == (2, 10) and np.all((acc >= 0) & (acc <= 1))
  # The clean test accuracy that training reported, for each seed; level 0 of every sweep equals it.
  np.testing.assert_allclose(rec['clean_accuracy'], result['test_accuracy_per_member'], atol=1e-6)
  for name in ('gaussian', 'salt_pepper', 'fgsm'):
    np.testing.assert_allclose(np.asarray(rec['attacks'][name]['accuracy'])[:, 0], rec['clean_accuracy'], atol=1e-6)
  assert rec['attacks']['pgd_linf']['settings'] == whitebox.PGD_VARIANTS['pgd_linf'].settings()
  assert rec['attacks']['pgd_linf']['num_images'] == 12
  b = rec['boundary']
  assert b['protocol'] == 'release' and b['num_images'] == 6 and b['repeats'] == 2
  assert len(b['score']) == 2 and len(b['median_per_repeat'][0]) == 2
  for seed in range(2):   # every image is either scored or counted as excluded
    assert [s + n + a for s, n, a in zip(b['successful'][seed], b['no_start'][seed], b['not_adversarial'][seed])] \
        == [6, 6]
  c = rec['corruptions']
  assert c['variant'] == 'mnist_c' and c['num_images'] == 8
  assert set(c['accuracy']) == {'shot_noise', 'stripe'} and c['severities']['stripe'] == [1]
  assert all(np.asarray(a).shape == (2, len(c['severities'][n])) for n, a in c['accuracy'].items())
  assert rec['gradient_masking_checks'] and all({'check', 'passed', 'detail'} <= set(x)
                                                for x in rec['gradient_masking_checks'])
  json.dumps(rec, allow_nan=True)
  s = evaluate.summary(rec)
  assert set(s) >= {'clean_accuracy', 'gaussian_mean_accuracy', 'fgsm_mean_accuracy', 'boundary_score',
                    'pgd_linf_mean_accuracy', 'corruptions_mean_accuracy'}


def test_unknown_attack_is_a_config_error(trained):
  wd, _, _ = trained
  with pytest.raises(errors.ConfigError, match='unknown attack'):
    evaluate.evaluate_run(str(wd), ['gaussian', 'nope'])
