r"""Trains a pixel-similarity-regularized ResNet.

    python -m pixelreg_jax.main --config=configs/cifar10.py --workdir=runs/cifar10 \
        --config.reg.alpha=4 --config.seed=1

Re-running the same command resumes from the last checkpoint in ``--workdir``. The run ends by
printing one JSON line with test_accuracy, test_loss and workdir. Bad configuration values,
missing data and unreadable checkpoints stop the run with a one-line ``error:`` message
(exit status 2) before anything is compiled.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from pixelreg_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/fashion_mnist.py', 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics); default runs/<config name>.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  import jax  # pylint: disable=import-outside-toplevel
  from pixelreg_jax import parallel, train  # Heavy imports after flag parsing.
  parallel.maybe_initialize_distributed()
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join('runs', os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0])
  with cli.one_line_errors():
    result = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
