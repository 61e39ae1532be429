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
  config.data.dataset = "mahnob_hci"
  config.data.builder_config = "cvpr14"
  config.optim.num_epochs = 10
  config.optim.steps_per_epoch = 200
  config.eval.queries = 14
  config.eval.hr_window_s = 10.0
  config.eval.hr_stride_s = 2.0
  config.checkpoint.every_steps = 200
  config.log_every_steps = 20
  return config
