"""Weighted GPTQ (SPEC §4.3a) against a float64 NumPy oracle of Algorithm 1.

Legend: N rows of W, K input features, T tokens, g group size. The oracle lives in
tests/gptq_oracle.py; RTN is grid.quantize, the golden convention of SPEC §1; the Hessian's
own tests are in test_quant_hessian.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.quant import GPTQResult, QuantSpec, dequantize, gptq_quantize, hessian, quantize
from gptq_oracle import gptq_oracle

F64 = torch.float64


CONFIGS = [  # (spec, solver kwargs, oracle kwargs): every code path of the solver
    (QuantSpec(), {}, {}),
    (QuantSpec(), {"act_order": True}, {"act_order": True}),
    (QuantSpec(bits=3, symmetric=False), {}, {"bits": 3, "symmetric": False}),
    (QuantSpec(scale_mode="full", bits=2), {}, {"scale_mode": "full", "bits": 2}),
    (QuantSpec(granularity="group", group_size=8), {}, {"group_size": 8}),
    (QuantSpec(granularity="group", group_size=8), {"static_groups": False},
     {"group_size": 8, "static_groups": False}),
    (QuantSpec(granularity="group", group_size=8), {"act_order": True},
     {"group_size": 8, "act_order": True}),
]
# RTN-comparable paths, plus per-tensor scales (which the oracle does not model)
SOLVER_CONFIGS = [(c[0], c[1]) for c in CONFIGS] + [(QuantSpec(granularity="tensor"), {"act_order": True})]


# --- strategies: hard Hessians by construction ------------------------------------------------


@st.composite
def hard_problems(draw, max_K=24, dead_columns=True):
    """(W, H) with H singular (rank-deficient X, dead columns, zero-weight tokens),
    ill-conditioned (eigenvalues log-spaced over up to 8 decades), or diagonal."""
    K = 8 * draw(st.integers(1, max_K // 8))  # a multiple of the tests' group size 8
    N = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = ["rank_deficient", "ill_conditioned", "diagonal"] + (["dead"] if dead_columns else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "ill_conditioned":
        decades = draw(st.floats(0, 8))  # cond(H) = 10^decades, up to 1e8
        Qo, _ = np.linalg.qr(rng.standard_normal((K, K)))
        H = (Qo * np.logspace(0, -decades, K)) @ Qo.T
    elif kind == "diagonal":
        H = np.diag(rng.uniform(1e-3, 1e3, K))
    else:
        r = draw(st.integers(1, K))  # rank of X (r < K: singular H)
        T = draw(st.integers(1, 3 * K))
        X = rng.standard_normal((T, r)) @ rng.standard_normal((r, K))
        w = rng.uniform(0, 2, T) * (rng.random(T) < 0.8)  # some tokens weigh exactly 0
        w[0] = 1.0  # at least one token counts
        if kind == "dead":
            X[:, rng.random(K) < 0.3] = 0.0  # never-active input features: H_ii = 0
            X[:, draw(st.integers(0, K - 1))] = 0.0
        H = hessian(torch.tensor(X), torch.tensor(w)).numpy()
    W = rng.standard_normal((N, K)) * rng.choice([1e-3, 1.0, 30.0])
    W[:, rng.integers(K)] *= 50.0  # one outlier column
    if N > 1:
        W[0] = 0.0  # an all-zero row: scale 1, q = 0
    return torch.tensor(W, dtype=torch.float32), torch.tensor(H)


def weighted_problem(seed, N=32, K=64, T=384, corr=0.5):
    """Correlated inputs (as real activations are) with non-uniform token weights."""
    rng = np.random.default_rng(seed)
    mix = np.eye(K) + corr * rng.standard_normal((K, K))
    X = rng.standard_normal((T, K)) @ mix  # (T, K)
    w = rng.uniform(0.0, 3.0, T)  # (T,)
    W = rng.standard_normal((N, K))
    return torch.tensor(W, dtype=torch.float32), torch.tensor(X), torch.tensor(w)


def weighted_error(W, W_hat, X, w):
    """Σ_n w_n ‖(W − Ŵ) x_n‖² / Σ_n w_n in float64, straight from the SPEC §4.2 definition."""
    E = W.to(F64) - W_hat.to(F64)  # (N, K)
    return float((w * ((X @ E.T) ** 2).sum(1)).sum() / w.sum())


# --- the solver against the oracle -------------------------------------------------------------


@pytest.mark.parametrize("spec, kw, okw", CONFIGS)
@given(seed=st.integers(0, 2**32 - 1), blocksize=st.sampled_from([1, 5, 8, 128]),
       dead=st.booleans())
def test_float64_solver_equals_oracle_exactly(spec, kw, okw, seed, blocksize, dead):
    """With dtype=float64 the lazy-batch solver and the column-by-column oracle differ only by
    float64 summation order (~1e-16 relative); the values then pass through the same float32
    cast and division, so q is bitwise equal unless a value lands within ~1e-16 of a float32
    rounding boundary (probability ~2^-29 per element). Equality is therefore exact."""
    rng = np.random.default_rng(seed)
    N, K, T = 12, 24, 60
    X = rng.standard_normal((T, K)) @ (np.eye(K) + 0.4 * rng.standard_normal((K, K)))
    if dead:
        X[:, rng.integers(K, size=3)] = 0.0
    w = rng.uniform(0, 2, T)
    H = hessian(torch.tensor(X), torch.tensor(w))
    W = torch.tensor(rng.standard_normal((N, K)), dtype=torch.float32)
    r = gptq_quantize(W, H, spec, blocksize=blocksize, dtype=F64, **kw)
    o = gptq_oracle(W.numpy(), H.numpy(), **okw)
    np.testing.assert_array_equal(r.q.numpy(), o["q"])
    assert math.isclose(r.loss, o["loss"], rel_tol=1e-9)  # float64 sums, K·u64·κ ≪ 1e-9
    assert math.isclose(r.damp, o["damp"], rel_tol=1e-12)
    assert torch.equal(r.W_hat, dequantize(r.q, r.scale, r.zero, spec))


@pytest.mark.parametrize("spec, kw, okw", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_solver_agrees_with_oracle_except_after_near_ties(spec, kw, okw, seed):
    """The default float32 solver differs from the float64 oracle by float32 rounding: the
    factor U has relative error ≲ K·u·κ(H_d) and the updates add ≲ K·u relative, so a
    pre-rounding value z = w̃/s moves by at most η = 4·K·u·κ·max|z| grid steps (u = 2^-24).
    q can then differ only where the oracle's z is within η of a rounding midpoint; after
    that first difference the whole rest of the row legitimately follows another path. We
    require every row's first difference to be at such a near-tie. (No threshold on how
    many entries differ: that count is set by float32 summation order, which the CPU's
    vector width and the thread count change, so its verdict could move between machines.)"""
    W, X, w = weighted_problem(seed, N=48, K=64, T=512)
    H = hessian(X, w).to(torch.float32).to(F64)  # float32-representable: both see the same H
    r = gptq_quantize(W, H, spec, **kw)
    o = gptq_oracle(W.numpy(), H.numpy(), **okw)
    Hd = H + o["damp"] * torch.eye(H.shape[0], dtype=F64)
    kappa = float(torch.linalg.cond(Hd))
    z = o["z_pre"][:, o["order"]]  # (N, K) in processing order
    eta = 4 * W.shape[1] * 2.0**-24 * kappa * float(np.abs(z).max())
    differ = (r.q.numpy() != o["q"])[:, o["order"]]
    for row in np.nonzero(differ.any(1))[0]:
        first = int(np.argmax(differ[row]))
        assert abs(abs(z[row, first] - np.floor(z[row, first])) - 0.5) <= eta


@pytest.mark.parametrize("spec, kw", SOLVER_CONFIGS)
@given(seed=st.integers(0, 2**32 - 1), K=st.sampled_from([8, 16, 40]))
def test_diagonal_hessian_equals_rtn(spec, kw, seed, K):
    """With H diagonal (positive) the columns do not interact: U is diagonal, every update is
    err·0 = 0 exactly, so GPTQ is RTN bit for bit (q identical to grid.quantize)."""
    rng = np.random.default_rng(seed)
    W = torch.tensor(rng.standard_normal((6, K)) * rng.choice([1e-3, 1, 1e3]), dtype=torch.float32)
    W[:, 0] = W[:, 1]  # duplicated columns: ties in |W| and in diag H are allowed
    d = rng.choice([1e-4, 1.0, 7.0, 1e4], K)
    r = gptq_quantize(W, torch.diag(torch.tensor(d)), spec, **kw)
    q, scale, zero = quantize(W, spec)
    assert torch.equal(r.q, q) and torch.equal(r.scale, scale) and torch.equal(r.zero, zero)


@pytest.mark.parametrize("spec, kw", SOLVER_CONFIGS)
@given(problem=hard_problems(), k=st.integers(-10, 10))
def test_q_unchanged_when_W_scaled_by_power_of_two(spec, kw, problem, k):
    """Scaling W by 2^k scales every scale, ŵ, err and update exactly (a power of two commutes
    with float rounding away from under/overflow), so q is bitwise unchanged and Ŵ scales."""
    W, H = problem
    r1, r2 = gptq_quantize(W, H, spec, **kw), gptq_quantize(W * 2.0**k, H, spec, **kw)
    assert torch.equal(r1.q, r2.q)
    assert torch.equal(r1.W_hat * 2.0**k, r2.W_hat)


@pytest.mark.parametrize("spec, kw", SOLVER_CONFIGS)
@given(problem=hard_problems(dead_columns=False), k=st.integers(-6, 6), c=st.floats(1e-3, 1e3))
def test_q_unchanged_when_H_scaled(spec, kw, problem, k, c):
    """H → cH scales λ by c, U by 1/√c and err by √c: the updates err·U are unchanged. For
    c = 4^k (√c a power of two) every float32 step is exact, so q is bitwise equal in the
    default float32 solver; for any c > 0 the float64 solver agrees exactly as well.
    Not with dead columns: the reference sets H_ii := 1 there *before* λ = percdamp·mean(diag H),
    and that 1 does not scale with c, so λ (and with it q) moves; see the next test."""
    W, H = problem
    r1, r2 = gptq_quantize(W, H, spec, **kw), gptq_quantize(W, H * 4.0**k, spec, **kw)
    assert torch.equal(r1.q, r2.q)
    s1, s2 = (gptq_quantize(W, Hc, spec, dtype=F64, **kw) for Hc in (H, H * c))
    if not (s1.fell_back_to_rtn or s2.fell_back_to_rtn):
        assert torch.equal(s1.q, s2.q)


@given(seed=st.integers(0, 2**32 - 1), blocksizes=st.lists(st.integers(1, 40), min_size=2, max_size=3))
def test_blocksize_does_not_change_the_result(seed, blocksizes):
    """Lazy batching only regroups the same updates (float64 solver: bitwise q), including
    dynamic groups, whose scale is read after every earlier update has landed."""
    W, X, w = weighted_problem(seed, N=8, K=32, T=96)
    spec = QuantSpec(granularity="group", group_size=8)
    qs = [gptq_quantize(W, hessian(X, w), spec, blocksize=b, static_groups=False, dtype=F64).q
          for b in blocksizes]
    assert all(torch.equal(qs[0], q) for q in qs[1:])


@given(seed=st.integers(0, 2**32 - 1), act_order=st.booleans())
def test_loss_equals_half_the_damped_objective(seed, act_order):
    """W₀ − Ŵ = Err·U and H_d = U⁻¹U⁻ᵀ, so ½ Σ err² = ½ tr(E H_d Eᵀ): the loss is the
    quantization objective itself (dead columns zeroed, λ included)."""
    W, X, w = weighted_problem(seed, N=8, K=24, T=80)
    X[:, 2] = 0.0
    H = hessian(X, w)
    r = gptq_quantize(W, H, QuantSpec(), act_order=act_order, dtype=F64)
    W0 = W.to(F64).clone()
    W0[:, 2] = 0.0
    Hf = H.clone()
    Hf[2, 2] = 1.0
    E = W0 - r.W_hat.to(F64)
    objective = 0.5 * float(((E @ (Hf + r.damp * torch.eye(24, dtype=F64))) * E).sum())
    assert math.isclose(r.loss, objective, rel_tol=1e-9)


# --- weighted GPTQ versus RTN -------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), pairs=st.integers(1, 8), bits=st.sampled_from([2, 3, 4]))
def test_gptq_never_worse_than_rtn_on_paired_inputs(seed, pairs, bits):
    """A family where GPTQ ≤ RTN is a theorem. Each token is active on one pair of features
    (2j, 2j+1) only, so H is block-diagonal and GPTQ treats pairs independently: column 2j
    gets no update (it is rounded exactly as RTN rounds it) and column 2j+1 is rounded at the
    minimizer of a 1-D convex quadratic given column 2j's error, i.e. at the best grid point
    (clamp(round(·)) is the nearest point of the clamped grid). Hence per row
    tr(e H_d eᵀ)_GPTQ ≤ tr(e H_d eᵀ)_RTN for the damped H_d the solver minimizes. Slack: the
    float32 cast before rounding can misplace the minimizer by δ ≤ 2^-19 grid steps (|z| ≤
    2^4, two float32 roundings), which costs at most 2·H_d,oo·s²·δ per pair."""
    rng = np.random.default_rng(seed)
    K, T, N = 2 * pairs, 40 * pairs, 16
    X = np.zeros((T, K))
    home = rng.integers(pairs, size=T)
    X[np.arange(T), 2 * home] = rng.standard_normal(T)
    X[np.arange(T), 2 * home + 1] = rng.standard_normal(T) + 2.0 * X[np.arange(T), 2 * home]
    H = hessian(torch.tensor(X), torch.tensor(rng.uniform(0, 2, T)))
    W = torch.tensor(rng.standard_normal((N, K)), dtype=torch.float32)
    spec = QuantSpec(bits=bits)
    r = gptq_quantize(W, H, spec, dtype=F64)
    q, s, z = quantize(W, spec)
    Hd = H + r.damp * torch.eye(K, dtype=F64)
    dead = torch.diagonal(H) == 0
    Hd[dead, dead] = 1.0 + r.damp
    W0 = W.to(F64).clone()
    W0[:, dead] = 0.0
    eG, eR = W0 - r.W_hat.to(F64), W0 - dequantize(q, s, z, spec).to(F64)
    slack = 2 * torch.diagonal(Hd)[1::2].sum() * s.to(F64)[:, 0] ** 2 * 2.0**-19  # (N,)
    assert torch.all(((eG @ Hd) * eG).sum(1) <= ((eR @ Hd) * eR).sum(1) + slack)


@pytest.mark.parametrize("seed", range(6))
def test_weighted_gptq_beats_rtn_on_correlated_weighted_data(seed):
    """On generic data GPTQ ≤ RTN holds in expectation, not per instance: modelling each
    rounding residual as uniform on ±s/2, E[RTN] = s²/12 · Σ_i H_ii (cross terms vanish)
    while GPTQ's residual at column i costs s²/12 · 1/U_ii², and 1/U_ii² is the Schur
    complement of H restricted to the columns ≥ i, ≤ H_ii. We check the family has a
    clear expected gain (ρ = Σ 1/U_ii² / Σ H_ii ≤ 0.6) and then, with N·K = 2048 residuals
    averaging out, that GPTQ's weighted error Σ w‖(W − Ŵ)x‖²/Σ w is below RTN's."""
    W, X, w = weighted_problem(seed)
    H = hessian(X, w)
    r = gptq_quantize(W, H, QuantSpec())
    Hd = H + r.damp * torch.eye(H.shape[0], dtype=F64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True)
    rho = float((1 / torch.diagonal(U) ** 2).sum() / torch.diagonal(Hd).sum())
    assert rho <= 0.6  # precondition on the family, not on the solver
    rtn = dequantize(*quantize(W, QuantSpec()), QuantSpec())
    assert weighted_error(W, r.W_hat, X, w) < weighted_error(W, rtn, X, w)


# --- hard Hessians, failure handling, bad input ----------------------------------------------------


@pytest.mark.parametrize("spec, kw", SOLVER_CONFIGS)
@given(problem=hard_problems())
def test_singular_and_ill_conditioned_hessians_give_finite_in_range_result(spec, kw, problem):
    """Dead columns, rank-deficient and cond ≤ 1e8 Hessians: finite Ŵ, q on the grid, Ŵ the
    dequantized q, dead columns exactly zero, and the loss finite."""
    W, H = problem
    r = gptq_quantize(W, H, spec, **kw)
    assert isinstance(r, GPTQResult) and r.q.dtype == torch.int32
    assert torch.isfinite(r.W_hat).all() and math.isfinite(r.loss)
    assert int(r.q.min()) >= spec.qmin and int(r.q.max()) <= spec.qmax
    assert torch.equal(r.W_hat, dequantize(r.q, r.scale, r.zero, spec))
    dead = torch.diagonal(H) == 0
    assert torch.all(r.W_hat[:, dead] == 0)
    if kw.get("act_order"):
        assert torch.equal(torch.sort(r.perm).values, torch.arange(W.shape[1]))


def test_cholesky_failure_raises_damping_with_a_warning():
    """H = [[1, a], [a, 1]] has eigenvalues 1 ± a; a = 1.05 needs λ > 0.05: λ = 0.01 fails,
    λ = 0.1 succeeds after exactly one warning."""
    H = torch.tensor([[1.0, 1.05], [1.05, 1.0]], dtype=F64)
    W = torch.tensor([[0.3, -0.7], [1.0, 0.2]])
    with pytest.warns(RuntimeWarning, match="retrying") as record:
        r = gptq_quantize(W, H, QuantSpec())
    assert len(record) == 1 and not r.fell_back_to_rtn
    assert math.isclose(r.damp, 0.1, rel_tol=1e-6)


def test_cholesky_failure_falls_back_to_rtn_after_three_raises():
    """a = 100: λ ∈ {0.01, 0.1, 1, 10} all leave H + λI indefinite → RTN, with a warning."""
    H = torch.tensor([[1.0, 100.0], [100.0, 1.0]], dtype=F64)
    W = torch.tensor([[0.3, -0.7], [1.0, 0.2]])
    with pytest.warns(RuntimeWarning) as record:
        r = gptq_quantize(W, H, QuantSpec())
    messages = [str(m.message) for m in record]
    assert sum("retrying" in m for m in messages) == 3 and "round-to-nearest" in messages[-1]
    assert r.fell_back_to_rtn and math.isnan(r.damp)
    assert torch.equal(r.q, quantize(W, QuantSpec())[0])


def _bad(**over):
    args = {"W": torch.ones(4, 8), "H": torch.eye(8), "spec": QuantSpec()}
    args.update(over)
    return args


@pytest.mark.parametrize("args, match", [
    (_bad(W=torch.full((4, 8), float("nan"))), "W contains"),
    (_bad(H=torch.full((8, 8), float("nan"))), "H contains"),
    (_bad(H=torch.ones(8, 7)), "square"),
    (_bad(H=torch.eye(6)), "shape mismatch"),
    (_bad(W=torch.ones(8)), "2-D"),
    (_bad(percdamp=0.0), "percdamp"),
    (_bad(percdamp=-0.1), "percdamp"),
    (_bad(blocksize=0), "blocksize"),
    (_bad(dtype=torch.float16), "dtype"),
    (_bad(spec=QuantSpec(granularity="token")), "token"),
    (_bad(spec=QuantSpec(granularity="group", group_size=3)), "group_size"),
    (_bad(spec=QuantSpec(granularity="group", group_size=4), act_order=True, static_groups=False), "act_order"),
    (_bad(clip=1.5), "clip"),
    (_bad(clip=torch.ones(3, 1)), "clip"),
])
def test_bad_input_raises_value_error_naming_it(args, match):
    with pytest.raises(ValueError, match=match):
        gptq_quantize(**args)


def test_clip_is_passed_to_qparams():
    """A per-channel clip (N, 1) gives the scales qparams gives with that clip (and with a
    diagonal H, exactly RTN with that clip)."""
    W = torch.randn(5, 16)
    clip = torch.linspace(0.6, 1.0, 5)[:, None]
    r = gptq_quantize(W, torch.eye(16), QuantSpec(), clip=clip)
    q, s, _ = quantize(W, QuantSpec(), clip=clip)
    assert torch.equal(r.scale, s) and torch.equal(r.q, q)


def test_input_weight_is_not_modified():
    W = torch.randn(4, 8)
    W0, H = W.clone(), torch.eye(8)
    H[3, 3] = 0.0  # a dead column would be zeroed in the working copy only
    gptq_quantize(W, H, QuantSpec())
    assert torch.equal(W, W0)


@given(seed=st.integers(0, 2**32 - 1), n_dead=st.integers(1, 5))
def test_dead_columns_enter_only_through_the_damping_mean(seed, n_dead):
    """A dead column (H_ii = 0) is zeroed and isolated (H_ii := 1, no coupling), so the live
    columns are solved exactly as the live sub-problem, except that the 1s count in
    λ = percdamp·mean(diag H). With percdamp rescaled to give the same λ, q on the live
    columns is identical (float64 solver) and q on the dead columns is 0."""
    W, X, w = weighted_problem(seed, N=8, K=24, T=80)
    dead = torch.zeros(24, dtype=torch.bool)
    dead[torch.randperm(24, generator=torch.Generator().manual_seed(seed % 2**31))[:n_dead]] = True
    X[:, dead] = 0.0
    # keep each row's max |W| on a live column, so the per-channel scale (taken from the full
    # W, as the reference does) is the same as the live sub-problem's
    m = W[:, ~dead].abs().amax(1, keepdim=True)  # (N, 1)
    W[:, dead] = torch.minimum(torch.maximum(W[:, dead], -m), m)
    H = hessian(X, w)
    r = gptq_quantize(W, H, QuantSpec(), dtype=F64)
    H_live = H[~dead][:, ~dead]
    sub = gptq_quantize(W[:, ~dead], H_live, QuantSpec(), dtype=F64,
                        percdamp=r.damp / float(torch.diagonal(H_live).mean()))
    assert torch.equal(sub.scale, r.scale)
    assert math.isclose(sub.damp, r.damp, rel_tol=1e-12)
    assert torch.equal(r.q[:, ~dead], sub.q)
    assert torch.all(r.q[:, dead] == 0)
