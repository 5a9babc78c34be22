"""The evaluation of a run directory: every evaluator of the registry on a tiny trained run, the
settings ConfigDict and its one-line errors, the one-line summary of a hand-made record."""
import json
import math

import numpy as np
import pytest

from conftest import synthetic_host_data, tiny_config
from pixelreg_jax import config as config_lib
from pixelreg_jax import errors, evaluation, jsonio
from pixelreg_jax.attacks import whitebox
from pixelreg_jax.evaluation import corruptions as corruption_kind
from pixelreg_jax.report import records as report_records
from pixelreg_jax.trainer import create_trainer, train_loop


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp('run')
  host = synthetic_host_data(n_train=96, n_test=40)
  config = tiny_config(num_epochs=1, num_seeds=2)
  (wd / 'config.json').write_text(config.to_json_best_effort())
  result = train_loop(create_trainer(config, host), str(wd), log=lambda s: None).result
  return wd, host, result


SMALL = {'batch_size': 16, 'boundary.steps': 3, 'boundary.init_tries': 20, 'boundary.images': 6,
         'boundary.repeats': 2, 'boundary.batch': 3, 'pgd.images': 12, 'corruptions.images': 8,
         'corruptions.names': 'shot_noise,stripe'}


def test_every_evaluator_records_every_seed(trained, monkeypatch):
  wd, host, result = trained
  monkeypatch.setattr(evaluation.run.data_lib, 'load_split', lambda *a, **k: (host['test_x'], host['test_y']))
  settings = evaluation.evaluation_config(SMALL)
  names = ['gaussian', 'salt_pepper', 'fgsm', 'boundary', 'pgd_linf', 'corruptions']
  rec = evaluation.evaluate_run(str(wd), names, settings, source_workdir=str(wd), log=lambda s: None)
  assert rec['format'] == 2 and rec['seeds'] == [0, 1] and rec['checkpoint']['checkpoint_epoch'] == 1
  assert rec['num_images'] == 40 and rec['settings'] == settings.to_dict() and rec['evaluators'] == names
  results = rec['results']
  assert list(results) == names + ['gradient_masking_checks']
  assert {n: r['kind'] for n, r in results.items()} == {
      'gaussian': 'curve', 'salt_pepper': 'curve', 'fgsm': 'curve', 'pgd_linf': 'curve', 'boundary': 'boundary',
      'corruptions': 'corruptions', 'gradient_masking_checks': 'gradient_masking_checks'}
  for name in ('gaussian', 'salt_pepper', 'fgsm', 'pgd_linf'):
    acc = np.asarray(results[name]['accuracy'])
    assert acc.shape == (2, 10) and np.all((acc >= 0) & (acc <= 1)) and results[name]['seconds'] > 0
  # The clean test accuracy that training reported, for each seed; level 0 of every sweep equals it.
  np.testing.assert_allclose(rec['clean_accuracy'], result['test_accuracy_per_member'], atol=1e-6)
  for name in ('gaussian', 'salt_pepper', 'fgsm'):
    np.testing.assert_allclose(np.asarray(results[name]['accuracy'])[:, 0], rec['clean_accuracy'], atol=1e-6)
  assert results['pgd_linf']['settings'] == whitebox.PGD_VARIANTS['pgd_linf'].settings()
  assert results['pgd_linf']['num_images'] == 12
  b = results['boundary']
  assert b['protocol'] == 'release' and b['num_images'] == 6 and b['repeats'] == 2 and b['steps'] == 3
  assert len(b['score']) == 2 and len(b['median_per_repeat'][0]) == 2
  for seed in range(2):   # every image is either scored or counted as excluded
    assert [s + n + a for s, n, a in zip(b['successful'][seed], b['no_start'][seed], b['not_adversarial'][seed])] \
        == [6, 6]
  c = results['corruptions']
  assert c['variant'] == 'mnist_c' and c['num_images'] == 8
  assert set(c['accuracy']) == {'shot_noise', 'stripe'} and c['severities']['stripe'] == [1]
  assert all(np.asarray(a).shape == (2, len(c['severities'][n])) for n, a in c['accuracy'].items())
  checks = results['gradient_masking_checks']['checks']
  assert checks and all({'check', 'passed', 'detail'} <= set(x) for x in checks)
  json.loads(jsonio.dumps(rec))
  s = evaluation.summary(rec)
  assert set(s) == {'workdir', 'num_images', 'clean_accuracy', 'gaussian_mean_accuracy', 'salt_pepper_mean_accuracy',
                    'fgsm_mean_accuracy', 'boundary_score', 'pgd_linf_mean_accuracy', 'corruptions_mean_accuracy',
                    'gradient_masking_checks_failed'}


def test_unknown_attack_is_a_config_error(trained):
  wd, _, _ = trained
  with pytest.raises(errors.ConfigError, match='unknown attack'):
    evaluation.evaluate_run(str(wd), ['gaussian', 'nope'], evaluation.evaluation_config())


