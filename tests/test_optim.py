"""optim: PyTorch-style SGD (coupled weight decay, momentum) and the per-epoch cosine rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarppg_jax import optim


def _hand_sgd(w, grads, lrs, momentum=0.9, wd=5e-4):
  """PyTorch's SGD written out: d = g + wd w; buf = d (first) or m buf + d; w -= lr buf."""
  w = np.array(w, np.float64)
  buf = None
  for g, lr in zip(grads, lrs):
    d = g + wd * w
    buf = d.copy() if buf is None else momentum * buf + d
    w = w - lr * buf
  return w


def test_sgd_matches_hand_written_pytorch_form():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3))
  grads = [rng.normal(size=(5, 3)) for _ in range(4)]
  lrs = [1e-3, 1e-3, 5e-4, 2e-3]
  tx = optim.sgd(1e-3, 0.9, 5e-4)
  params = {"w": jnp.asarray(w0, jnp.float32)}
  state = tx.init(params)
  for g, lr in zip(grads, lrs):
    state = optim.set_learning_rate(state, lr)
    params, state = optim.step(tx, {"w": jnp.asarray(g, jnp.float32)}, state, params)
  np.testing.assert_allclose(params["w"], _hand_sgd(w0, grads, lrs), rtol=1e-5, atol=1e-7)


def test_first_step_is_lr_times_decayed_gradient():
  tx = optim.sgd(0.1, 0.9, 0.5)
  params = jnp.array([2.0])
  new, _ = optim.step(tx, jnp.array([1.0]), tx.init(params), params)
  # d = 1 + 0.5 * 2 = 2; buf = d (no 0.9 factor, no dampening); w = 2 - 0.1 * 2
  np.testing.assert_allclose(new, [1.8], rtol=1e-6)


def test_cosine_schedule_closed_form():
  base = 1e-3
  lrs = [float(optim.cosine_lr(base, e, t_max=5, floor=0.1)) for e in range(1, 13)]
  assert lrs[0] == pytest.approx(base)
  assert lrs[5] == pytest.approx(1e-4)             # epoch 6: T_max steps done -> eta_min
  assert lrs[10] == pytest.approx(base)            # periodic: back up after 2 T_max
  assert all(a > b for a, b in zip(lrs[:5], lrs[1:6]))
  assert all(a < b for a, b in zip(lrs[5:10], lrs[6:11]))


def test_matches_torch_sgd_and_cosine_annealing():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(4, 6)).astype(np.float64)
  grads = [rng.normal(size=(4, 6)) for _ in range(14)]
  wt = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.SGD([wt], lr=1e-3, momentum=0.9, weight_decay=5e-4)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4)
  torch_lrs = []
  jax.config.update("jax_enable_x64", True)
  try:
    tx = optim.sgd(1e-3, 0.9, 5e-4)
    params = jnp.asarray(w0)
    state = tx.init(params)

    @jax.jit
    def update(g, state, params, epoch):
      lr = optim.cosine_lr(1e-3, epoch, t_max=5, floor=0.1)
      params, state = optim.step(tx, g, optim.set_learning_rate(state, lr), params)
      return lr, params, state

    for i, g in enumerate(grads):
      epoch = i // 2 + 1  # two steps an epoch, the scheduler stepped after each epoch
      torch_lrs.append(opt.param_groups[0]["lr"])
      opt.zero_grad()
      wt.grad = torch.tensor(g)
      opt.step()
      if i % 2 == 1:
        sched.step()
      lr, params, state = update(jnp.asarray(g), state, params, epoch)
      assert float(lr) == pytest.approx(torch_lrs[-1], rel=1e-12)
    np.testing.assert_allclose(np.asarray(params), wt.detach().numpy(), rtol=1e-12, atol=1e-15)
  finally:
    jax.config.update("jax_enable_x64", False)
  assert min(torch_lrs) == pytest.approx(1e-4) and torch_lrs[-1] > torch_lrs[11]
