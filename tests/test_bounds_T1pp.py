"""T1″ (theory/T1pp_two_sided_certificate.md, SPEC §6): the two-sided KL certificate

    max(log1p(V ψ(−r₋)), V ψ(−r)) ≤ KL ≤ log1p(V ψ(r₊)) ≤ V ψ(r₊),

checked three ways: the theorem itself at 60 digits (mpmath, no float rounding at all),
the float64 implementation against that oracle on the hard inputs of
test_bounds_strategies (near-ties, one-hot, |z| ~ 1e3, tiny δ, V = 50 000), and as an
oracle for KLs measured on real W4A4 perturbations of the shipped toy model, where a KL
in the wrong unit falls outside it.

Tolerances (derived, not fitted): each log-probability carries e₁ = ``log_softmax_err``;
p_k then has relative error ≤ 2e₁, which moves V, the sides and the KL by ≤ 2e₁
relative plus a shift of the centre by ≤ 2e₁·r (ψ'/ψ ≤ 1, and the log1p form absorbs a
shift c of X up to a relative c); ψ costs ≤ 200 ulps (|x| = 1e-2, the series switch),
the sums ⌈log₂ V⌉ + 8 more. The log-sum-exp branch (KL > log 2) adds an absolute e₁
of its own.

Legend: V vocabulary, n slots.
"""

import copy
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from test_bounds_strategies import ETA, EPS, kl_tol, log_softmax_err, logit_pairs

from fairref.bounds import (fisher_form, kl_certificate, kl_divergence, kl_divergence_log1p,
                            psi, rms_norm)

DPS = 60  # digits of the oracle: far beyond the 1e-20 KLs of δ ~ 1e-9 at |z| ~ 1e3
# A private context: the oracle's precision cannot be changed by anything else that uses
# mpmath's global one (sympy, imported by torch, does).
MP = mpmath.MPContext()
MP.dps = DPS


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _realized(z, delta):
    """δ as the functions see it: fl(z + δ) − z."""
    return (z + delta) - z


def _rel_tol(z, d) -> float:
    """Relative float64 error of V, both sides and the KL (module docstring)."""
    V = z.shape[-1]
    M = float(np.abs(z).max() + np.abs(d).max())
    e1 = log_softmax_err(V, M)
    r = float(d.max() - d.min())
    return 4 * (e1 + (math.ceil(math.log2(V)) + 208) * EPS) * (1 + r)


def _psi_mp(x):
    """ψ at 60 digits: its series Σ xⁿ/(n + 2)! near 0 (the closed form would cancel away
    all 60 digits at x ~ 1e-300), (expm1(x) − x)/x² elsewhere."""
    x = MP.mpf(x)
    if abs(x) < MP.mpf("1e-2"):
        return MP.fsum(x**n / MP.factorial(n + 2) for n in range(40))
    return (MP.expm1(x) - x) / (x * x)


def _mp_certificate(z, d, reverse=False):
    """The oracle: (KL, lower, upper) of T1″ at 60 digits from the float inputs z and d.

    Everything is re-derived from the definitions: p = softmax(z) (q = softmax(z + d) for
    the reverse direction), KL as Σ p log(p/q), ψ from its closed form at 60 digits.
    """
    zp = [MP.mpf(float(a)) for a in z]
    zq = [a + MP.mpf(float(b)) for a, b in zip(zp, d)]
    if reverse:
        zp, zq = zq, zp
    lse_p = MP.log(MP.fsum(MP.exp(a) for a in zp))
    lse_q = MP.log(MP.fsum(MP.exp(a) for a in zq))
    lp = [a - lse_p for a in zp]
    lq = [b - lse_q for b in zq]
    p = [MP.exp(a) for a in lp]
    kl = MP.fsum(pk * (a - b) for pk, a, b in zip(p, lp, lq))
    dd = [b - a for a, b in zip(zp, zq)]  # the perturbation from the base
    mean = MP.fsum(pk * x for pk, x in zip(p, dd))
    X = [x - mean for x in dd]
    var = MP.fsum(pk * x * x for pk, x in zip(p, X))
    r_plus, r_minus = max(X), -min(X)
    lower = max(MP.log1p(var * _psi_mp(-r_minus)), var * _psi_mp(-(r_plus + r_minus)))
    upper = MP.log1p(var * _psi_mp(r_plus))
    return kl, lower, upper


ORACLE_ABS = 1e-45  # the oracle's own rounding: 60 digits on numbers up to ~1e3 (and exps)


