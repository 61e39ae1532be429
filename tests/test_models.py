"""The three networks: shapes, the original's init, batch-norm semantics, ordinal heads."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarppg_jax import compile_options
from metarppg_jax import models


@pytest.fixture(scope="module")
def net():
  return models.init(jax.random.PRNGKey(0))


def test_shapes_any_size_at_least_32(net):
  params, stats = net
  for h, w in ((64, 64), (32, 48)):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, h, w, 3))
    z, new = models.extract(params["theta"], stats["theta"], x, train=True)
    assert z.shape == (2, 5, 120)
    assert jax.tree.structure(new) == jax.tree.structure(stats["theta"])
  out, (hn, cn) = models.estimate(params["phi"], z, models.zero_lstm_state(2))
  assert out.fc_out.shape == (2, 5, 80) and out.prob.shape == (2, 5, 40)
  assert out.decision.shape == (2, 5) and out.decision.dtype == jnp.int32
  assert hn.shape == cn.shape == (4, 2, 60)
  s, _ = models.synthetic_gradient(params["psi"], stats["psi"], jnp.ones((3, 60, 120)))
  assert s.shape == (3, 60, 120)
  s, _ = models.synthetic_gradient(params["psi"], stats["psi"], jnp.ones((3, 60, 40)))
  assert s.shape == (3, 60, 40)


def test_time_never_mixes_in_the_extractor(net):
  params, stats = net
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 32, 32, 3))
  z, _ = models.extract(params["theta"], stats["theta"], x, train=False)
  z2, _ = models.extract(params["theta"], stats["theta"], x.at[:, 3].set(0.0), train=False)
  np.testing.assert_array_equal(z[:, :3], z2[:, :3])


def test_effective_init(net):
  params, stats = net
  k = np.asarray(params["theta"]["conv2"]["kernel"])
  assert abs(k.std() - 0.02) < 0.002 and abs(k.mean()) < 0.002
  b = np.asarray(params["theta"]["conv2"]["bias"])
  assert np.abs(b).max() <= 1 / np.sqrt(32 * 9)
  assert np.abs(np.asarray(params["phi"]["lstm"]["l1"]["w_hh"])).max() <= 1 / np.sqrt(60)
  # ConvTranspose1d takes its fan-in from the weight's dim 1 (out channels) x kernel.
  assert np.abs(np.asarray(params["psi"]["layer4"]["bias"])).max() <= 1 / np.sqrt(60 * 3)
  assert np.abs(np.asarray(params["psi"]["layer4"]["bias"])).max() > 1 / np.sqrt(40 * 3) * 0.5
  np.testing.assert_array_equal(params["theta"]["bn3"]["scale"], 1.0)
  np.testing.assert_array_equal(stats["psi"]["bn2"]["var"], 1.0)
  assert int(stats["theta"]["bn1"]["count"]) == 0


def test_batch_norm_pytorch_semantics():
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 5, 3)) * 2 + 1
  params = {"scale": jnp.ones(3), "bias": jnp.zeros(3)}
  stats = {"mean": jnp.zeros(3), "var": jnp.ones(3), "count": jnp.zeros((), jnp.int32)}
  y, new = models.batch_norm(params, stats, x, (0, 1), train=True)
  xs = np.asarray(x).reshape(-1, 3)
  np.testing.assert_allclose(new["mean"], 0.1 * xs.mean(0), rtol=1e-5)
  np.testing.assert_allclose(new["var"], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 3),
                             (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5), rtol=1e-4, atol=1e-5)
  assert int(new["count"]) == 1
  y_eval, same = models.batch_norm(params, new, x, (0, 1), train=False)
  assert same is new
  np.testing.assert_allclose(y_eval, (x - new["mean"]) / jnp.sqrt(new["var"] + 1e-5), rtol=1e-5)


def test_ordinal_heads():
  fc = jnp.array([[[-3.0, -1.0, 2.0, 5.0] + [0.0] * 76]])
  prob_ref, dec_ref = models.ordinal_layer(fc, "reference")
  # Both logits negative -> both clamped to 1e-8 -> exactly 0.5.
  assert float(prob_ref[0, 0, 0]) == 0.5
  prob, dec = models.ordinal_layer(fc, "sound")
  np.testing.assert_allclose(prob[0, 0, 0], jax.nn.sigmoid(2.0), rtol=1e-6)
  np.testing.assert_allclose(prob[0, 0, 1], jax.nn.sigmoid(3.0), rtol=1e-6)
  assert int(dec[0, 0]) == int(jnp.sum(prob > 0.5))
  with pytest.raises(ValueError, match="ordinal head"):
    models.ordinal_layer(fc, "other")


def test_lstm_matches_torch(net):
  torch = pytest.importorskip("torch")
  params, _ = net
  lstm = torch.nn.LSTM(120, 60, num_layers=2, batch_first=True, bidirectional=True)
  with torch.no_grad():
    for layer in models.LSTM_LAYERS:
      p = params["phi"]["lstm"][layer]
      sfx = layer[1:]
      getattr(lstm, f"weight_ih_l{sfx}").copy_(torch.from_numpy(np.asarray(p["w_ih"]).T.copy()))
      getattr(lstm, f"weight_hh_l{sfx}").copy_(torch.from_numpy(np.asarray(p["w_hh"]).T.copy()))
      getattr(lstm, f"bias_ih_l{sfx}").copy_(torch.from_numpy(np.asarray(p["b_ih"])))
      getattr(lstm, f"bias_hh_l{sfx}").copy_(torch.from_numpy(np.asarray(p["b_hh"])))
  z = np.random.default_rng(0).normal(size=(3, 7, 120)).astype(np.float32)
  h0 = np.random.default_rng(1).normal(size=(4, 3, 60)).astype(np.float32)
  c0 = np.random.default_rng(2).normal(size=(4, 3, 60)).astype(np.float32)
  out, (h, c) = models.lstm(params["phi"]["lstm"], z, (h0, c0))
  t_out, (t_h, t_c) = lstm(torch.from_numpy(z), (torch.from_numpy(h0), torch.from_numpy(c0)))
  np.testing.assert_allclose(out, t_out.detach().numpy(), atol=2e-6)
  np.testing.assert_allclose(h, t_h.detach().numpy(), atol=2e-6)
  np.testing.assert_allclose(c, t_c.detach().numpy(), atol=2e-6)


def test_psi_transposed_convs_match_torch(net):
  torch = pytest.importorskip("torch")
  from metarppg_jax import original_checkpoint as oc  # pylint: disable=g-import-not-at-top
  params, stats = net
  flat = oc.to_flat(oc.OriginalState(params, stats, np.zeros(120), models.zero_lstm_state(1)))
  x = np.random.default_rng(0).normal(size=(2, 20, 120)).astype(np.float32)
  convt = torch.nn.ConvTranspose1d(20, 40, 3, padding=1)
  with torch.no_grad():
    convt.weight.copy_(torch.from_numpy(flat["Grad/layer3.0.weight"]))
    convt.bias.copy_(torch.from_numpy(flat["Grad/layer3.0.bias"]))
  ours = models._conv1d(params["psi"]["layer3"], jnp.swapaxes(jnp.asarray(x), 1, 2))
  np.testing.assert_allclose(np.swapaxes(np.asarray(ours), 1, 2),
                             convt(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def _plain_first_block(conv, bn, stats, x, train):
  """conv -> batch norm of the full map -> pool: the first block as the other blocks run."""
  y = models._conv3x3_xla(x, conv["kernel"])
  return models.batch_norm(bn, stats, y, (0, 1, 2), train=train, offset=conv["bias"], pool=True)


def test_kernel_gradient_is_the_convolutions_own():
  """The 3x3 convolution's weight gradient as a forward convolution equals XLA's autodiff of
  the plain convolution, input gradient included (a non-square map, several frames)."""
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, (5, 12, 10, 6))
  kernel = 0.3 * jax.random.normal(kk, (3, 3, 6, 4))
  g = jax.random.normal(kg, (5, 12, 10, 4))
  loss = lambda conv: lambda x, k: jnp.sum(conv(x, k) * g)
  got = jax.grad(loss(models._conv3x3), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss(models._conv3x3_xla), argnums=(0, 1))(x, kernel)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def _ynn_convolutions(hlo: str) -> int:
  """How many YNNPACK fusions of a compiled program's text contain a convolution."""
  called = re.findall(r"%ynn_fusion[\w.]* = [^\n]*calls=%([\w.\-]+)", hlo)
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r"\n%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S)}
  return sum(" convolution(" in bodies.get(name, "") for name in called)


