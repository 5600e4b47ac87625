"""Stage II solvers (b) clip search and (d) flat (SPEC §4.3) on tiny random models.

Oracles: ``grid.fake_quantize`` for the STE quantizer's forward; float64 recomputation of
the clip-search objectives; the defining formulas of the weighted loss; the trained
fake-quant block itself for the exported block.

Legend: B states, L length, d hidden, K site inputs, N outputs.
"""

import dataclasses
import json

import pytest
import torch
from hypothesis import given, strategies as st

from fairref.fair import (CalibConfig, FlatCalibration, FlatConfig,
                          fake_quantize_ste, quantize_model, search_act_clip,
                          search_weight_clip)
from fairref.models import random_model
from fairref.quant import QuantLinear, QuantSpec, fake_quantize, hadamard
from fairref.quant.transform import KroneckerTransform
from fairref.quant.smooth import fold_into_norm
from tiny import tiny_config

V = 24
U32 = 2.0 ** -24
W4 = QuantSpec(bits=4)
A4 = QuantSpec(bits=4, granularity="token")
FAST = FlatConfig(epochs=2, batch=2)


def _model(arch: str, seed: int = 0, std: float = 0.3):
    cfg = tiny_config(arch, V, mask=V - 1, eos=V - 2, pad=V - 2, L_max=32)
    return random_model(cfg, seed=seed, std=std).eval()


