r"""Trains a pixel-similarity-regularized ResNet.

    python -m pixelreg_jax.main --config=pixelreg_jax/configs/cifar10.py --workdir=runs/cifar10 \
        --config.reg.alpha=4 --config.seed=1

Without ``--config`` it trains the package's Fashion-MNIST config (``pixelreg_jax/configs/
fashion_mnist.py``, found from this file, so the command works from any directory). Re-running
the same command resumes from the last checkpoint in ``--workdir``. Progress is logged on
stderr; the run ends by printing one JSON line with test_accuracy, test_loss and workdir on
stdout. Bad flags or configuration values, missing data, unreadable checkpoints and a busy
workdir stop the run with a one-line ``error:`` message (exit status 2) before anything is
compiled; Ctrl-C stops it with ``error: interrupted`` (exit status 130).
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from pixelreg_jax import cli, configs
from pixelreg_jax import trainer as trainer_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (default: the package\'s '
                                          'configs/fashion_mnist.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics); default runs/<config name>.')


def default_workdir(config_path: str) -> str:
  """runs/<config file name without .py>, relative to the current directory."""
  return os.path.join('runs', os.path.splitext(os.path.basename(config_path.split(':', 1)[0]))[0])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_value(_CONFIG)
  import jax  # pylint: disable=import-outside-toplevel  # Heavy imports after flag parsing.

  from pixelreg_jax import parallel
  parallel.maybe_initialize_distributed()
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS['config'].config_filename)
  result = trainer_lib.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  sys.argv = configs.with_default(sys.argv, 'fashion_mnist')
  cli.run(main)
