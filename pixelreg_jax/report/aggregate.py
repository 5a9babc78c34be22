"""Pooling the runs of each model and the aggregate (summary.json): one entry per model.

Runs are grouped into models by their labels (default: from the regularization settings); every
seed of every run of a model is one sample, so a model's runs must differ in their seeds alone
(``records.check_poolable``). What a result of each kind pools into, and what its
model entry shows, is the kind's (``evaluation.registry.KINDS``): this module only loops over the
results. The kinds are imported when first needed: they import JAX, which the report's command line
loads only once its inputs were read.
"""
from __future__ import annotations

from typing import Optional, Sequence

from pixelreg_jax.errors import ReportError
from pixelreg_jax.report.records import check_poolable, default_label


def _registry():
  """``pixelreg_jax.evaluation.registry``, with every kind registered."""
  from pixelreg_jax.evaluation import registry  # pylint: disable=import-outside-toplevel
  return registry


def pooled_record(records: Sequence[dict], label: str = 'model') -> dict:
  """One record for the runs of a model: their seeds concatenated in run order.

  Kept: 'clean_accuracy' [K] where every run has it, and the results every run has, each pooled by
  its kind (``Kind.pool``; a derived kind, such as the gradient-masking checks, is computed again
  on the pooled record); 'num_images' is the smallest of the runs' (the one-image tolerance of
  ``attacks.masking``), 'num_classes' shared. K = the model's seeds.

  Raises:
    ReportError: the runs are not one model but for their seeds (``records.check_poolable``), or
      were evaluated differently (levels, PGD settings, Boundary protocol, steps or repeats,
      corruption variant or severities, number of classes, kinds).
  """
  registry = _registry()
  rs = list(records)
  check_poolable(label, rs)
  pooled = {'workdir': [r['workdir'] for r in rs], 'dataset': rs[0].get('dataset'),
            'alpha': registry.one_or_all([r['alpha'] for r in rs]),
            'seeds': [s for r in rs for s in r['seeds']],
            'num_images': min((r['num_images'] for r in rs if r.get('num_images')), default=None),
            'num_classes': registry.agree(label, 'num_classes', [r.get('num_classes', 10) for r in rs])}
  if all('clean_accuracy' in r for r in rs):
    pooled['clean_accuracy'] = [a for r in rs for a in r['clean_accuracy']]
  pooled['results'] = {}
  for name in [n for n in rs[0]['results'] if all(n in r['results'] for r in rs)]:
    results = [r['results'][name] for r in rs]
    registry.agree(label, f'the kind of {name}', [r.get('kind') for r in results])
    kind = registry.kind_of(results[0], f'{rs[0]["workdir"]}: {name}')
    if kind.pool is not None:
      pooled['results'][name] = kind.pool(label, name, results)
  return registry.add_derived(pooled)


def _model(records: Sequence[dict], label: str):
  """The ``registry.Model`` of one model's runs, its entry filled by the kinds' ``aggregate``."""
  registry = _registry()
  p = pooled_record(records, label)
  entry = {'n': len(p['seeds']), 'workdirs': p['workdir'], 'dataset': p['dataset'], 'alpha': p['alpha']}
  if 'clean_accuracy' in p:
    entry['clean_accuracy'] = registry.mean_sem(p['clean_accuracy'])
  checkpoints = [dict(r['checkpoint'], workdir=r['workdir']) for r in records if r.get('checkpoint')]
  if checkpoints:
    entry['checkpoints'] = checkpoints
  model = registry.Model(label, list(records), p, entry)
  for name, result in p['results'].items():
    registry.kind_of(result, name).aggregate(name, model)
  return model


def model_entry(records: Sequence[dict], label: str = 'model') -> dict:
  """The aggregate of one model's runs: see ``aggregate``."""
  return _model(records, label).entry


def baseline_label(groups: dict[str, list[dict]], requested: Optional[str] = None) -> Optional[str]:
  """``requested`` (it must be a model label), else the only model whose runs all have α = 0, else None."""
  if requested is not None:
    if requested not in groups:
      raise ReportError(f'--baseline={requested!r} is not one of the models {list(groups)}')
    return requested
  zero = [label for label, rs in groups.items() if all(not r['alpha'] for r in rs)]
  return zero[0] if len(zero) == 1 else None


def aggregate(records: Sequence[dict], labels: Optional[Sequence[str]] = None,
              baseline: Optional[str] = None) -> dict:
  """One entry per model (runs with equal labels pooled; default labels from the settings).

  Returns {label: {
      'n': seeds, 'workdirs': [...], 'dataset': the dataset, 'alpha': α,
      'clean_accuracy': {'mean', 'sem'}, 'checkpoints': [each run's evaluated checkpoint],
      'attacks': {name: {'levels' [L], 'mean' [L], 'sem' [L], 'settings'? (PGD), 'num_images'?}},
      'boundary': {'protocol', 'steps', 'repeats', 'num_images', 'score': {'mean', 'sem'},
                   'score_per_seed' [K], 'seeds_without_score', 'attacked' (images × repeats × seeds),
                   'no_start', 'not_adversarial', 'successful' (sums), and their '*_per_seed' [K]},
      'corruptions': {'variant', 'num_images', 'severities': {c: [S]},
                      'accuracy': {c: {'mean', 'sem', 'per_severity': {'mean' [S], 'sem' [S]}}},
                      'mean_accuracy': {'mean', 'sem'},
                      'errors': {'baseline', 'compared', 'ce': {c: CE_c}, 'mce', 'relative_ce', 'relative_mce'}},
      'gradient_masking_checks': [{'check', 'passed', 'detail'}] (pooled record),
      'gradient_masking_failed_per_run': {workdir: [failed checks]} (models of several runs),
      'is_baseline': True (the baseline only),
      'whitebox_vs_baseline': {'baseline': label, 'comparison': masking.compare_models(baseline, model)}}}
  Keys are present where the records have the results (each kind's ``aggregate`` and ``compare``
  write theirs). Mean ± SEM are over the model's seeds.
  """
  registry = _registry()
  labels = list(labels) if labels else [default_label(r) for r in records]
  if len(labels) != len(records):
    raise ReportError(f'{len(labels)} labels for {len(records)} workdirs')
  groups: dict[str, list[dict]] = {}
  for label, r in zip(labels, records):
    groups.setdefault(label, []).append(r)
  models = {label: _model(rs, label) for label, rs in groups.items()}
  base = baseline_label(groups, baseline)
  if base is not None:
    models[base].entry['is_baseline'] = True
    for model in models.values():
      for name, result in model.pooled['results'].items():
        kind = registry.kind_of(result, name)
        if kind.compare is not None and name in models[base].pooled['results']:
          kind.compare(name, model, models[base])
  return {label: m.entry for label, m in models.items()}