def _close(x: float, oracle, rel: float, abs_: float = 0.0) -> bool:
    """|x − oracle| within a relative tolerance plus an absolute one (and the oracle's)."""
    return abs(x - float(oracle)) <= rel * abs(float(oracle)) + abs_ + ORACLE_ABS


# ------------------------------------------------------------------ the theorem, exactly


@given(logit_pairs(V_max=24), st.booleans())
def test_T1pp_kl_lies_between_both_sides_at_60_digits(pair, reverse):
    """lower ≤ KL ≤ upper with no rounding at all: the theorem, not its implementation."""
    z, delta = pair
    kl, lower, upper = _mp_certificate(z, _realized(z, delta), reverse)
    # the oracle's rounding: 60 digits of the logits' magnitude, 15 digits to spare
    slack = MP.mpf(10) ** (-DPS + 15) * (1 + float(np.abs(z).max() + np.abs(delta).max()))
    assert lower <= kl + slack
    assert kl <= upper + slack


# ------------------------------------------------------------------ the implementation


@given(logit_pairs(), st.booleans())
# found by the dev profile: KL and sides of ~1e-323, where only the underflow term holds
@example((np.array([700.0, 0.0, 0.0]), np.array([0.0, 5e-10, 5e-10])), False)
@example((np.array([700.0, 0.0]), np.array([8.75e-10, 5e-10])), False)
def test_T1pp_float64_sides_and_kl_match_the_60_digit_oracle(pair, reverse):
    """kl, lower and upper agree with mpmath to the derived relative tolerance, including
    KLs of 1e-20 (δ ~ 1e-9 on |z| ~ 1e3), where Σ p (log p − log q) has no digits left."""
    z, delta = pair
    d = _realized(z, delta)
    c = kl_certificate(_t(z), _t(delta), reverse=reverse)
    kl, lower, upper = _mp_certificate(z, d, reverse)
    rel = _rel_tol(z, d)
    # the log-sum-exp branch (KL > log 2) rounds like one log_softmax entry
    abs_kl = 2 * log_softmax_err(z.size, float(np.abs(z).max() + np.abs(d).max())) if kl > 0.5 else 0
    assert _close(float(c.kl), kl, rel, abs_kl)
    assert _close(float(c.lower), lower, rel)
    assert _close(float(c.upper), upper, rel)
    # KL and each side are sums of V terms of ≤ 2 products each, then ≤ 8 more operations:
    # each carries ≤ (2V + 8)·η of underflow (ETA), so a comparison of two ≤ twice that
    tiny = 2 * (2 * z.size + 8) * ETA
    assert float(c.lower) <= float(c.kl) * (1 + 2 * rel) + abs_kl + tiny
    assert float(c.kl) <= float(c.upper) * (1 + 2 * rel) + abs_kl + tiny


@given(logit_pairs())
def test_T1pp_log1p_kl_equals_plain_kl_to_the_plain_forms_rounding(pair):
    """kl_divergence_log1p is the same quantity as kl_divergence: they differ by at most
    the plain form's absolute error kl_tol plus the stable form's relative error."""
    z, delta = pair
    z_q = z + delta
    stable = float(kl_divergence_log1p(_t(z), _t(z_q)))
    plain = float(kl_divergence(_t(z), _t(z_q)))
    rel = _rel_tol(z, z_q - z)
    assert abs(stable - plain) <= kl_tol(z, z_q) + rel * abs(stable) + 2 * log_softmax_err(
        z.size, float(np.abs(z).max() + np.abs(z_q - z).max())) * (stable > 0.5)


@given(st.floats(-750, 750, allow_nan=False))
def test_T1pp_psi_matches_mpmath_and_is_increasing(x):
    """ψ(x) = (eˣ − 1 − x)/x² to 200 ulps (series below 1e-2, expm1 above), +∞ past overflow,
    and ψ(x) ≤ ψ(x + h) for h > 0 (the monotonicity the proof uses)."""
    got = float(psi(torch.tensor(x, dtype=torch.float64)))
    want = _psi_mp(x)
    if want > MP.mpf(np.finfo(np.float64).max):  # past overflow: +∞, never NaN
        assert got == math.inf
        return
    assert _close(got, want, 256 * EPS)
    h = max(abs(x), 1.0) * 1e-6
    assert got <= float(psi(torch.tensor(x + h, dtype=torch.float64)))


