"""Stage II core (SPEC §4.2, §4.3a): sequential, true-sequential, token-weighted quantization.

The oracles here rebuild by hand what one linear must receive (its input on the
quantized path, rotated, activation-quantized; the weighted Hessian) and call the solver
directly, so the plumbing of ``quantize_model`` is checked against the definition.

Legend: B states, L length, d hidden, K inputs of a linear.
"""

import copy

import pytest
import torch

from fairref.fair import CalibConfig, quantize_model
from fairref.models import random_model
from fairref.quant import RotationSpec, fake_quantize, gptq_quantize, hessian, quantize_linears
from tiny import tiny_config

V = 24


def _model(arch: str, seed: int = 0):
    cfg = tiny_config(arch, V, mask=V - 1, eos=V - 2, pad=V - 2, L_max=32)
    return random_model(cfg, seed=seed, std=0.3).eval()


def _states(B=6, L=10, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def _all_linears(model):
    return [f"{i}.{n}" for i in range(len(model.blocks)) for g in model.linear_groups() for n in g]


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_rtn_solver_equals_rtn_quantlinears(arch):
    """solver='rtn' is data-free round-to-nearest: the same model as swapping every linear."""
    m1, m2 = _model(arch), _model(arch)
    cfg = CalibConfig(solver="rtn")
    quantize_model(m1, config=cfg)
    quantize_linears(m2.blocks, _all_linears(m2), cfg.w_spec, cfg.a_spec, rotation_kind="hadamard")
    x = _states()
    assert torch.equal(m1.logits(x), m2.logits(x))


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_first_linear_is_weighted_gptq_on_its_quantized_path_input(arch):
    """Block 0's q projection = GPTQ(W R, H(Q_a(x R), w)) with x its input (SPEC §4.3a)."""
    model, x = _model(arch), _states()
    w = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    block = model.blocks[0]
    name = model.linear_groups()[0][0]
    norm = block.attn_norm if arch == "llada" else block.input_layernorm
    with torch.no_grad():
        xin = norm(model.embed(x))  # (B, L, d): what q_proj reads in block 0
    lin = block.get_submodule(name)
    R = RotationSpec("hadamard", lin.in_features)  # x R, W R as QuantLinear computes them
    cfg = CalibConfig()
    xa = fake_quantize(R.apply(xin.reshape(-1, lin.in_features)), cfg.a_spec)
    expect = gptq_quantize(R.apply_weight(lin.weight.detach()), hessian(xa, w.reshape(-1)),
                           cfg.w_spec)
    quantize_model(model, x, weights=w, config=cfg)
    assert torch.equal(block.get_submodule(name).q_w, expect.q)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_later_groups_see_the_already_quantized_group(arch):
    """True-sequential: the o projection is solved on inputs produced by the *quantized*
    q, k, v (SPEC §4.2). Re-collecting those inputs from the finished model and solving again
    must reproduce its weights, and differs from solving on full-precision inputs."""
    model, x = _model(arch), _states()
    fp = copy.deepcopy(model)
    cfg = CalibConfig()
    quantize_model(model, x, config=cfg)
    oname = model.linear_groups()[1][0]

    def o_input(m):
        seen = {}
        hook = m.blocks[0].get_submodule(oname).register_forward_pre_hook(
            lambda _m, a: seen.setdefault("x", a[0].detach()))
        with torch.no_grad():
            m.run_block(0, m.embed(x))
        hook.remove()
        return seen["x"]

    W = fp.blocks[0].get_submodule(oname).weight.detach()
    R = RotationSpec("hadamard", W.shape[1])

    def solve(xin):
        xa = fake_quantize(R.apply(xin.reshape(-1, W.shape[1])), cfg.a_spec)
        return gptq_quantize(R.apply_weight(W), hessian(xa), cfg.w_spec).q

    q_model = model.blocks[0].get_submodule(oname).q_w
    assert torch.equal(q_model, solve(o_input(model)))
    assert not torch.equal(q_model, solve(o_input(fp)))


def test_unit_weights_are_the_unweighted_method():
    """w ≡ 1 is ordinary layer-wise GPTQ: identical to passing no weights (SPEC §4.2)."""
    m1, m2, x = _model("llada"), _model("llada"), _states()
    quantize_model(m1, x, weights=torch.ones(x.shape))
    quantize_model(m2, x)
    assert torch.equal(m1.logits(x), m2.logits(x))


def test_padded_rows_have_no_influence():
    """Rows with attention_mask False get weight 0, and padded keys are invisible, so what
    sits at padded positions cannot change the quantized model."""
    x = _states(L=12)
    mask = torch.ones(x.shape, dtype=torch.bool)
    mask[:, :3] = False  # left padding
    x2 = x.clone()
    x2[:, :3] = (x2[:, :3] + 5) % V
    m1, m2 = _model("dream"), _model("dream")
    quantize_model(m1, x, attention_mask=mask)
    quantize_model(m2, x2, attention_mask=mask)
    for (n1, b1), (_, b2) in zip(m1.named_buffers(), m2.named_buffers()):
        assert torch.equal(b1, b2), n1


def test_bad_inputs_are_named():
    m, x = _model("llada"), _states()
    with pytest.raises(ValueError, match="states is required"):
        quantize_model(m)
    with pytest.raises(ValueError, match="weights must have the shape"):
        quantize_model(m, x, weights=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        quantize_model(m, x, weights=-torch.ones(x.shape))
    with pytest.raises(ValueError, match="solver"):
        CalibConfig(solver="awq")


# --- solver (b) clip search and solver (d) flat through quantize_model -------------------------

from fairref.fair import FlatConfig, search_weight_clip  # noqa: E402
from fairref.quant import ACT_CLIP_GRID, QuantSpec  # noqa: E402

FLAT_FAST = CalibConfig(solver="flat", flat=FlatConfig(epochs=2, batch=3))


def test_flat_padded_rows_have_no_influence():
    """As for GPTQ: padded rows get weight 0 and are invisible as keys, so what sits there
    cannot change the flat-calibrated model (SmoothQuant's init ignores them too)."""
    x = _states(L=12)
    mask = torch.ones(x.shape, dtype=torch.bool)
    mask[:, :3] = False
    x2 = x.clone()
    x2[:, :3] = (x2[:, :3] + 5) % V
    m1, m2 = _model("dream"), _model("dream")
    r1 = quantize_model(m1, x, attention_mask=mask, config=FLAT_FAST)
    r2 = quantize_model(m2, x2, attention_mask=mask, config=FLAT_FAST)
    for (n1, b1), (_, b2) in zip(m1.named_buffers(), m2.named_buffers()):
        assert torch.equal(b1, b2), n1
    assert r1.solver_info == r2.solver_info


def test_flat_unit_weights_are_the_unweighted_method():
    m1, m2, x = _model("llada"), _model("llada"), _states()
    quantize_model(m1, x, weights=torch.full(x.shape, 3.0), config=FLAT_FAST)
    quantize_model(m2, x, config=FLAT_FAST)
    assert torch.equal(m1.logits(x), m2.logits(x))


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_flat_next_block_reads_the_exported_block(arch):
    """X^{ℓ+1} is the exported block's output: the reported L_ℓ of every block equals the
    weighted MSE between the finished model's hidden states and the teacher's, bit for bit."""
    model, fp, x = _model(arch), _model(arch), _states()
    w = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rep = quantize_model(model, x, weights=w, config=FLAT_FAST)
    with torch.no_grad():
        hq, hf = model.forward_hidden(x), fp.forward_hidden(x)
    for l in range(len(model.blocks)):
        err = (hf[l + 1].float() - hq[l + 1].float()).square().sum(-1)
        assert rep.block_loss[l] == float((w * err).sum() / w.sum())


@pytest.mark.parametrize("solver", ["rtn", "gptq"])
def test_clip_search_picks_optimal_clips_and_the_solver_uses_them(solver):
    """Block 0, group (q, k, v): the recorded activation clip is the grid's minimizer of L_ℓ
    with RTN q/k/v (to rounding: within 1e-6 of the best), the weight clips are the
    per-channel search on the Hessian at that clip, and the integers are RTN / GPTQ at them."""
    model, fp, x = _model("llada"), _model("llada"), _states()
    w = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cfg = CalibConfig(solver=solver, clip_search=True)
    rep = quantize_model(model, x, weights=w, config=cfg)
    info = rep.solver_info["blocks.0.q_proj"]
    c_a = info["act_clip"]
    block = fp.blocks[0]
    with torch.no_grad():
        h = fp.embed(x)
        Y = fp.run_block(0, h)

        def loss(c):
            m = copy.deepcopy(fp)
            a_spec = QuantSpec(bits=4, granularity="token", clip=c)
            quantize_linears(m.blocks[0], ["q_proj", "k_proj", "v_proj"], cfg.w_spec, a_spec,
                             rotation_kind="hadamard")
            err = (Y - m.run_block(0, h)).square().sum(-1)
            return float((w * err).sum() / w.sum())

        losses = {c: loss(c) for c in ACT_CLIP_GRID}
    assert losses[c_a] <= min(losses.values()) * (1 + 1e-6)
    xin = block.attn_norm(h).detach()
    lin = block.q_proj
    R = RotationSpec("hadamard", lin.in_features)  # the calibration's own rotation
    xa = fake_quantize(R.apply(xin.reshape(-1, lin.in_features)),
                       QuantSpec(bits=4, granularity="token", clip=c_a))
    H = hessian(xa, w.reshape(-1))
    c_w = search_weight_clip(R.apply_weight(lin.weight.detach()), H, cfg.w_spec)
    assert info["weight_clip"] == c_w.reshape(-1).tolist()
    if solver == "gptq":
        expect = gptq_quantize(R.apply_weight(lin.weight.detach()), H, cfg.w_spec, clip=c_w).q
    else:
        from fairref.quant import quantize
        expect = quantize(R.apply_weight(lin.weight.detach()), cfg.w_spec, clip=c_w)[0]
    assert torch.equal(model.blocks[0].q_proj.q_w, expect)


def test_clip_search_needs_states():
    with pytest.raises(ValueError, match="states is required for solver='rtn' with clip_search"):
        quantize_model(_model("llada"), config=CalibConfig(solver="rtn", clip_search=True))
    with pytest.raises(ValueError, match="states is required for solver='flat'"):
        quantize_model(_model("llada"), config=FLAT_FAST)
