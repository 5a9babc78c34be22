r"""Robustness evaluation of a trained run directory: the command line of ``pixelreg_jax.evaluation``.

    python -m pixelreg_jax.evaluate --workdir=runs/reg --source_workdir=runs/source \
        --attacks=gaussian,uniform,salt_pepper,fgsm,boundary,pgd_linf,pgd_l2,corruptions \
        --eval.num_images=2000 --eval.boundary.images=200 --eval.boundary.repeats=2

Restores the best checkpoint of every seed in ``--workdir`` (verified; which checkpoint is
recorded), runs each evaluator named in ``--attacks`` and merges the results into the record
(strict JSON) at ``--output`` (default ``<workdir>/robustness.json``; ``evaluation.store``: the
results of other evaluators of the same checkpoint and settings are kept, under a lock); prints a
one-line JSON summary of the record. A population's root, a run being trained, an unfinished run
(unless ``--allow_unfinished``) and an output that cannot be written are refused before anything
is loaded. Every other
setting is a field of the ``--eval`` ConfigDict (``evaluation.settings.evaluation_config``: image
counts, batch size, seed, the Boundary protocol, …), checked before anything is loaded. The
evaluators, the settings and the record: docs/evaluation.md.
"""
from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from pixelreg_jax import cli, evaluation, jsonio
from pixelreg_jax.evaluation import settings as settings_lib

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_string('workdir', None, 'Run directory to evaluate.', required=True)
  flags.DEFINE_list('attacks', ['gaussian', 'uniform', 'salt_pepper', 'fgsm', 'boundary'],
                    f'Evaluators: {", ".join(evaluation.names())} (default: the release\'s, which runs the '
                    'Boundary attack after training too).')
  flags.DEFINE_string('source_workdir', None, 'Unregularized run whose gradients FGSM transfers.')
  flags.DEFINE_string('output', None, 'Where to write the JSON (default <workdir>/robustness.json); the results of '
                      'other evaluators already there (same checkpoint and settings) are kept.')
  flags.DEFINE_bool('allow_unfinished', False, 'Evaluate a run whose checkpoints stop before config.num_epochs '
                    '(refused otherwise); the record says so.')
  config_flags.DEFINE_config_dict('eval', settings_lib.evaluation_config(),
                                  'Evaluation settings, e.g. --eval.num_images=1000 --eval.boundary.images=100.')


def main(argv):
  del argv
  out = FLAGS.output or evaluation.store.default_output(FLAGS.workdir)
  record = evaluation.evaluate_run(FLAGS.workdir, FLAGS.attacks, FLAGS.eval, FLAGS.source_workdir, output=out,
                                   allow_unfinished=FLAGS.allow_unfinished)
  record = evaluation.store.write(out, record, logging.info)   # merged with the results already there
  print(jsonio.dumps({**evaluation.summary(record), 'output': out}), flush=True)


if __name__ == '__main__':
  problem = settings_lib.argv_problem(sys.argv[1:])
  if problem:
    cli.fail(problem)
  define_flags()
  cli.run(main)