@pytest.mark.parametrize("x", [0.0, 1e-300, -1e-300, 9.999e-3, 1e-2, -1e-2, 700.0, 700.1, 709.8, 722.0, 724.0, 1e4])
def test_T1pp_psi_is_finite_and_continuous_at_its_switches(x):
    """No NaN at 0, at the series switch, or past overflow (+∞ there, never NaN)."""
    v = float(psi(torch.tensor(x, dtype=torch.float64)))
    assert not math.isnan(v) and v > 0
    if x < 723:
        assert _close(v, _psi_mp(x), 256 * EPS)
    else:
        assert v == math.inf


def test_T1pp_upper_side_stays_finite_for_a_1e3_logit_jump():
    """A rare token's logit jumps by 1000: ψ(r₊) overflows, the upper side does not, and the
    KL (≈ 1000 + log p_k) is still inside."""
    z = np.zeros(5)
    z[0] = 12.0  # p_4 ≈ 6e-6
    delta = np.array([0.0, 0.0, 0.0, 0.0, 1000.0])
    c = kl_certificate(_t(z), _t(delta))
    kl, lower, upper = _mp_certificate(z, delta)
    assert math.isfinite(float(c.upper)) and math.isfinite(float(c.kl))
    rel = _rel_tol(z, delta)
    assert _close(float(c.kl), kl, rel, 2 * log_softmax_err(5, 1012.0))
    assert _close(float(c.upper), upper, rel)
    assert float(c.lower) <= float(c.kl) <= float(c.upper)


@pytest.mark.slow
def test_T1pp_holds_and_matches_the_oracle_at_a_50k_vocabulary():
    """V = 50 000, |z| ~ 1e3 with a near-one-hot teacher, δ of 1e-3 everywhere plus a spike
    of 25 on the runner-up (one case: the 60-digit oracle costs ~10 s at this size)."""
    rng = np.random.default_rng(0)
    V = 50_000
    z = rng.normal(size=V) * 1e3
    z[7] = z.max() + 3.0
    spike = np.zeros(V)
    spike[int(np.argsort(z)[-2])] = 25.0
    for delta in (rng.normal(size=V) * 1e-3 + spike,):
        d = _realized(z, delta)
        c = kl_certificate(_t(z), _t(delta))
        kl, lower, upper = _mp_certificate(z, d)
        rel = _rel_tol(z, d)
        assert lower <= kl <= upper
        abs_kl = 2 * log_softmax_err(V, float(np.abs(z).max() + np.abs(d).max())) * (kl > 0.5)
        assert _close(float(c.kl), kl, rel, abs_kl)
        assert _close(float(c.lower), lower, rel) and _close(float(c.upper), upper, rel)


def test_T1pp_zero_variance_gives_zero_on_every_side():
    """V = 0 (a constant shift, or a one-hot teacher moved elsewhere only): 0 ≤ 0 ≤ 0."""
    z = np.array([3.0, -1.0, 0.5])
    c = kl_certificate(_t(z), _t(np.full(3, 7.0)))
    assert float(c.var) == float(c.lower) == float(c.kl) == float(c.upper) == 0.0


# ------------------------------------------------------------------ tightness


@given(logit_pairs())
def test_T1pp_upper_over_lower_at_most_e_to_the_range(pair):
    """upper ≤ e^r · lower, r = max δ − min δ: the certificate pins the KL to a factor e^r
    (ψ(r₊)/ψ(−r₋) ≤ e^{r₊ + r₋}, and log1p(a)/log1p(b) ≤ a/b for a ≥ b)."""
    z, delta = pair
    d = _realized(z, delta)
    c = kl_certificate(_t(z), _t(delta))
    r = float(c.r_plus + c.r_minus)
    lower, upper, half_v = float(c.lower), float(c.upper), 0.5 * float(c.var)
    if half_v == 0:  # V = 0: all three are 0
        assert lower == upper == 0
        return
    # in logs: e^r overflows for the |δ| ~ 1e3 cases
    slack = math.log1p(3 * _rel_tol(z, d))
    assert math.log(upper) <= r + math.log(lower) + slack
    # and ½V sits between them within the same factors: e^{−r}·½V ≤ lower, upper ≤ e^{r₊}·½V
    assert -r + math.log(half_v) <= math.log(lower) + slack
    assert math.log(upper) <= float(c.r_plus) + math.log(half_v) + slack


