"""A tiny setting of the default experiment: seconds of data, a few steps (tests, CI,
notebooks' TINY mode). Not a meaningful experiment.

Synthetic `tiny` dataset (3 train, 1 validation, 2 test videos of 7 s), 2 epochs of 2 steps
of one task, 2 query windows a video, HR over 4 s windows every second.
"""

from metarppg_jax import configuration


def get_config():
  return configuration.based_on(__file__, {
      "data.builder_config": "tiny",
      "data.tasks_per_batch": 1,  # one task a step: a CPU step in seconds
      "data.speed_max": 1.1,      # 7 s videos: a task of 3 stretched windows must fit
      "optim.num_epochs": 2,
      "optim.steps_per_epoch": 2,
      "eval.queries": 2,
      "eval.hr_window_s": 4.0,
      "eval.hr_stride_s": 1.0,
      "checkpoint.every_steps": 2,
      "log_every_steps": 1,
  })
