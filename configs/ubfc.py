"""Meta-rPPG on UBFC-rPPG (DATASET_2: 42 subjects, ~1 min videos at 30 fps, finger PPG).

Build the dataset once from your download (the videos are not redistributable):

  python -m metarppg_jax.data.build --dataset ubfc_rppg --manual_dir DOWNLOAD --data_dir DATA

then train and evaluate (subject-disjoint 60/20/20 train/validation/test splits of the builder):

  python -m metarppg_jax.main --config configs/ubfc.py --workdir WORKDIR \\
      --config.data.data_dir=DATA

The sound defaults of configs/default.py otherwise; HR over 10 s windows every 2 s of the
28 s that follow each video's 2 s adaptation window (eval.queries = 14).
"""

from metarppg_jax import configuration


def get_config():
  return configuration.based_on(__file__, {
      "data.dataset": "ubfc_rppg",
      "data.builder_config": "",
      "optim.num_epochs": 10,
      "optim.steps_per_epoch": 200,
      "eval.queries": 14,
      "eval.hr_window_s": 10.0,
      "eval.hr_stride_s": 2.0,
      "checkpoint.every_steps": 200,
      "log_every_steps": 20,
  })