@pytest.mark.parametrize("V", [2, 64, 50_000])
def test_T1pp_both_sides_tend_to_half_variance_as_delta_shrinks(V):
    """On δ = ε·v (a fixed generic direction, a non-uniform teacher) the ratios upper/lower,
    upper/(½V) and (½V)/lower fall towards 1 as ε → 0, each within the e^r of the proof."""
    rng = np.random.default_rng(1)
    z, v = rng.normal(size=V) * 3, rng.normal(size=V)
    previous = math.inf
    for eps_ in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6):
        c = kl_certificate(_t(z), _t(eps_ * v))
        half_v = 0.5 * float(c.var)
        r = float(c.r_plus + c.r_minus)
        ratio = float(c.upper) / float(c.lower)
        assert 1 <= ratio <= math.exp(r) and ratio < previous
        assert 1 <= float(c.upper) / half_v <= math.exp(r)
        assert 1 <= half_v / float(c.lower) <= math.exp(r)
        previous = ratio
    assert ratio - 1 <= 1e-5  # r ≈ 1e-6·range(v): e^r − 1 ≈ 1e-5 at most


def test_T1pp_each_lower_term_is_needed():
    """The log1p lower term wins for a small range, the integral term Vψ(−r) for a teacher
    whose likely tokens all move together (r₋ ≈ r, V large): both are sharp somewhere."""
    cases = {
        "log1p": (np.array([0.0, 0.3, -0.2, 1.0]), np.array([0.1, -0.05, 0.0, 0.02])),
        "integral": (np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, -6.0])),
    }
    for winner, (z, delta) in cases.items():
        c = kl_certificate(_t(z), _t(delta))
        kl, lower, _ = _mp_certificate(z, delta)
        if winner == "log1p":
            assert float(c.lower_log1p) > float(c.lower_integral)
        else:
            assert float(c.lower_integral) > float(c.lower_log1p)
        assert _close(float(c.lower), lower, _rel_tol(z, delta)) and lower <= kl


def test_T1pp_reverse_is_the_forward_certificate_from_q():
    """KL(q ‖ p) certified with (z, δ, reverse) equals the forward certificate of (z + δ, −δ)."""
    rng = np.random.default_rng(2)
    z, delta = rng.normal(size=(4, 30)) * 2, rng.normal(size=(4, 30)) * 0.3
    r = kl_certificate(_t(z), _t(delta), reverse=True)
    f = kl_certificate(_t(z + delta), _t(-_realized(z, delta)))
    for field in ("kl", "lower", "upper", "var", "r_plus", "r_minus"):
        assert torch.allclose(getattr(r, field), getattr(f, field), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", ["z", "delta"])
def test_T1pp_rejects_non_finite_input_by_name(bad):
    """A NaN would put every KL 'inside' a NaN certificate: it is an error naming the input."""
    args = {"z": torch.zeros(4, dtype=torch.float64), "delta": torch.zeros(4, dtype=torch.float64)}
    args[bad][1] = float("inf")
    with pytest.raises(ValueError, match=bad):
        kl_certificate(**args)


def test_fisher_form_is_the_second_order_kl_in_dh_from_an_autograd_jacobian():
    """fisher_form = ½ Var_p(J Δh) with J from autograd, and = lim KL(εΔh)/ε² (the KL's own
    second-order term): checked at ε = 1e-4, where the cubic remainder is ~1e-4 relative."""
    rng = np.random.default_rng(3)
    d, V = 8, 11
    h, dh = _t(rng.normal(size=(3, d))), _t(rng.normal(size=(3, d)))
    W, g = _t(rng.normal(size=(V, d))), _t(rng.uniform(0.5, 2, size=d))
    got = fisher_form(h, dh, W, g, 1e-5)
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda x: rms_norm(x, g, 1e-5) @ W.T, h[i])
        u = J @ dh[i]  # (V,)
        p = torch.softmax(rms_norm(h[i], g, 1e-5) @ W.T, -1)
        want = 0.5 * float(p @ (u - p @ u) ** 2)
        assert abs(float(got[i]) - want) <= 1e-12 * want
        eps_ = 1e-4
        z = rms_norm(h[i], g, 1e-5) @ W.T
        kl = float(kl_divergence_log1p(z, rms_norm(h[i] + eps_ * dh[i], g, 1e-5) @ W.T))
        assert abs(kl / eps_**2 - float(got[i])) <= 1e-3 * float(got[i])


# ------------------------------------------------------------------ an oracle on real models


def assert_inside_certificate(kl: torch.Tensor, z: torch.Tensor, delta: torch.Tensor,
                              reverse: bool = False) -> None:
    """Every KL of ``kl`` ``(n,)`` lies in the T1″ certificate of its slot, up to rounding:
    ``z, delta`` ``(n, V)``. Use for any KL a metric reports per slot (SPEC §5)."""
    c = kl_certificate(z, delta, reverse=reverse)
    tol = _slot_tol(z, delta, c)
    assert (c.lower - tol <= kl).all() and (kl <= c.upper + tol).all()


