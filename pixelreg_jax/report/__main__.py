"""The report's command line: ``python -m pixelreg_jax.report --workdirs=… [--out=…]`` (see ``report``)."""
from __future__ import annotations

import os

from absl import flags

from pixelreg_jax import cli, jsonio, report

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so modules can be imported together)."""
  flags.DEFINE_list('workdirs', None, 'Evaluated run directories.')
  flags.register_validator('workdirs', bool, '--workdirs needs at least one run directory')
  flags.DEFINE_list('labels', None, 'Optional model label per workdir (runs with equal labels are pooled).')
  flags.DEFINE_string('out', None, 'Output directory (default: the first workdir).')
  flags.DEFINE_string('title', None, 'Figure title.')
  flags.DEFINE_string('baseline', None, 'Label of the model the others are compared with (mCE, white-box PGD); '
                      'default: the only model whose runs all have α=0.')
  flags.DEFINE_bool('grid', False, 'Tabulate a hyper-parameter grid (one run per setting, one of them α=0) and '
                    'select a setting: grid.md, grid.json.')
  flags.DEFINE_string('robustness_file', 'robustness.json', 'The evaluation file to read in each workdir.')
  flags.DEFINE_float('max_accuracy_drop', 0.02, 'Grid selection: the largest clean-accuracy loss against α=0.')


def main(argv):
  del argv
  out = FLAGS.out or FLAGS.workdirs[0]
  if FLAGS.grid:
    g = report.write_grid(FLAGS.workdirs, out, FLAGS.robustness_file, FLAGS.max_accuracy_drop)
    print(jsonio.dumps({'out': os.path.abspath(out), 'selected': g['selected']}), flush=True)
    return
  agg = report.write_report(FLAGS.workdirs, out, FLAGS.labels, FLAGS.title, FLAGS.robustness_file, FLAGS.baseline)
  figures = [os.path.join(os.path.abspath(out), name) for name, _ in report.FIGURES]
  print(jsonio.dumps({'out': os.path.abspath(out), 'models': {k: v['n'] for k, v in agg.items()},
                      'plots': [f for f in figures if os.path.isfile(f)]}), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
