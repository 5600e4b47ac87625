"""The report's fast RTN path equals the library's (toy_models/report.py; SPEC §1).

``fake_quant_tokens`` must be bit-identical to ``fairref.quant.grid.fake_quantize`` (the
same float32 operations in the same order), and ``RTNLinear`` must be the fake path of
``fairref.quant.linear.QuantLinear``: the same quantized weight of W R and the same
rotated input up to float32 summation order.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fairref.quant.grid import QuantSpec, fake_quantize
from fairref.quant.linear import QuantLinear
from fairref.quant.rotation import hadamard
from toy_models.report import RTNLinear, all_tasks_cells, bootstrap_ci, fake_quant_tokens

U = 2.0**-24  # float32 unit roundoff


@st.composite
def token_batches(draw):
    """Activations (T, K) with the hard cases built in: an all-zero token, a token whose
    entries sit exactly on .5 ties of the grid, a token with one huge outlier, and the
    extremes ±amax."""
    bits = draw(st.sampled_from([4, 8]))
    T, K = draw(st.integers(4, 12)), draw(st.sampled_from([8, 24, 64]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=g) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    qmax = 2 ** (bits - 1) - 1
    x[0] = 0.0  # all-zero token → s = 1, q = 0
    k = torch.randint(-qmax, qmax, (K,), generator=g).float()
    x[1] = (k + 0.5) * 0.25  # every entry a .5 tie once amax/qmax = 0.25 …
    x[1, 0] = qmax * 0.25  # … which this entry pins
    x[2, 3] = 1e6  # one outlier
    x[3] = -x[3].abs().max()  # all entries at −amax
    return x, bits


@given(token_batches())
def test_fake_quant_tokens_is_bit_identical_to_the_library(case):
    """rtol = atol = 0: the report's activation quantizer is the SPEC §1 convention."""
    x, bits = case
    want = fake_quantize(x, QuantSpec(bits=bits, granularity="token"))
    torch.testing.assert_close(fake_quant_tokens(x.clone(), bits), want, rtol=0, atol=0)


@pytest.mark.parametrize("K", [64, 192, 768])
@pytest.mark.parametrize("bias", [False, True])
def test_rtn_linear_is_the_fake_path_of_quantlinear(K, bias):
    """Same Ŵ (of W R; K = 192, 768 use the block-diagonal Hadamard) and same output up to
    float32 summation order; where no activation rounding flips, the outputs agree to
    F.linear rounding."""
    torch.manual_seed(K)
    lin = nn.Linear(K, 32, bias=bias)
    w_spec, a_spec = QuantSpec(bits=4, granularity="channel"), QuantSpec(bits=8, granularity="token")
    fast = RTNLinear(lin, w_spec, a_spec)
    ref = QuantLinear.from_linear(lin, w_spec, a_spec, rotation=hadamard(K))
    # weights: W R differs only by summation order (a few ulp), so a row's scale moves by a
    # few ulp (|q| · Δs ≤ 2^(b-1) · 8u · s ≪ 1e-5 s) and an entry on a near-tie may move by
    # one step; random Gaussian weights hit such ties with probability ~ulp
    s_w = ref.s_w.reshape(-1, 1)  # (N, 1)
    dW = (fast.W_hat - ref.dequantized_weight()).abs()  # (N, K)
    assert torch.all(dW <= s_w * (1 + 1e-5))
    assert (dW > 1e-5 * s_w).float().mean() <= 1e-3
    # rotated inputs: blockwise vs dense, both within γ_K of the exact product
    x = torch.randn(50, K)
    R = hadamard(K)
    xr_fast = (x.reshape(-1, K // fast.m, fast.m) @ fast.H).reshape(50, K)
    bound = 2 * K * U * (x.abs() @ R.abs())  # (T, K): two float32 dot products of length ≤ K
    assert torch.all((xr_fast - x @ R).abs() <= bound)
    # outputs: tokens whose quantized activations agree give outputs equal to rounding
    y_fast, y_ref = fast(x), ref(x)
    same = torch.all(fake_quant_tokens(xr_fast, 8) == fake_quant_tokens(x @ R, 8), dim=-1)
    assert same.float().mean() >= 0.5  # flips need a value within rounding of a .5 tie
    torch.testing.assert_close(y_fast[same], y_ref[same], rtol=1e-5, atol=1e-5)


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