def _slot_tol(z, delta, c):
    """Per slot: the plain KL's absolute error (kl_tol) plus the certificate's relative error."""
    V = z.shape[-1]
    M = float(z.abs().max() + delta.abs().max())
    e1 = log_softmax_err(V, M)
    r = c.r_plus + c.r_minus
    rel = 4 * (e1 + (math.ceil(math.log2(V)) + 208) * EPS) * (1 + r)
    return 2 * e1 + (e1 + (math.ceil(math.log2(V)) + 3) * EPS) * r + rel * c.upper


@pytest.fixture(scope="module")
def toy_w4a4_slots():  # ~10 s: the tests using it are marked slow
    """Teacher logits z and W4A4 (RTN, Hadamard) perturbations δ at every candidate slot of
    teacher states of the shipped LLaDA toy model on 8 held-out problems: real noise."""
    from fairref.bounds_check import bounds_on_trace
    from fairref.diffusion import llada_generate
    from fairref.fair import CalibConfig, quantize_model
    from fairref.models import load
    from fairref.toy import checkpoint_dir
    from fairref.toy.char_tokenizer import encode_prompts
    from fairref.toy.tasks import TASKS, make_problems

    teacher = load(checkpoint_dir("llada")).eval()
    student = copy.deepcopy(teacher)
    quantize_model(student, config=CalibConfig(solver="rtn"))
    problems = [p for t in TASKS for p in make_problems(t, 2, 1, split="heldout")]
    x = encode_prompts([p for p, _ in problems])
    with torch.no_grad():
        _, trace = llada_generate(teacher, x, 8, 16, 16, record=True)
    return bounds_on_trace(teacher, student, trace, keep_logits=True)


@pytest.mark.slow
def test_T1pp_bounds_check_kl_inside_the_certificate_on_every_real_slot(toy_w4a4_slots):
    """bounds_check's KL (Σ p (log p − log q)) lies in [lower, upper] at every slot of a real
    W4A4 perturbation, and its reported sides are those of kl_certificate."""
    r = toy_w4a4_slots
    assert r["kl"].numel() > 100 and (r["kl"] > 0).all()
    assert_inside_certificate(r["kl"], r["z"], r["delta"])
    c = kl_certificate(r["z"], r["delta"])
    # same rows, batched differently: equal up to the reduction order within a row
    assert torch.allclose(c.lower, r["t1pp_lower"], rtol=1e-13, atol=0)
    assert torch.allclose(c.upper, r["t1pp_upper"], rtol=1e-13, atol=0)


@pytest.mark.slow
def test_T1pp_a_wrong_kl_falls_outside_the_certificate_on_most_real_slots(toy_w4a4_slots):
    """The certificate catches a wrong KL on most real W4A4 slots: in bits (÷ log 2, 44% too
    large), halved (a lost factor 2), and with p and q swapped (KL(q ‖ p), which differs from
    KL(p ‖ q) only at third order: here about 60% of slots). T1 and T2 accept all three
    almost everywhere. The margin asked for (1e-6 relative) is far beyond rounding, and each
    fraction is well above ½, so no float summation order moves the verdict."""
    r = toy_w4a4_slots
    lower, upper = r["t1pp_lower"], r["t1pp_upper"]
    n = r["kl"].numel()
    for wrong in (r["kl"] / math.log(2), r["kl"] / 2, r["kl_reverse"]):
        outside = (wrong > upper * (1 + 1e-6)) | (wrong < lower * (1 - 1e-6))
        assert int(outside.sum()) > n / 2


@pytest.mark.slow
def test_T1pp_masked_kl_metric_inside_the_certificate(toy_w4a4_slots):
    """SPEC §5's masked KL, per slot (fairref.eval.metrics.kl_per_slot, whose mean over the
    masked active slots is the metric), lies in the certificate at every real slot: T1″ as
    an oracle for the metric. Skipped where fairref.eval is not present."""
    metrics = pytest.importorskip("fairref.eval.metrics")
    r = toy_w4a4_slots
    kl = metrics.kl_per_slot(r["z"], r["z"] + r["delta"])  # (n,)
    assert_inside_certificate(kl, r["z"], r["delta"])
    # and so is the mean, the reported number: mean(lower) ≤ masked KL ≤ mean(upper)
    c = kl_certificate(r["z"], r["delta"])
    tol = _slot_tol(r["z"], r["delta"], c).mean()
    assert c.lower.mean() - tol <= kl.mean() <= c.upper.mean() + tol
