"""Ablation (the paper's Table 3): no synthetic gradient: the transductive adaptation uses the
prototype loss alone (psi is neither trained nor used).

Everything else as configs/default.py. `experiments/ablation.py` applies `OVERRIDES` to any base
config (another dataset) and tabulates all ablations.
"""

from metarppg_jax import configuration

OVERRIDES = {"meta.synthetic_gradient": False}


def get_config():
  return configuration.based_on(__file__, OVERRIDES)
