"""Robustness evaluation of a trained run directory (docs/evaluation.md; docs/method.md §7-8).

  settings        the evaluation settings: one ConfigDict (``evaluation_config``, ``validate``)
  context         ``Context`` (what every evaluator gets) and the generic ``sweep`` over batches and seeds
  registry        ``EVALUATORS`` by name and result ``KINDS`` by kind (summary, pooling, aggregate)
  curves          kind 'curve': the paper's level sweeps (gaussian, uniform, salt_pepper, fgsm), PGD
  boundary        kind 'boundary': the Boundary attack's score
  corruptions     kind 'corruptions': CIFAR-10-C / MNIST-C accuracy per severity
  masking_checks  kind 'gradient_masking_checks': derived from the PGD curves
  workdirs        which run directories can be evaluated (one model, not being trained, finished; the source)
  store           robustness.json: writable, merged per evaluator, under a lock
  run             ``evaluate_run`` (→ the record, robustness.json) and ``summary`` (its one line)

Every result is ``record['results'][name] = {'kind': …, …}``; generic code loops over the results
and dispatches on the kind. Add an evaluator: a function ``fn(ctx, record, name)`` decorated with
``@registry.evaluator('<name>')`` in the module of its kind (usually ``sweep`` with a per-batch
``correct_fn``); a new kind also registers a ``registry.Kind``. All seeds see the same draws (each
evaluator's key is ``ctx.key_for(name)``), so models are compared on identical perturbations.
"""
# The kinds' modules register their evaluators and kinds when imported.
from pixelreg_jax.evaluation import (  # noqa: F401
    boundary,
    corruptions,
    curves,
    hopskipjump,
    masking_checks,
    smoothing,
    square,
    store,
    workdirs,
)
from pixelreg_jax.evaluation.context import Context, sweep, test_set_bounds
from pixelreg_jax.evaluation.registry import EVALUATORS, KINDS, Kind, Model, evaluator, names
from pixelreg_jax.evaluation.run import FORMAT, evaluate_run, summary
from pixelreg_jax.evaluation.settings import evaluation_config, validate

__all__ = ['Context', 'EVALUATORS', 'FORMAT', 'KINDS', 'Kind', 'Model', 'evaluate_run', 'evaluation_config',
           'evaluator', 'names', 'store', 'summary', 'sweep', 'test_set_bounds', 'validate', 'workdirs']
