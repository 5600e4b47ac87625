"""The toy report (toy_models/report.py; SPEC §1, §5): its quantized models are the
library's ``QuantLinear`` (no private RTN path, STYLE practice 13), and its statistics.

Every quantization check here either compares bit for bit a computation pinned to the
same primitives (rtol = atol = 0), or bounds what float32 summation order can do; none
counts rounding flips, so no CPU, thread count or BLAS build can move a verdict.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairref.models import random_model
from fairref.quant.grid import QuantSpec, dequantize, fake_quantize, quantize
from fairref.quant.linear import QuantLinear
from fairref.quant.rotation import RotationSpec, hadamard
from tiny import tiny_config
from toy_models.report import (all_tasks_cells, bootstrap_ci, check_sampler, legacy_sampler, main,
                               quantized_copy)

U = 2.0**-24  # float32 unit roundoff


def gamma(n: int) -> float:
    """γ_n = n·u / (1 − n·u): relative error bound of a float32 sum of n products."""
    return n * U / (1 - n * U)


@pytest.mark.parametrize("K", [64, 192, 768])
@pytest.mark.parametrize("bias", [False, True])
def test_report_linear_is_fake_quant_of_blockwise_x_R_times_W_hat(K, bias):
    """The report's linear (RTN, Hadamard, W4 per channel, A8 per token; K = 192, 768 use the
    block-diagonal Hadamard): cached Ŵ == dequantize(q_w) and q_w == quantize(W R); the
    output == F.linear(fake_quantize(x R), Ŵ, b) rebuilt by hand, all bit for bit. The
    block-wise x R is within (γ_m + γ_K)·(|x| |R|) of the dense reference x @ hadamard(K)
    (any float32 sum of n products is within γ_n·Σ|terms| of exact: m nonzero terms per
    column block-wise, K dense; tests/test_quant_rotation.py states it in full)."""
    torch.manual_seed(K)
    lin = nn.Linear(K, 32, bias=bias)
    w_spec, a_spec = QuantSpec(bits=4, granularity="channel"), QuantSpec(bits=8, granularity="token")
    Rspec = RotationSpec("hadamard", K)
    ql = QuantLinear.from_linear(lin, w_spec, a_spec, transform=Rspec)
    q, s, z = quantize(Rspec.apply(lin.weight.detach()), w_spec)
    assert torch.equal(ql.q_w, q)
    W_hat = dequantize(ql.q_w, ql.s_w, None, w_spec)
    torch.testing.assert_close(ql.W_hat, W_hat, rtol=0, atol=0)
    x = torch.randn(50, K)
    xr = Rspec.apply(x)
    b = None if lin.bias is None else lin.bias.detach()
    with torch.no_grad():
        want = F.linear(fake_quantize(xr, a_spec), W_hat, b)
        torch.testing.assert_close(ql(x), want, rtol=0, atol=0)
    R = hadamard(K)  # dense reference
    m = Rspec.block
    bound = (gamma(m) + gamma(K)) * (x.double().abs() @ R.double().abs())  # (T, K)
    assert ((xr.double() - (x @ R).double()).abs() <= bound).all()


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_quantized_copy_computes_what_its_per_linear_calls_compute(arch):
    """``quantized_copy`` swaps every block linear for a library QuantLinear of W R, and the
    copy's logits are exactly those of the full-precision model whose linears' outputs are
    replaced, call by call, by F.linear(fake_quantize(x R), dequantize(quantize(W R)), b)
    built by hand from the same primitives: the model adds nothing of its own."""
    V = 24
    cfg = tiny_config(arch, V, mask=V - 1, eos=V - 2, pad=V - 2, L_max=32)
    fp = random_model(cfg, seed=0, std=0.3).eval()
    qm = quantized_copy(fp, 4, 4)
    w_spec, a_spec = QuantSpec(bits=4), QuantSpec(bits=4, granularity="token")
    names = [n for g in fp.linear_groups() for n in g]

    def by_hand(lin: nn.Linear):
        Rspec = RotationSpec("hadamard", lin.in_features)
        W_hat = fake_quantize(Rspec.apply(lin.weight.detach()), w_spec)
        b = None if lin.bias is None else lin.bias.detach()
        return lambda _mod, args, _out: F.linear(fake_quantize(Rspec.apply(args[0]), a_spec),
                                                 W_hat, b)

    hooks = []
    for block, qblock in zip(fp.blocks, qm.blocks):
        for name in names:
            ql = qblock.get_submodule(name)
            assert isinstance(ql, QuantLinear) and ql.transform == RotationSpec(
                "hadamard", ql.in_features)
            assert (ql.w_spec, ql.a_spec) == (w_spec, a_spec)
            hooks.append(block.get_submodule(name).register_forward_hook(
                by_hand(block.get_submodule(name))))
    x = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = qm.logits(x)
        want = fp.logits(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.equal(fp.logits(x), got)  # the hooks did replace something


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_n():
    ok = [True] * 85 + [False] * 15
    lo, hi = bootstrap_ci(ok)
    assert lo <= 0.85 <= hi
    lo2, hi2 = bootstrap_ci(ok * 20)
    assert hi2 - lo2 < hi - lo
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)


def test_frontier_stats_on_a_hand_built_step():
    """One step, one row, five answer positions, k_t = 2: the margins are those of the two
    committed positions, the gap is the 2nd minus the 3rd highest confidence among the
    masked active candidates (an inactive position is ignored even when it is the most
    confident), and the recorded confidence is the 2nd highest. Worked out by hand."""
    from types import SimpleNamespace

    from fairref.toy.evaluate import frontier_stats

    conf = torch.tensor([[[0.95, 0.90, 0.50, 0.99, 0.999]]])  # (T=1, B=1, L=5)
    masked = torch.tensor([[[True, True, True, True, True]]])
    active = torch.tensor([[[True, True, True, True, False]]])  # the 0.999 one is outside
    committed = torch.tensor([[[True, False, False, True, False]]])  # top-2 of the active
    p1 = conf.clone()
    p2 = torch.tensor([[[0.04, 0.05, 0.30, 0.005, 0.0]]])
    trace = SimpleNamespace(conf=conf, masked=masked, active=active, committed=committed,
                            p1=p1, p2=p2, k=torch.tensor([[2]]))
    margins, gaps, last = frontier_stats(trace)
    assert margins == pytest.approx([0.95 - 0.04, 0.99 - 0.005])
    assert gaps == pytest.approx([0.95 - 0.90])
    assert last == pytest.approx([0.95])
    # a step that commits every candidate leaves no gap behind
    trace.k = torch.tensor([[4]])
    assert frontier_stats(trace)[1] == []


def test_all_tasks_row_averages_accuracy_and_pools_fractions_by_count():
    """The *all tasks* row: accuracy is the plain mean over tasks; a frontier fraction is
    pooled over commits (steps), so a task with 3x the commits weighs 3x. Worked by hand:
    margins (0.5 · 100 + 0.1 · 300) / 400 = 20%; gaps (1.0 · 10 + 0.0 · 30) / 40 = 25%."""

    def row(acc, commits, f_margin, steps, f_gap, f_cont):
        scheme = {"acc": acc, "ci95": (acc, acc)}
        return {"n": 1, "FP": scheme, "W8A8": scheme, "W4A8": scheme, "W4A4": scheme,
                "frontier": {"commits": commits, "frac_margin_below_0.5": f_margin,
                             "steps_with_gap": steps, "frac_gap_below_0.1": f_gap,
                             "frac_contested_gap_below_0.1": f_cont}}

    r = {"tasks": {"a": row(1.0, 100, 0.5, 10, 1.0, 0.2), "b": row(0.5, 300, 0.1, 30, 0.0, 0.0)}}
    cells = [c.strip() for c in all_tasks_cells(r).split("|")]
    assert cells == ["75.0"] * 4 + ["20.0%", "25.0%", "5.0%"]
    del r["tasks"]["b"]["W4A4"]  # a partial run shows a dash, not a mean of fewer tasks
    assert [c.strip() for c in all_tasks_cells(r).split("|")][3] == "–"


def test_merge_refuses_a_part_run_with_another_sampler_than_the_checkpoint_ships(tmp_path, capsys):
    """``--merge`` joins parts only if each recorded the sampler its checkpoint's
    generation_config.json says now: a part from before a change of the shipped sampler (or
    one that recorded none, with no merged report to take the record from) is refused with
    the command that re-runs it, and nothing is written."""
    import dataclasses
    import json

    from fairref.diffusion import SamplerSettings
    from fairref.toy.evaluate import toy_sampler

    shipped = toy_sampler("llada")
    part = {"arch": "llada", "sampler": dataclasses.asdict(shipped), "tasks": {}}
    check_sampler(part, shipped, tmp_path / "report_llada.json")  # the same: accepted
    one_block = dataclasses.replace(shipped, block_length=shipped.gen_length)
    for stale in ({**part, "sampler": dataclasses.asdict(one_block)},
                  {k: v for k, v in part.items() if k != "sampler"}):
        with pytest.raises(ValueError, match="--models llada --part"):
            check_sampler(stale, shipped, tmp_path / "report_llada.json")
    (tmp_path / "report_llada.json").write_text(json.dumps(
        {**part, "sampler": dataclasses.asdict(SamplerSettings())}))
    assert main(["--merge", "--models", "llada", "--out", str(tmp_path)]) == 2
    assert "generation_config.json now says" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.json").exists()
    # a part from before parts recorded their sampler: the merged report's record of it
    merged = tmp_path / "report.json"
    assert legacy_sampler(merged, "llada") is None
    merged.write_text(json.dumps({"meta": {"sampler": part["sampler"]}}))  # an older merge
    assert legacy_sampler(merged, "llada") == part["sampler"]
    other = dataclasses.asdict(one_block)
    merged.write_text(json.dumps({"meta": {}, "models": [{"arch": "dream", "sampler": {}},
                                                         {"arch": "llada", "sampler": other}]}))
    assert legacy_sampler(merged, "llada") == other
