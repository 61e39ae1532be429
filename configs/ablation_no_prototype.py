"""Ablation (the paper's Table 3): no prototype: adaptation by the synthetic gradient alone (no
prototype loss, no prototype steps at test time).

Everything else as configs/default.py. `experiments/ablation.py` applies `OVERRIDES` to any base
config (another dataset) and tabulates all ablations.
"""

from metarppg_jax import configuration

OVERRIDES = {"meta.prototype": False}


def get_config():
  return configuration.based_on(__file__, OVERRIDES)