def test_summary_of_a_hand_made_record():
  """Seed means: clean (0.9 + 0.7)/2; gaussian over 2 seeds × 2 levels (0.9 + 0.5 + 0.7 + 0.3)/4 = 0.6;
  Boundary (0.02 + NaN)/2 = NaN, printed as null; corruptions: mean over corruptions of each one's
  mean over seeds and severities, (0.8 + 0.4)/2 = 0.6; the failed checks by name."""
  rec = {'workdir': '/runs/a', 'num_images': 100, 'clean_accuracy': [0.9, 0.7], 'results': {
      'gaussian': {'kind': 'curve', 'levels': [0.0, 0.5], 'accuracy': [[0.9, 0.5], [0.7, 0.3]]},
      'boundary': {'kind': 'boundary', 'score': [0.02, float('nan')]},
      'corruptions': {'kind': 'corruptions', 'accuracy': {'fog': [[0.9, 0.7], [0.8, 0.8]], 'stripe': [[0.4], [0.4]]}},
      'gradient_masking_checks': {'kind': 'gradient_masking_checks', 'checks': [
          {'check': 'a', 'passed': True, 'detail': ''}, {'check': 'b', 'passed': False, 'detail': ''}]}}}
  s = evaluation.summary(rec)
  assert s['clean_accuracy'] == pytest.approx(0.8) and s['gaussian_mean_accuracy'] == pytest.approx(0.6)
  assert math.isnan(s['boundary_score']) and s['corruptions_mean_accuracy'] == pytest.approx(0.6)
  assert s['gradient_masking_checks_failed'] == ['b']
  assert json.loads(jsonio.dumps(s))['boundary_score'] is None


def test_settings_defaults_are_the_release_protocol():
  s = evaluation.evaluation_config()
  assert (s.num_images, s.first_image, s.batch_size, s.seed, s.source_seed_index) == (0, 0, 500, 0, 0)
  assert s.boundary.to_dict() == {'protocol': 'release', 'images': 1000, 'steps': 50, 'repeats': 5, 'batch': 250,
                                  'init_tries': 1000, 'images_per_seed': False}
  assert (s.pgd.images, s.corruptions.images, s.corruptions.names) == (0, 0, '')
  evaluation.validate(s)
  assert evaluation.evaluation_config({'boundary.images': 100}).boundary.images == 100


@pytest.mark.parametrize('overrides,message', [
    ({'num_images': -1}, 'eval.num_images=-1: must be at least 0'),
    ({'batch_size': 0}, 'eval.batch_size=0: must be at least 1'),
    ({'boundary.repeats': 0}, 'eval.boundary.repeats=0: must be at least 1'),
    ({'boundary.protocol': 'weak'}, "eval.boundary.protocol='weak': choose one of ('release', 'strong')"),
    ({'boundary.steps': True}, 'eval.boundary.steps=True: an integer is needed'),
    ({'corruptions.names': 'fog,nope'}, "eval.corruptions.names: unknown corruption(s) ['nope']"),
])
def test_bad_settings_are_one_line_config_errors(overrides, message):
  s = evaluation.evaluation_config()
  for k, v in overrides.items():
    group, _, field = k.rpartition('.')
    (s[group] if group else s)[field] = v
  with pytest.raises(errors.ConfigError) as e:
    evaluation.validate(s)
  assert str(e.value).startswith(message) and '\n' not in str(e.value)


def test_an_unknown_setting_is_refused():
  s = evaluation.evaluation_config()
  s.boundary.imagez = 3
  with pytest.raises(errors.ConfigError, match='eval.boundary.imagez: no such evaluation setting'):
    evaluation.validate(s)


def test_corruptions_the_dataset_family_lacks_are_refused_before_any_data():
  """The CIFAR-10-C parameters have no 'stripe' (an MNIST-C corruption); MNIST-C has every corruption."""
  s = evaluation.evaluation_config({'corruptions.names': 'fog,stripe'})
  cifar = config_lib.base_config()
  cifar.dataset = 'cifar10'
  with pytest.raises(errors.ConfigError, match="eval.corruptions.names: corruption 'stripe' has no cifar10_c"):
    corruption_kind.check(s, cifar)
  corruption_kind.check(s, config_lib.base_config())   # fashion_mnist: MNIST-C


def test_the_report_reads_the_format_evaluate_writes():
  assert report_records.FORMAT == evaluation.FORMAT


def test_boundary_images_per_training_seed_as_the_release(trained, monkeypatch):
  """``boundary.images_per_seed``: seed k attacks its own images, drawn from (eval seed, training
  seed) without replacement, and the record says so; a model's runs evaluated one way and the other
  are not pooled."""
  from pixelreg_jax.evaluation import boundary as boundary_kind
  wd, host, _ = trained
  monkeypatch.setattr(evaluation.run.data_lib, 'load_split', lambda *a, **k: (host['test_x'], host['test_y']))
  picks = []
  real = boundary_kind.boundary_eval
  monkeypatch.setattr(boundary_kind, 'boundary_eval', lambda ctx, images: picks.append(images) or real(ctx, images))
  settings = evaluation.evaluation_config(dict(SMALL, **{'boundary.images_per_seed': True, 'seed': 3}))
  b = evaluation.evaluate_run(str(wd), ['boundary'], settings, log=lambda s: None)['results']['boundary']
  assert b['images'] == 'per_seed' and b['num_images'] == 6 and len(b['score']) == 2
  want = [np.sort(np.random.default_rng([3, k]).choice(40, 6, replace=False)) for k in (0, 1)]
  assert not np.array_equal(want[0], want[1])
  np.testing.assert_array_equal(picks[0], np.stack([host['test_x'][w] for w in want]))
  for seed in range(2):
    assert [s + n + a for s, n, a in zip(b['successful'][seed], b['no_start'][seed], b['not_adversarial'][seed])] \
        == [6, 6]
  shared = dict(b, images='shared')
  with pytest.raises(errors.ReportError, match='differ in the Boundary images'):
    boundary_kind.pool('model', 'boundary', [b, shared])
  assert boundary_kind.pool('model', 'boundary', [b, b])['images'] == 'per_seed'
