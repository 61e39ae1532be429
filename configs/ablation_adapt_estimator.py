"""Ablation (the paper's Table 3): adaptation position: the estimator (phi) is adapted during meta-
training instead of the extractor.

Everything else as configs/default.py. `experiments/ablation.py` applies `OVERRIDES` to any base
config (another dataset) and tabulates all ablations.
"""

from metarppg_jax import configuration

OVERRIDES = {"meta.adapt_position": "estimator"}


def get_config():
  return configuration.based_on(__file__, OVERRIDES)
