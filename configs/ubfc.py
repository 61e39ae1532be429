"""Meta-rPPG on UBFC-rPPG (DATASET_2: 42 subjects, ~1 min videos at 30 fps, finger PPG).

Build the dataset once from your download (the videos are not redistributable):

  python -m metarppg_jax.data.build --dataset ubfc_rppg --manual_dir DOWNLOAD --data_dir DATA

then train and evaluate (subject-disjoint 60/20/20 train/validation/test splits of the builder):

  python -m metarppg_jax.main --config configs/ubfc.py --workdir WORKDIR \\
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
  config.data.dataset = "ubfc_rppg"
  config.data.builder_config = ""
  config.optim.num_epochs = 10
  config.optim.steps_per_epoch = 200
  config.eval.queries = 14
  config.eval.hr_window_s = 10.0
  config.eval.hr_stride_s = 2.0
  config.checkpoint.every_steps = 200
  config.log_every_steps = 20
  return config
