"""Ablation (the paper's Table 3): adaptation position: both the extractor and the estimator are
adapted during meta-training.

Everything else as configs/default.py. `experiments/ablation.py` applies `OVERRIDES` to any base
config (another dataset) and tabulates all ablations.
"""

from metarppg_jax import configuration

OVERRIDES = {"meta.adapt_position": "both"}


def get_config():
  return configuration.based_on(__file__, OVERRIDES)
