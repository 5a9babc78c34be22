"""Which run directories can be evaluated: checked from their config.json and lock, before anything is loaded.

A run directory holds one model (K seeds of one (α, Th) setting). Refused, each in one line:

  a population's root     ``config.population`` of several settings: its checkpoints hold every
                          setting's members, and evaluating it as one model silently took the first
                          setting's seeds under the label of the unused ``config.reg``; each setting
                          is a run directory of its own (``<root>/a4_th0.8/``, written by training),
                          and the message names them
  a run being trained     its training lock (``rundir.lock``) is held: its newest checkpoint is
                          about to change
  an unfinished run       its checkpoints stop before ``config.num_epochs``, unless asked for
                          (``allow_unfinished``; the record then says so in its checkpoint entry)
  an unfitting source     an FGSM source of another dataset or input shape (image size, channels),
                          or with fewer seeds than ``source_seed_index`` needs

``analysis`` uses ``one_setting`` too.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import ml_collections

from pixelreg_jax import config as config_lib
from pixelreg_jax import rundir
from pixelreg_jax.errors import ConfigError


def one_setting(workdir: str, config: ml_collections.ConfigDict, flag: str = '--workdir') -> tuple[float, float]:
  """The (α, Th) of the one model in ``workdir``: that of ``config.population`` when it lists one
  setting, else ``config.reg``'s.

  Raises:
    ConfigError: ``workdir`` is the root of a population of several settings; the message names
      the settings' run directories.
  """
  settings = config_lib.settings(config)
  if len(settings) == 1:
    return settings[0]
  dirs = [os.path.join(workdir, config_lib.setting_name(a, th)) for a, th in settings]
  missing = [d for d in dirs if not os.path.isfile(os.path.join(d, 'config.json'))]
  later = ' (written when the population\'s training finishes)' if missing else ''
  raise ConfigError(f'{flag}={workdir} is the root of a population of {len(settings)} settings (config.population='
                    f'{config.population!r}), not one model; give each setting\'s run directory instead: '
                    f'{", ".join(dirs)}{later}')


def check_finished(workdir: str, config: ml_collections.ConfigDict, allow_unfinished: bool,
                   log: Callable[[str], None], flag: str = '--workdir') -> Optional[str]:
  """Refuses a run directory being trained, or (unless ``allow_unfinished``) one whose checkpoints
  stop before ``config.num_epochs``; returns None for a finished run, else what is unfinished
  ('1 of 2 epochs'), logged.

  Raises:
    ConfigError: a training process holds the run's lock, or the run is unfinished and not allowed.
  """
  holder = rundir.training_holder(workdir)
  if holder:
    raise ConfigError(f'{flag}={workdir} is being trained ({holder}); evaluate it once its training has finished')
  done = rundir.trained_epochs(workdir)
  if done >= config.num_epochs:
    return None
  unfinished = f'{done} of {config.num_epochs} epochs'
  if not allow_unfinished:
    raise ConfigError(f'{flag}={workdir} is an unfinished run: its checkpoints hold {unfinished} '
                      f'(config.num_epochs={config.num_epochs}); finish its training (run the same training '
                      'command again), or pass --allow_unfinished to evaluate it as it is')
  log(f'{workdir} is an unfinished run ({unfinished}): evaluated as it is, as --allow_unfinished asks')
  return unfinished


def input_shape(config: ml_collections.ConfigDict) -> dict:
  """What a model of ``config`` takes: {'dataset', 'input size', 'channels'}."""
  return {'dataset': config.dataset, 'input size': config_lib.input_size(config), 'channels': config.model.channels}


def check_source(source_workdir: str, source: ml_collections.ConfigDict, run: ml_collections.ConfigDict,
                 source_seed_index: int) -> None:
  """Refuses an FGSM source that cannot take the evaluated run's images: another dataset, input size
  or number of channels (its gradient would be of another input: a shape error deep in the
  program), or fewer seeds than ``source_seed_index`` needs.

  Raises:
    ConfigError: naming what differs.
  """
  theirs, ours = input_shape(source), input_shape(run)
  for what in theirs:
    if theirs[what] != ours[what]:
      raise ConfigError(f'--source_workdir={source_workdir} is a model of {what} {theirs[what]!r}, the evaluated run '
                        f'of {ours[what]!r} (config.dataset, config.image_size, config.model.channels); FGSM '
                        'transfers only from a source that takes the same images')
  if source_seed_index >= source.num_seeds:
    raise ConfigError(f'--eval.source_seed_index={source_seed_index} but the source has {source.num_seeds} seed(s)')
