"""The train step and loop: compile-once, exact CE gradient at α=0, learning, regularizing."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_host_data, tiny_config
from pixelreg_jax import config as config_lib
from pixelreg_jax import errors, models, population, progress, rundir, similarity, train
from pixelreg_jax import input_pipeline as pipe
from pixelreg_jax import trainer as trainer_lib
from pixelreg_jax.trainer import create_trainer, train_loop


def _batch(host, config, n_pairs=4, seed=0):
  spec = train.pipeline_spec(config)
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(host['train_x']), config.batch_size, replace=False)
  rows, cols = rng.choice(24, n_pairs, replace=False), rng.choice(24, n_pairs, replace=False) + 24
  s = similarity.threshold_targets(similarity.pixel_similarity(
      pipe.model_input(jnp.asarray(host['train_x'][:48]), None, 1)), config.reg.threshold)
  return {'image': pipe.network_input(jnp.asarray(host['train_x'][idx]), spec),
          'label': jnp.asarray(host['train_y'][idx]),
          'reg_a': pipe.network_input(jnp.asarray(host['train_x'][rows]), spec),
          'reg_b': pipe.network_input(jnp.asarray(host['train_x'][cols]), spec),
          'target': s[rows, cols]}


def _state(config, steps_per_epoch=10):
  model, tx = train.create_model(config), train.create_optimizer(config, steps_per_epoch)
  init = jax.jit(lambda key: train.create_train_state(key, config, model, tx))   # one program, not op by op
  return init(jax.random.PRNGKey(0)), model


def test_alpha_zero_is_exactly_the_cross_entropy_gradient(host_data):
  config = tiny_config(**{'reg.alpha': 0.0})
  state, model = _state(config)
  batch = _batch(host_data, config)

  def ce(params):   # An independent CE: log-softmax picked at the label.
    (logits, _), _ = model.apply({'params': params, 'batch_stats': state.batch_stats,
                                  'sim_stats': state.sim_stats}, batch['image'], train=True,
                                 mutable=['batch_stats'])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(logp[jnp.arange(len(batch['label'])), batch['label']])

  g = jax.jit(jax.grad(ce))(state.params)
  new, metrics = jax.jit(lambda s, b: train.train_step(s, b, alpha=0.0))(state, batch)
  assert 'sim_loss' not in metrics
  assert float(metrics['loss']) == pytest.approx(float(jax.jit(ce)(state.params)), rel=1e-5)
  # First SGD-momentum step: Δθ = −lr·g, lr = 0.1.
  chex.assert_trees_all_close(jax.tree.map(jnp.subtract, new.params, state.params), jax.tree.map(lambda x: -0.1 * x, g),
                              rtol=1e-4, atol=1e-7)
  # The layer weights get no gradient without the regularizer; the running means stay 0.
  np.testing.assert_array_equal(np.asarray(new.params['layer_weights']), 0)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(new.sim_stats))


def test_regularized_step_is_ce_plus_alpha_times_similarity_loss(host_data):
  config = tiny_config(**{'reg.alpha': 3.0})
  state, model = _state(config)
  batch = _batch(host_data, config)
  _, m = jax.jit(lambda s, b: train.train_step(s, b, alpha=3.0))(state, batch)
  assert float(m['loss']) == pytest.approx(float(m['ce_loss']) + 3.0 * float(m['sim_loss']), rel=1e-5)


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(host_data):
  config = tiny_config(**{'reg.alpha': 1.0, 'reg.threshold': 0.8})
  state, _ = _state(config)
  batch = _batch(host_data, config)
  step = jax.jit(lambda s, b: train.train_step(s, b, alpha=1.0))
  losses, ces = [], []
  for _ in range(8):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
    ces.append(float(m['ce_loss']))
  assert losses[-1] < 0.7 * losses[0], losses
  assert ces[-1] < 0.7 * ces[0], ces


def test_regularized_steps_move_model_similarities_toward_targets(host_data):
  config = tiny_config(**{'reg.alpha': 10.0, 'optim.learning_rate': 0.02})
  state, model = _state(config)
  batch = _batch(host_data, config, n_pairs=8)

  def model_sim(st):
    (s, _), _ = model.apply(st.variables(), batch['reg_a'], batch['reg_b'], train=True,
                            method=models.ResNet.similarity, mutable=['batch_stats', 'sim_stats'])
    return s

  s0 = model_sim(state)
  step = jax.jit(lambda s, b: train.train_step(s, b, alpha=10.0))
  for _ in range(15):   # 28×28 inputs (the release's size) move a little slower than 32×32 did in 10
    state, _ = step(state, batch)
  s1 = model_sim(state)
  t = batch['target']
  assert float(similarity.similarity_loss(s1, t)) < 0.85 * float(similarity.similarity_loss(s0, t))
  assert float(jnp.mean(jnp.abs(s1 - t))) < float(jnp.mean(jnp.abs(s0 - t)))
  # Most pairs moved in the direction of their target.
  assert float(jnp.mean(jnp.sign(s1 - s0) == jnp.sign(t - s0))) >= 0.75
  # The running means moved off zero and the layer weights were trained.
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(state.sim_stats))
  assert np.any(np.asarray(state.params['layer_weights']) != 0)


def test_train_step_compiles_once_and_fit_writes_metrics(tmp_path, host_data):
  config = tiny_config()
  trainer = create_trainer(config, host_data)
  fit = train_loop(trainer, str(tmp_path), log=lambda s: None)
  result = fit.result
  assert trainer._step_jit._cache_size() == 1
  assert trainer._epoch_order_jit._cache_size() == 1
  assert 0 <= result['test_accuracy'] <= 1 and np.isfinite(result['test_loss'])
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [l['epoch'] for l in lines if 'epoch' in l] == [1, 2]
  assert lines[-1]['final'] and lines[-1]['test_accuracy'] == result['test_accuracy']
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['0', '1']


def test_training_learns_synthetic_classes(tmp_path):
  host = synthetic_host_data(n_train=320, n_test=100)
  config = tiny_config(**{'num_epochs': 3, 'reg.alpha': 0.5, 'reg.threshold': 0.8, 'batch_size': 16,
                          'optim.learning_rate': 0.05})
  result = train_loop(create_trainer(config, host), log=lambda s: None).result
  assert result['test_accuracy'] > 0.6   # Ten classes: chance is 0.1.


def test_learning_rate_schedule():
  c = tiny_config()
  sched = train.learning_rate_schedule(c, steps_per_epoch=10)
  lrs = [float(sched(e * 10 + 3)) for e in range(42)]
  expected = [0.1 * 0.3 ** ((e % 20) // 4) for e in range(42)]
  np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_split_indices_disjoint_deterministic_and_subset():
  k = jax.random.PRNGKey(3)
  tr, va = population.split_indices(k, 1000, 0.01, 0)
  assert len(va) == 10 and len(tr) == 990 and not set(tr) & set(va)
  tr2, va2 = population.split_indices(k, 1000, 0.01, 0)
  np.testing.assert_array_equal(tr, tr2)
  np.testing.assert_array_equal(va, va2)
  tr3, va3 = population.split_indices(k, 1000, 0.01, 100)
  np.testing.assert_array_equal(va3, va)
  assert len(tr3) == 100 and not set(tr3) & set(va)
  _, va4 = population.split_indices(jax.random.PRNGKey(4), 1000, 0.01, 0)
  assert not np.array_equal(va, va4)


@pytest.mark.parametrize('field,value,match', [
    ('reg.alpha', -1.0, 'reg.alpha'),
    ('reg.threshold', 1.0, 'reg.threshold'),
    ('reg.threshold', -0.1, 'reg.threshold'),
    ('dataset', 'svhn', 'config.dataset'),
    ('dataset', 'imagenet32', 'config.dataset'),
    ('reg.dataset', 'svhn', 'reg.dataset'),
    ('model.name', 'vgg', 'model.name'),
    ('reg.pairs_per_step', 400, 'pairs_per_step'),
    ('model.width', 0, 'model.width'),
    ('batch_size', 0, 'batch_size'),
    ('image_size', 20, 'image_size'),
    ('population', '1:0.5,abc', 'population'),
    ('population', '1:0.5,2:1.5', 'population: Th'),
    ('population', '1:0.5,1:0.5', 'twice'),
    ('population', '4:0.8,4:0.8000001', "share the run directory 'a4_th0.8'"),
    ('reg.name', 'nope', 'reg.name'),
])
def test_invalid_config_values_give_one_line_errors(field, value, match):
  c = tiny_config(**{field: value})
  with pytest.raises(errors.ConfigError, match=match) as e:
    config_lib.validate(c)
  assert '\n' not in str(e.value)


def test_data_dependent_errors_before_compiling(host_data):
  c = tiny_config(**{'reg.num_images': 100})   # Only 64 training images exist.
  with pytest.raises(errors.ConfigError, match='reg.num_images=100 exceeds the 64') as e:
    create_trainer(c, host_data)
  assert '\n' not in str(e.value)
  c = tiny_config(**{'batch_size': 512})
  with pytest.raises(errors.ConfigError, match='batch_size'):
    create_trainer(c, host_data)


def test_resuming_a_workdir_with_a_different_config_is_refused(tmp_path, host_data):
  c = tiny_config(**{'num_epochs': 1})
  train_loop(create_trainer(c, host_data), str(tmp_path), log=lambda s: None).result
  (tmp_path / 'config.json').write_text(c.to_json_best_effort())
  c2 = tiny_config(**{'num_epochs': 1, 'reg.alpha': 2.0})
  with pytest.raises(errors.ConfigError, match='reg.alpha'):
    rundir.check_config(c2, str(tmp_path))
  rundir.check_config(tiny_config(**{'num_epochs': 5}), str(tmp_path))   # More epochs: fine.


def test_without_validation_images_the_last_epoch_is_selected(host_data):
  trainer = create_trainer(tiny_config(val_fraction=0.0), host_data)
  fit = train_loop(trainer, log=lambda s: None)
  result = fit.result
  assert result['best_epoch'] == [2] and 'last epoch' in result['selection']
  # The selected variables are the final ones, not the initial ones.
  chex.assert_trees_all_equal(fit.best.variables, fit.final_state.variables())


def test_a_diverging_run_stops_with_one_line_and_keeps_earlier_checkpoints(tmp_path, host_data, monkeypatch):
  c = tiny_config(num_epochs=1, **{'reg.alpha': 0.0})
  train_loop(create_trainer(c, host_data), str(tmp_path), log=lambda s: None).result   # 1 good epoch
  c2 = tiny_config(num_epochs=2, **{'reg.alpha': 0.0})
  c2.optim.learning_rate = 1e30   # resumed with a learning rate that makes epoch 2 diverge,
  monkeypatch.setattr(rundir, 'check_same_run', lambda *a: None)   # which a resume otherwise refuses
  with pytest.raises(errors.TrainingError, match='diverged.*epoch 2.*last good checkpoint') as e:
    train_loop(create_trainer(c2, host_data), str(tmp_path), log=lambda s: None).result
  assert '\n' not in str(e.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['0']   # nothing of epoch 2 saved


def test_nan_validation_loss_never_counts_as_best():
  best = trainer_lib.BestSoFar({'w': jnp.zeros((2, 3))}, 2)
  improved = best.update({'w': jnp.ones((2, 3))}, np.array([np.nan, 1.0]), 0)
  np.testing.assert_array_equal(improved, [False, True])
  np.testing.assert_array_equal(np.asarray(best.variables['w']), [[0, 0, 0], [1, 1, 1]])
  assert best.epoch.tolist() == [-1, 0]


def test_metrics_jsonl_is_strict_json_without_duplicates_after_resume(tmp_path, host_data):
  train_loop(create_trainer(tiny_config(num_epochs=1), host_data), str(tmp_path), log=lambda s: None).result
  with open(tmp_path / 'metrics.jsonl', 'a') as f:   # a record of an epoch whose checkpoint a kill lost
    f.write(json.dumps({'epoch': 2, 'val_loss': 1.0}) + '\n')
  train_loop(create_trainer(tiny_config(num_epochs=2), host_data), str(tmp_path), log=lambda s: None).result
  text = (tmp_path / 'metrics.jsonl').read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  records = [json.loads(line) for line in text.splitlines()]
  assert [r['epoch'] for r in records if not r.get('final')] == [1, 2]
  assert sum(1 for r in records if r.get('final')) == 1
  assert records[1]['val_loss'] != 1.0


def test_console_line_shows_every_metric():
  line = progress.console_line({'accuracy': 0.5, 'loss': 1.25, 'new_metric': 3.0, 'ce_loss': 1.0})
  assert line == 'loss 1.2500 ce 1.0000 acc 0.5000 new_metric 3.0000'