def _states(B=6, L=8, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def _setup(arch="llada", w=None, config=FAST, mask=None, Y=None, seed=0, rotation="hadamard"):
    """Block 0 of a tiny model ready for solver (d): (model, calibration, run)."""
    model = _model(arch, seed)
    x = _states()
    with torch.no_grad():
        X = model.embed(x)
        Y = model.run_block(0, X, mask) if Y is None else Y
    run = lambda h, m: model.run_block(0, h, m)  # noqa: E731
    cal = FlatCalibration(model.blocks[0], model.linear_groups(), run, X, Y, w, mask, W4, A4,
                          rotation=rotation, config=config)
    return model, cal, run


# --- the STE fake quantizer -------------------------------------------------------------------


@st.composite
def quant_cases(draw):
    """(x, spec, clip) with all-zero rows, a single outlier and exact .5 ties."""
    gran = draw(st.sampled_from(["token", "channel", "group"]))
    N, K = draw(st.integers(1, 6)), draw(st.sampled_from([4, 8, 12]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(N, K, generator=g) * 10.0 ** draw(st.integers(-3, 3))
    if draw(st.booleans()):
        x[0] = 0  # all-zero row: s = 1, q = 0
    if draw(st.booleans()):
        x[-1, -1] = 1e4  # one outlier
    if draw(st.booleans()):  # ties at .5: entries on the half-grid of the row's scale
        x[-1] = torch.tensor([7.0, -3.5, 0.5, 2.5] * (K // 4))
    spec = QuantSpec(bits=draw(st.sampled_from([2, 4, 8])), granularity=gran,
                     group_size=4 if gran == "group" else None,
                     scale_mode=draw(st.sampled_from(["restricted", "full"])))
    clip = torch.sigmoid(torch.randn(N, 1, generator=g) * 3)  # (N, 1)
    if gran == "token":
        clip = clip[0, 0]
    return x, spec, clip


@given(quant_cases())
def test_ste_quantizer_forward_is_the_golden_fake_quantizer_bit_for_bit(case):
    """The training quantizer computes exactly SPEC §1's x̂: training sees the exported model."""
    x, spec, clip = case
    assert torch.equal(fake_quantize_ste(x, spec, clip), fake_quantize(x, spec, clip=clip))


@given(quant_cases())
def test_ste_replaces_only_the_derivative_of_round(case):
    """∂/∂(x, c) of the STE quantizer equals the textbook u + (round(u) − u).detach() form:
    the rounded value still enters the product rule of q·s; only ∂round/∂u becomes 1."""
    x, spec, clip = case

    def detached(x, c):  # the textbook STE: u + (round(u) − u) with the bracket detached
        xg = x.reshape(*x.shape[:-1], -1, spec.group_size) if spec.granularity == "group" else x
        cc = c.unsqueeze(-1) if spec.granularity == "group" else c
        s = cc * xg.abs().amax(-1, keepdim=True) / spec.scale_divisor
        s = torch.where(s == 0, torch.ones_like(s), s)
        u = xg / s
        q = u + (torch.round(u) - u).detach()
        return (torch.clamp(q, spec.qmin, spec.qmax) * s).reshape(x.shape)

    grads = []
    for f in (lambda a, c: fake_quantize_ste(a, spec, c), detached):
        a, c = x.clone().requires_grad_(), clip.clone().requires_grad_()
        (f(a, c) * torch.linspace(-1, 1, x.numel()).reshape(x.shape)).sum().backward()
        grads.append((a.grad, c.grad))
    for g_ste, g_ref in zip(*grads):
        assert torch.allclose(g_ste, g_ref, rtol=8 * U32, atol=0)


# --- (b) clip search --------------------------------------------------------------------------


def test_act_clip_search_takes_the_minimum_and_breaks_ties_upwards():
    assert search_act_clip(lambda c: (c - 0.72) ** 2) == 0.7
    assert search_act_clip(lambda c: 1.0) == 1.0  # all tied: the largest
    assert search_act_clip(lambda c: 0.0 if 0.7 <= c <= 0.9 else 1.0) == 0.9  # tie: the largest


@given(st.integers(0, 2**31 - 1), st.sampled_from(["channel", "group"]))
def test_weight_clip_search_minimizes_each_channels_weighted_output_error(seed, gran):
    """Each chosen c_i minimizes (E H Eᵀ)_ii over the grid (float64 oracle, to rounding), and
    an all-zero channel, tied everywhere, keeps c = 1."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(5, 8, generator=g)
    W[2] = 0
    W[0, 3] = 9.0  # an outlier that rewards clipping
    X = torch.randn(40, 8, generator=g) * torch.rand(8, generator=g) * 3
    H = (X.double().mT @ X.double()) * 2 / 40
    spec = QuantSpec(bits=4, granularity=gran, group_size=4 if gran == "group" else None)
    c = search_weight_clip(W, H, spec)
    assert c.shape == (5, 1) and c[2, 0] == 1.0
    grid = [round(1 - i / 100, 2) for i in range(20)]
    for i in range(5):
        def err(ci):
            e = W[i].double() - fake_quantize(W, spec, clip=ci)[i].double()
            return float(e @ H @ e)
        best = min(err(ci) for ci in grid)
        assert err(float(c[i, 0])) <= best * (1 + 1e-9) + 1e-300


# --- (d) flat ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, inverse, rotation", [
    ("llada", "cayley", "hadamard"), ("dream", "cayley", "hadamard"),
    ("dream", "direct", "random"), ("llada", "cayley", None)])
def test_exported_block_equals_the_trained_fake_quant_block_bit_for_bit(arch, inverse, rotation):
    """Folding ζ into the norm during training makes the training forward the exported one."""
    w = torch.rand(6, 8, generator=torch.Generator().manual_seed(3))
    model, cal, run = _setup(arch, w=w, rotation=rotation,
                             config=dataclasses.replace(FAST, inverse=inverse))
    cal.train()
    with torch.no_grad():
        Y_trained = run(cal.X, None)
    desc = cal.export()
    with torch.no_grad():
        Y_export = run(cal.X, None)
    assert torch.equal(Y_trained, Y_export)
    json.dumps(desc)  # JSON-able as it stands
    block = model.blocks[0]
    for name in (n for g in model.linear_groups() for n in g):
        ql = block.get_submodule(name)
        assert isinstance(ql, QuantLinear) and isinstance(ql.transform, KroneckerTransform)


def test_flat_starts_at_the_site_hadamard_and_its_export_keeps_biases_and_folds_norms():
    """Init: every factor is exactly the §1 Hadamard of its size (so P = R_K); export: Dream's
    q/k/v biases unchanged, the norm weight g ⊘ ζ at q/k/v and gate/up, ζ kept at o and down."""
    model, cal, _ = _setup("dream", config=dataclasses.replace(FAST, epochs=0))
    fp = _model("dream")
    for site in cal.sites:
        P_l, P_r, P_l_it, P_r_it = site.factors()
        assert torch.equal(P_l, hadamard(site.n_l)) and torch.equal(P_r, hadamard(site.n_r))
        assert torch.equal(P_l_it, P_l) and torch.equal(P_r_it, P_r)
    zetas = [s.zeta.detach().clone() for s in cal.sites]
    desc = cal.export()
    block, fblock = model.blocks[0], fp.blocks[0]
    for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.equal(block.get_submodule(n).bias, fblock.get_submodule(n).bias)
    assert [s["zeta_folded_into"] for s in desc["sites"]] == [
        "input_layernorm", None, "post_attention_layernorm", None]
    assert torch.equal(block.input_layernorm.weight,
                       fold_into_norm(fblock.input_layernorm.weight.detach(), zetas[0]))
    assert block.self_attn.q_proj.transform.zeta is None
    assert torch.equal(block.self_attn.o_proj.transform.zeta, zetas[1])
    assert torch.equal(block.mlp.down_proj.transform.zeta, zetas[3])


def test_unit_weights_make_the_batch_loss_the_plain_block_mse():
    """w ≡ 1: Σ w e / (|b| w̄) is the mean over rows of ‖Y − Block_Q(X)‖² (to summation order);
    a general w gives Σ w e / (|b| mean(w)) (float64 oracle)."""
    idx = torch.tensor([4, 1])
    _, cal, run = _setup(w=None)
    with torch.no_grad():
        loss = float(cal.batch_loss(idx))
        e = (cal.Y[idx] - run(cal.X[idx], None)).double().square().sum(-1)  # (b, L)
    assert abs(loss - float(e.mean())) <= 2 * e.numel() * U32 * float(e.mean())
    w = torch.rand(6, 8, generator=torch.Generator().manual_seed(5)).double()
    _, cal, run = _setup(w=w)
    with torch.no_grad():
        loss = float(cal.batch_loss(idx))
        e = (cal.Y[idx] - run(cal.X[idx], None)).double().square().sum(-1)
    expect = float((w[idx] * e).sum() / (e.numel() * w.mean()))
    assert abs(loss - expect) <= 4 * e.numel() * U32 * expect


def _trained_state(**kw):
    model, cal, _ = _setup(**kw)
    cal.train()
    desc = cal.export()
    return [b.clone() for b in model.blocks[0].buffers()], desc


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("c", [1e-3, 0.37, 7.0, 1e4])
def test_constant_weights_train_bit_identically_to_no_weights(c):
    """w = c·1 normalizes to exactly 1.0 (w / w̄ in float64, rounded once), so every step,
    the chosen epoch and the exported weights are those of w ≡ 1, bit for bit."""
    ref, d_ref = _trained_state()
    got, d = _trained_state(w=torch.full((6, 8), c))
    assert _same(ref, got) and d["loss_history"] == d_ref["loss_history"]


def test_weights_scaled_by_a_power_of_two_train_bit_identically():
    w = torch.rand(6, 8, generator=torch.Generator().manual_seed(7))
    ref, _ = _trained_state(w=w)
    got, _ = _trained_state(w=w * 2.0 ** -9)
    assert _same(ref, got)


def test_same_seed_gives_identical_weights():
    a, da = _trained_state(config=dataclasses.replace(FAST, seed=11))
    b, db = _trained_state(config=dataclasses.replace(FAST, seed=11))
    assert _same(a, b) and json.dumps(da) == json.dumps(db)


def test_zero_weight_rows_do_not_influence_the_result():
    """Targets of rows with w = 0 are not data: any finite value there gives the same block."""
    w = torch.rand(6, 8, generator=torch.Generator().manual_seed(8))
    w[:, :3] = 0
    w[2] = 0
    model = _model("llada")
    with torch.no_grad():
        Y = model.run_block(0, model.embed(_states()))
    Y2 = Y.clone()
    Y2[:, :3] = 1e3
    Y2[2] = -7.0
    a, _ = _trained_state(w=w, Y=Y)
    b, _ = _trained_state(w=w, Y=Y2)
    assert _same(a, b)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_flat_lowers_the_weighted_block_loss_below_its_start_and_below_rtn(arch):
    """Training improves on its initialization (rotation + SmoothQuant + clip 0.982) and on
    RTN with the Hadamard rotation, both measured as the weighted L_ℓ of block 0; the
    reported L_ℓ is the best loss seen during training (the export is bit-exact).
    (std 0.1: at 0.3 the tiny random block's attention is saturated and its W4A4 loss jumps
    by ±10% under any small change, which no optimizer can descend.)"""
    x = _states(B=8, L=10)
    w = 0.25 + torch.rand(x.shape, generator=torch.Generator().manual_seed(9))
    rtn = quantize_model(_model(arch, std=0.1), x, weights=w, config=CalibConfig(solver="rtn"))
    model = _model(arch, std=0.1)
    rep = quantize_model(model, x, weights=w,
                         config=CalibConfig(solver="flat", flat=FlatConfig(epochs=10)))
    hist = rep.solver_info["blocks.0"]["loss_history"]
    assert min(hist) < hist[0]
    # the same quantity, Σ w e / Σ w, once with w / w̄ rounded to float32: a relative 2^-23
    assert abs(rep.block_loss[0] - min(hist)) <= 2.0 ** -22 * min(hist)
    assert rep.block_loss[0] < rtn.block_loss[0]


def test_gptq_export_is_gptq_on_the_transformed_inputs():
    """weight_solver='gptq': the q projection's integers are GPTQ of W diag(ζ) P⁻ᵀ against the
    Hessian of its exported input Q_a((x ⊘ ζ) P), at the learned clips (SPEC §4.3a, d)."""
    from fairref.quant import gptq_quantize, hessian
    w = torch.rand(6, 8, generator=torch.Generator().manual_seed(4))
    model, cal, run = _setup("llada", w=w, config=dataclasses.replace(FAST, weight_solver="gptq"))
    cal.train()
    fl = cal.linears["q_proj"]
    seen = {}
    hook = fl.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0].detach()))
    with torch.no_grad():
        run(cal.X, None)
    hook.remove()
    cal.export()
    ql = model.blocks[0].q_proj
    T = ql.transform
    xt = fake_quantize(T.apply(seen["x"]), ql.a_spec)
    W = fl.W * cal.sites[0].zeta.detach()  # ζ folded: the norm divides, the weight multiplies
    res = gptq_quantize(T.apply_weight(W), hessian(xt, w.reshape(-1).double()), W4,
                        clip=torch.sigmoid(fl.eta_w).detach())
    assert torch.equal(ql.q_w, res.q)


def test_flat_settings_are_checked():
    with pytest.raises(ValueError, match="FlatConfig.epochs"):
        FlatConfig(epochs=-1)
    with pytest.raises(ValueError, match="FlatConfig.inverse"):
        FlatConfig(inverse="qr")
    with pytest.raises(ValueError, match="clip_search is for solvers"):
        CalibConfig(solver="flat", clip_search=True)
    with pytest.raises(ValueError, match="w is zero on every row"):
        _setup(w=torch.zeros(6, 8))
    model = _model("llada")
    X = torch.zeros(2, 3, 32)
    with pytest.raises(ValueError, match="symmetric per-token a_spec"):
        FlatCalibration(model.blocks[0], model.linear_groups(), None, X, X, None, None, W4,
                        QuantSpec(bits=4, granularity="tensor"))


def test_a_bf16_block_is_refused_with_the_fix_and_left_untouched():
    model = _model("llada").to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.blocks[0].state_dict().items()}
    X = torch.zeros(2, 3, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="flat solver trains float32 blocks; this block "
                                         "holds bfloat16 weights: load the model in float32"):
        FlatCalibration(model.blocks[0], model.linear_groups(), None, X, X, None, None, W4, A4)
    after = model.blocks[0].state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, QuantLinear) for m in model.blocks[0].modules())
