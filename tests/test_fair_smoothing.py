"""SmoothQuant as a switch of the rtn / gptq block loop (SPEC §4.4).

At every site fed by an RMSNorm (``model.norm_sites()``), ζ = smooth_factors(max_t |X_tj|
over calibration rows of positive weight, the site's stacked weights, α) is folded into
the norm (g ⊘ ζ) and the site's weights (W diag ζ) before they are quantized. The oracles
recompute ζ from the norm's output by hand and compare bit for bit.

Legend: B states, L length, K inputs of a linear.
"""

import pytest
import torch

from fairref.fair import CalibConfig, quantize_model
from fairref.fair.calibrate import smooth_site
from fairref.models import random_model
from fairref.quant.linear import QuantLinear
from fairref.quant.rotation import RotationSpec
from fairref.quant.smooth import fold_into_norm, fold_into_weight, smooth_factors
from tiny import tiny_config

V = 24


def _model(arch: str, seed: int = 0):
    cfg = tiny_config(arch, V, mask=V - 1, eos=V - 2, pad=V - 2, L_max=32)
    return random_model(cfg, seed=seed, std=0.3).eval()


def _states(B=5, L=9, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def _norm_out(model, states):
    """The first site's input by hand: its norm applied to the embedding (block 0)."""
    norm = model.blocks[0].get_submodule(model.norm_sites()[0][0])
    return norm(model.embed(states))  # (B, L, K)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_smoothing_a_site_keeps_the_block_function(arch):
    """x ⊘ ζ · (W diag ζ)ᵀ = x Wᵀ. smooth_site writes exactly fold_into_norm / fold_into_weight
    of its ζ (float32, as stored); with the same ζ folded in float64 instead, the block's
    output moves only by float64 rounding (≤ 1e-9 here; unit roundoff 1.1e-16), while ζ is
    far from 1 — so a fold into the wrong norm or a missing linear would show."""
    model = _model(arch).double()
    h = model.embed(_states())  # (B, L, d) float64
    before = model.run_block(0, h)
    exact = _model(arch).double()
    for norm, group in model.norm_sites():
        seen = {}  # the site's input on the (partly smoothed) float block
        hk = model.blocks[0].get_submodule(group[0]).register_forward_pre_hook(
            lambda _m, a: seen.setdefault("x", a[0]))
        model.run_block(0, h)
        hk.remove()
        g = model.blocks[0].get_submodule(norm).weight.detach().clone()
        Ws = [model.blocks[0].get_submodule(n).weight.detach().clone() for n in group]
        zeta = smooth_site(model.blocks[0], norm, group, seen["x"], None, 0.5)  # (K,) float32
        assert (zeta - 1).abs().max() > 0.1
        assert torch.equal(model.blocks[0].get_submodule(norm).weight,
                           fold_into_norm(g, zeta).double())
        for n, W in zip(group, Ws):
            assert torch.equal(model.blocks[0].get_submodule(n).weight,
                               fold_into_weight(W, zeta).double())
        with torch.no_grad():  # the same ζ, folded without rounding to float32
            z = zeta.double()
            exact.blocks[0].get_submodule(norm).weight.div_(z)
            for n in group:
                exact.blocks[0].get_submodule(n).weight.mul_(z)
    assert (exact.run_block(0, h) - before).abs().max() <= 1e-9


def test_zeta_is_smooth_factors_of_the_weighted_rows_only():
    """Rows of weight 0 (padding) are not calibration data: an outlier there leaves ζ as it
    is, and ζ equals smooth_factors on the positive-weight rows computed by hand."""
    model = _model("llada")
    norm, group = model.norm_sites()[0]
    x = _norm_out(model, _states()).detach()  # (B, L, K)
    w = torch.ones(x.shape[:2], dtype=torch.float64)
    w[0, :3] = 0.0
    x_out = x.clone()
    x_out[0, 1] = 1e4  # an outlier in a padded row
    W = torch.cat([model.blocks[0].get_submodule(n).weight.detach() for n in group])
    want = smooth_factors(x[w > 0].abs().amax(0), W, 0.5)
    got = smooth_site(_model("llada").blocks[0], norm, group, x_out, w, 0.5)
    assert torch.equal(got, want)


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("rotation", [None, "hadamard"])
def test_the_block_loop_folds_zeta_before_rtn(arch, rotation):
    """Block 0 after ``quantize_model(solver='rtn', smooth_alpha=α)``: its first norm holds
    exactly g ⊘ ζ and each fed linear exactly RTN(W diag ζ), with ζ recomputed by hand from
    the norm's output on the calibration states."""
    alpha, states = 0.5, _states()
    ref = _model(arch)
    x = _norm_out(ref, states).detach()
    norm, group = ref.norm_sites()[0]
    b0 = ref.blocks[0]
    W = torch.cat([b0.get_submodule(n).weight.detach() for n in group])
    zeta = smooth_factors(x.reshape(-1, x.shape[-1]).abs().amax(0), W, alpha)
    model = _model(arch)
    cfg = CalibConfig(solver="rtn", rotation=rotation, smooth_alpha=alpha)
    quantize_model(model, states, config=cfg)
    blk = model.blocks[0]
    assert torch.equal(blk.get_submodule(norm).weight,
                       fold_into_norm(b0.get_submodule(norm).weight, zeta))
    for n in group:
        lin = b0.get_submodule(n)
        with torch.no_grad():
            lin.weight.copy_(fold_into_weight(lin.weight, zeta))
        R = None if rotation is None else RotationSpec(rotation, lin.in_features, 0)
        want = QuantLinear.from_linear(lin, cfg.w_spec, cfg.a_spec, transform=R)
        assert torch.equal(blk.get_submodule(n).dequantized_weight(), want.dequantized_weight())


def test_a_smoothed_gptq_checkpoint_reloads_bit_identically(tmp_path):
    """The folded norms are stored as the forward uses them (SPEC §7)."""
    from fairref.models import load
    from fairref.models.quantized import save_quantized

    model, states = _model("dream"), _states()
    quantize_model(model, states, config=CalibConfig(solver="gptq", smooth_alpha=0.5))
    save_quantized(model, tmp_path / "q", method={"name": "test", "smooth_alpha": 0.5})
    again = load(tmp_path / "q")
    assert torch.equal(again.logits(states), model.logits(states))


@pytest.mark.parametrize("kwargs, words", [
    (dict(solver="flat", smooth_alpha=0.5), "flat solver learns its own"),
    (dict(solver="gptq", smooth_alpha=1.5), "[0, 1]"),
])
def test_bad_smoothing_configs_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        CalibConfig(**kwargs)


def test_smoothing_needs_states():
    with pytest.raises(ValueError, match="with smoothing"):
        quantize_model(_model("llada"), None, config=CalibConfig(solver="rtn", smooth_alpha=0.5))


# --- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from test_cli_pipeline import _checkpoint, _jsonl

    d = tmp_path_factory.mktemp("smooth_cli")
    return _checkpoint(d / "m"), _jsonl(d / "prompts.jsonl")


def _calibrate(ckpt, out, *extra):
    from test_cli_pipeline import FAST

    from fairref.cli import main

    model, prompts = ckpt
    return main(["calibrate", "--model", str(model), "--prompts", str(prompts), "--out",
                 str(out), *FAST, *extra])


def test_calibrate_smooth_records_alpha_and_reloads(ckpt, tmp_path):
    import json

    from fairref.models import load

    out = tmp_path / "q"
    assert _calibrate(ckpt, out, "--method", "gptq", "--smooth", "0.5") == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"]["smooth_alpha"] == 0.5
    load(out)  # reloads (its norms hold g ⊘ ζ)


@pytest.mark.parametrize("extra, words", [
    (["--method", "fair", "--smooth", "0.5"], ["--smooth", "'fair'", "flat solver"]),
    (["--method", "gptq", "--smooth", "2"], ["--smooth 2", "[0, 1]"]),
])
def test_calibrate_bad_smooth_is_one_error_line(ckpt, tmp_path, capsys, extra, words):
    from test_cli_pipeline import _one_error_line

    assert _calibrate(ckpt, tmp_path / "q", *extra) == 2
    _one_error_line(capsys, *words)
    assert list(tmp_path.iterdir()) == []
