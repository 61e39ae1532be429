"""Meta-rPPG on MAHNOB-HCI, CVPR'14 protocol (30 s clips, ECG HR, 61 fps resampled to 30).

Build the dataset once from your download (the videos are not redistributable):

  python -m metarppg_jax.data.build --dataset mahnob_hci --manual_dir DOWNLOAD --data_dir DATA

then train and evaluate (subject-disjoint 60/20/20 splits;
HR per video is the protocol's clip-level figure):

  python -m metarppg_jax.main --config configs/mahnob.py --workdir WORKDIR \\
      --config.data.data_dir=DATA

The sound defaults of configs/default.py otherwise; HR over 10 s windows every 2 s of the
28 s that follow each video's 2 s adaptation window (eval.queries = 14).
"""

from metarppg_jax import configuration


def get_config():
  # The training and HR-window settings of configs/ubfc.py (one-minute videos at 30 fps).
  return configuration.based_on(__file__, {
      "data.dataset": "mahnob_hci",
      "data.builder_config": "cvpr14",
  }, base="ubfc.py")
