"""The original release's behaviour, quirks included (the parity and reproduction config).

Everything MODEL_SPEC describes as "the original": the clamped ordinal head, the effective
normalisation, the supervised theta step in the adaptation phase, the LSTM state carried through
every estimator call, the transductive test inside each outer iteration (it moves psi's batch
statistics), psi run by the prototype update, (h, c) used as stored (so queries = tasks), no
masking of flat-PPG windows, the original's HR estimator and 3 tasks x 60 frames.
"""

import importlib.util
import os


def _default_config():
  # Loaded by path: ml_collections config files are loaded by path, not as a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  spec = importlib.util.spec_from_file_location("metarppg_default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _default_config()
  config.model.ordinal_head = "reference"
  config.meta.adapt_position = "extractor"
  config.meta.fewshots = 1
  config.meta.inner_mode = "joint"
  config.meta.synthetic_gradient = True
  config.meta.prototype = True
  config.meta.meta_learning = True
  config.meta.supervised_adapt_step = True
  config.meta.carry_lstm_state = True
  config.meta.test_in_step = True
  config.meta.psi_in_prototype_update = True
  config.meta.mask_invalid_windows = False
  config.meta.lstm_state_rule = "given"
  config.meta.proto_momentum = 0.8
  config.optim.lr = 1e-3
  config.optim.adapt_lr = 1e-5
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.cosine_t_max = 5
  config.optim.cosine_floor = 0.1
  config.data.normalization = "reference"
  config.data.tasks_per_batch = 3
  config.data.window = 60
  config.eval.hr_estimator = "reference"
  config.eval.queries = 3
  return config
