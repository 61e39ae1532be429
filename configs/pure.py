"""Meta-rPPG on PURE (10 subjects x 6 head-motion setups, 1 min PNG sequences, finger PPG).

Build the dataset once from your download (the videos are not redistributable):

  python -m metarppg_jax.data.build --dataset pure --manual_dir DOWNLOAD --data_dir DATA

then train and evaluate (subject-disjoint 60/20/20 splits):

  python -m metarppg_jax.main --config configs/pure.py --workdir WORKDIR \\
      --config.data.data_dir=DATA

The sound defaults of configs/default.py otherwise; HR over 10 s windows every 2 s of the
28 s that follow each video's 2 s adaptation window (eval.queries = 14).
"""

from metarppg_jax import configuration


def get_config():
  # The training and HR-window settings of configs/ubfc.py (one-minute videos at 30 fps).
  return configuration.based_on(__file__, {
      "data.dataset": "pure",
      "data.builder_config": "",
  }, base="ubfc.py")
