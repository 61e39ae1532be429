"""Default experiment: Meta-rPPG on the built-in synthetic dataset, sound behaviour.

Trains on the synthetic "source" domain and evaluates on held-out subjects of the "shifted"
domain; 4 epochs x 30 steps: the whole run, data build included, took 311 s (5.2 min) on 2 idle
CPU cores (experiments/results/default/: its metrics and report). Override any field on the
command line, e.g.
`--config.meta.fewshots=2 --config.optim.num_epochs=3`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "train"            # train | evaluate
  config.method = "meta_rppg"      # meta_rppg | no_adaptation | pos | chrom | green | ica
  config.seed = 0
  config.restore_from = ""         # "" (workdir: latest), "best", or a checkpoint path

  # --- model -------------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.ordinal_head = "sound"   # sound (log-sigmoid) | reference (the original's clamp)
  config.model.dtype = "float32"

  # --- meta-learning -----------------------------------------------------------------------
  config.meta = ml_collections.ConfigDict()
  config.meta.adapt_position = "extractor"  # extractor | estimator | both
  config.meta.fewshots = 1                 # synthetic-gradient (and prototype) steps
  config.meta.inner_mode = "joint"         # joint (the original) | per_task (vmapped)
  config.meta.synthetic_gradient = True
  config.meta.prototype = True
  config.meta.meta_learning = True         # False: end-to-end baseline, no adaptation
  config.meta.supervised_adapt_step = False  # the original's undocumented theta step
  config.meta.carry_lstm_state = False     # the original carries (h, c) across calls
  config.meta.proto_momentum = 0.8
  config.meta.test_in_step = False         # the original's transductive test inside each step
  config.meta.psi_in_prototype_update = False  # the original runs psi there (moves its stats)
  config.meta.mask_invalid_windows = True  # flat-PPG windows (valid=False) out of the loss
  config.meta.lstm_state_rule = "mean"     # mean | given: estimator's initial (h, c), inference.py
  # What psi learns to output: "support" the loss gradient at the adaptation window's features
  # before adaptation (where the inner step applies it, in training and at test time);
  # "learning" (the original) the gradient at the learning windows after adaptation.
  config.meta.psi_target = "support"
  # The inner step's rates: "fixed" optim.adapt_lr (the original); "learned" one rate per
  # adapted parameter, meta-learned from the loss after the inner step (Meta-SGD, meta.py).
  config.meta.inner_rates = "fixed"

  # --- optimisation ------------------------------------------------------------------------
  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-3
  config.optim.adapt_lr = 1e-5              # the inner rate (learned rates start here)
  config.optim.rates_lr = 1e-5             # Adam's step size for learned inner rates
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.cosine_t_max = 5
  config.optim.cosine_floor = 0.1
  config.optim.num_epochs = 4
  config.optim.steps_per_epoch = 30        # 120 steps: the run takes ~5 min on 2 idle CPU cores
  config.optim.nonfinite = "stop"          # stop | skip

  # --- data ----------------------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  config.data.dataset = "synthetic_rppg"
  config.data.builder_config = "small"
  config.data.data_dir = ""                # "" -> WORKDIR/data
  config.data.manual_dir = ""
  config.data.stride = 60
  config.data.tasks_per_batch = 3          # N: videos (tasks) per meta-batch
  # pixel: each pixel's relative change over the window (the facial structure cancels; the
  # pulse is what is left); sound: per-window colour normalisation; reference: the original.
  config.data.normalization = "pixel"
  config.data.fps = 30.0
  # Time-stretch augmentation: each training task is read at a speed drawn from
  # [speed_min, speed_max] (its pulse that much faster); 1, 1: as recorded.
  # 0.8-1.3: the source domain's 55-120 bpm also teaches the 45-150 bpm of the shifted one.
  config.data.speed_min = 0.8
  config.data.speed_max = 1.3
  # In-band light fluctuations (augment.illumination) of up to this relative size; 0: off.
  config.data.augment_light = 0.0
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.worker_count = 0
  config.data.cache_mb = 2048.0            # decoded videos kept a reading process (MB)

  # --- evaluation ----------------------------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.hr_window_s = 10.0           # HR per window of this length (30 s: long videos)
  config.eval.hr_stride_s = 2.0            # between HR windows (overlapping when < window)
  config.eval.hr_estimator = "sound"       # sound | reference (the original get_bpm)
  config.eval.queries = 9                  # query windows per video after the support
  config.eval.every_epochs = 1

  # --- devices -------------------------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1                    # devices on the "data" axis; -1 = all
  config.mesh.coordinator_address = ""     # multi-host: host:port of process 0
  config.mesh.num_processes = 1
  config.mesh.process_id = 0

  # --- checkpoints and logging ---------------------------------------------------------------
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 30
  config.checkpoint.max_to_keep = 3
  config.checkpoint.async_save = True
  config.log_every_steps = 10
  return config
