"""Ablation (the paper's Table 3): the end-to-end baseline: the same networks trained by plain
supervised learning on every window, no adaptation at test time.

Everything else as configs/default.py. `experiments/ablation.py` applies `OVERRIDES` to any base
config (another dataset) and tabulates all ablations.
"""

import importlib.util
import os

OVERRIDES = {"meta.meta_learning": False}


def _default_config():
  # Config files are loaded by path (ml_collections style), not imported as a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  spec = importlib.util.spec_from_file_location("metarppg_default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _default_config()
  for name, value in OVERRIDES.items():
    group, field = name.split(".")
    config[group][field] = value
  return config
