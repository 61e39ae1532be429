"""Ablation (the paper's Table 3): the end-to-end baseline: the same networks trained by plain
supervised learning on every window, no adaptation at test time.

Everything else as configs/default.py. `experiments/ablation.py` applies `OVERRIDES` to any base
config (another dataset) and tabulates all ablations.
"""

from metarppg_jax import configuration

OVERRIDES = {"meta.meta_learning": False}


def get_config():
  return configuration.based_on(__file__, OVERRIDES)
