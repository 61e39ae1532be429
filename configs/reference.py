"""The original release's behaviour, quirks included (the parity and reproduction config).

Everything the original release does, as it does it: the clamped ordinal head, the effective
normalisation, the supervised theta step in the adaptation phase, the LSTM state carried through
every estimator call, the transductive test inside each outer iteration (it moves psi's batch
statistics), psi run by the prototype update, (h, c) used as stored (so queries = tasks), no
masking of flat-PPG windows, the original's HR estimator and 3 tasks x 60 frames.
"""

from metarppg_jax import configuration


def get_config():
  return configuration.based_on(__file__, {
      "model.ordinal_head": "reference",
      "meta.adapt_position": "extractor",
      "meta.fewshots": 1,
      "meta.inner_mode": "joint",
      "meta.synthetic_gradient": True,
      "meta.prototype": True,
      "meta.meta_learning": True,
      "meta.supervised_adapt_step": True,
      "meta.carry_lstm_state": True,
      "meta.test_in_step": True,
      "meta.psi_in_prototype_update": True,
      "meta.mask_invalid_windows": False,
      "meta.lstm_state_rule": "given",
      "meta.proto_momentum": 0.8,
      "meta.psi_target": "learning",
      "optim.lr": 1e-3,
      "optim.adapt_lr": 1e-5,
      "optim.momentum": 0.9,
      "optim.weight_decay": 5e-4,
      "optim.cosine_t_max": 5,
      "optim.cosine_floor": 0.1,
      "data.normalization": "reference",
      "data.speed_min": 1.0,            # no time-stretch augmentation
      "data.speed_max": 1.0,
      "data.tasks_per_batch": 3,
      "eval.hr_estimator": "reference",
      "eval.queries": 3,
  })
