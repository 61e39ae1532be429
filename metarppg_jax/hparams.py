"""The method's hyperparameters as one hashable value (a static argument of the jitted steps).

`from_config(config) -> Settings` reads the fields of a config that `configuration.validate`
has checked (`configuration.SCHEMA` holds their types, ranges and defaults); nothing here
re-validates or defaults them. Evaluation choices (`config.method`) are not hyperparameters:
callers pass them to `inference.evaluate_videos` themselves.
"""

import dataclasses

from metarppg_jax import optim


@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.meta` (what is adapted, how, which losses), `config.optim` (rates, SGD, cosine) and
  `config.model.ordinal_head`, flattened."""
  position: str
  fewshots: int
  inner_mode: str
  synthetic_gradient: bool
  prototype: bool
  meta_learning: bool
  supervised_adapt_step: bool
  carry_lstm_state: bool
  test_in_step: bool
  psi_in_prototype_update: bool
  mask_invalid_windows: bool
  lstm_state_rule: str
  proto_momentum: float
  psi_target: str
  inner_rates: str
  head: str
  lr: float
  adapt_lr: float
  rates_lr: float
  momentum: float
  weight_decay: float
  cosine_t_max: int
  cosine_floor: float

  @property
  def adapted_nets(self) -> tuple[str, ...]:
    """The nets the inner loop of training changes: ("theta",), ("phi",) or both."""
    return {"extractor": ("theta",), "estimator": ("phi",), "both": ("theta", "phi")}[
        self.position]

  def sgd(self, lr: float):
    """The torch-style SGD every optimizer of the method uses, at learning rate `lr`."""
    return optim.sgd(lr, self.momentum, self.weight_decay)

  def lr_at(self, base: float, epoch):
    """`base` annealed by the per-epoch cosine at `epoch` (1-based; traced or not)."""
    return optim.cosine_lr(base, epoch, t_max=self.cosine_t_max, floor=self.cosine_floor)


def from_config(config) -> Settings:
  """The Settings of a validated config."""
  meta, opt = config.meta, config.optim
  return Settings(
      position=meta.adapt_position, fewshots=int(meta.fewshots), inner_mode=meta.inner_mode,
      synthetic_gradient=bool(meta.synthetic_gradient), prototype=bool(meta.prototype),
      meta_learning=bool(meta.meta_learning),
      supervised_adapt_step=bool(meta.supervised_adapt_step),
      carry_lstm_state=bool(meta.carry_lstm_state), test_in_step=bool(meta.test_in_step),
      psi_in_prototype_update=bool(meta.psi_in_prototype_update),
      mask_invalid_windows=bool(meta.mask_invalid_windows),
      lstm_state_rule=meta.lstm_state_rule, proto_momentum=float(meta.proto_momentum),
      psi_target=meta.psi_target, inner_rates=meta.inner_rates,
      head=config.model.ordinal_head, lr=float(opt.lr), adapt_lr=float(opt.adapt_lr),
      rates_lr=float(opt.rates_lr),
      momentum=float(opt.momentum), weight_decay=float(opt.weight_decay),
      cosine_t_max=int(opt.cosine_t_max), cosine_floor=float(opt.cosine_floor))
