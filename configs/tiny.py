"""A tiny setting of the default experiment: seconds of data, a few steps (tests, CI,
notebooks' TINY mode). Not a meaningful experiment.

Synthetic `tiny` dataset (3 train, 1 validation, 2 test videos of 7 s), 2 epochs of 2 steps
of one task, 2 query windows a video, HR over 4 s windows every second.
"""

import importlib.util
import os


def _default_config():
  # Config files are loaded by path (ml_collections style), not imported as a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  spec = importlib.util.spec_from_file_location("metarppg_default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _default_config()
  config.data.builder_config = "tiny"
  config.data.tasks_per_batch = 1          # one task a step: a CPU step in seconds
  config.optim.num_epochs = 2
  config.optim.steps_per_epoch = 2
  config.eval.queries = 2
  config.eval.hr_window_s = 4.0
  config.eval.hr_stride_s = 1.0
  config.checkpoint.every_steps = 2
  config.log_every_steps = 1
  return config