def test_compile_options_keep_convolutions_out_of_ynnpack():
  """`compile_options.jit` compiles a convolution outside YNNPACK (to which XLA:CPU hands it,
  single-threaded, by default)."""
  conv = lambda x, k: models._conv3x3_xla(x, k)
  args = (jnp.ones((4, 32, 32, 32)), jnp.ones((3, 3, 32, 48)))  # the extractor's layer 2
  ours = compile_options.jit(conv).lower(*args).compile().as_text()
  plain = jax.jit(conv).lower(*args).compile().as_text()
  assert "convolution(" in ours and _ynn_convolutions(ours) == 0
  if jax.default_backend() == "cpu":
    assert _ynn_convolutions(plain) == 1  # the default the options change


def test_patch_covariance_is_that_of_the_explicit_patches():
  """The 2x2-block Gram of the space-to-depth map, summed over the four pixel phases, is the
  covariance of every pixel's zero-padded 3x3 patch (rows tap, then channel)."""
  x = np.asarray(1.5 + jax.random.normal(jax.random.PRNGKey(7), (3, 6, 8, 3)), np.float64)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = np.stack([xp[:, i:i + 6, j:j + 8] for i in range(3) for j in range(3)], 3)
  want = np.cov(patches.reshape(-1, 27), rowvar=False, bias=True)
  got = models._patch_covariance(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("train", [True, False])
def test_first_block_without_the_full_map_is_the_plain_block(net, train):
  """The pool folded into the convolution and the variance from the input's patch covariance
  give the plain block's outputs, statistics and gradients (an input far from zero mean:
  the covariance is centred)."""
  params, stats = net
  theta, st = params["theta"], stats["theta"]
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(4), (6, 32, 40, 3))
  bn = {"scale": 1.0 + 0.1 * jnp.arange(32.0), "bias": 0.01 * jnp.arange(32.0)}
  got, got_stats = models._first_block(theta["conv1"], bn, st["bn1"], x, train=train)
  want, want_stats = _plain_first_block(theta["conv1"], bn, st["bn1"], x, train)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               got_stats, want_stats)

  def loss(conv, x, folded):
    block = (lambda *a: models._first_block(*a[:4], train=a[4])) if folded else (
        _plain_first_block)
    y, _ = block(conv, bn, st["bn1"], x, train)
    return jnp.sum(jnp.sin(y))

  g_got = jax.grad(loss, argnums=(0, 1))(theta["conv1"], x, True)
  g_want = jax.grad(loss, argnums=(0, 1))(theta["conv1"], x, False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-3 * np.abs(b).max()),
               g_got, g_want)
