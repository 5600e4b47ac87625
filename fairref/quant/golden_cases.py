"""The golden vectors' cases, every hard case of SPEC §1 built by construction, and the
writer that turns them into the vectors file of :mod:`fairref.quant.golden`.

Each builder returns ``(comment, flags, inputs, valid)`` tuples for one test group of
:mod:`fairref.quant.golden` (ties at .5, near-ties where ``x * (1/s)`` and ``x / s`` round
apart, all-zero units, a single outlier column, the grid extremes, odd K, the largest
exact accumulator, a dead Hessian diagonal, invalid inputs). Everything is seeded, so the
vectors file is reproducible byte for byte: ``build_vectors()`` is the document,
``write_vectors(path)`` writes it atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fairref.files import write_text_atomic
from fairref.quant.golden import HEADER, NOTES, RUNNERS, SCHEMA_VERSION, enc_f, enc_i, spec_to_dict
from fairref.quant.grid import QuantSpec, qparams, quantize

# --- case construction (deterministic; every hard case is built, not filtered) -------------------

_R, _K = 3, 8  # rows and columns of a QuantizeTest input


def _f32(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32).copy())


def _units(spec: QuantSpec, R: int, K: int) -> tuple[int, int]:
    """(U, m): the R×K input seen as U scale units of m elements each (row-major)."""
    if spec.granularity == "tensor":
        return 1, R * K
    if spec.granularity == "group":
        return R * K // spec.group_size, spec.group_size
    return R, K


def find_near_tie(s: np.float32, qmax: int, rng: np.random.Generator) -> np.float32 | None:
    """A float32 x ∈ (0, qmax·s) with round(x / s) ≠ round(x · fl(1/s)), or None.

    Scans the float32 neighbours of (k + ½)·s: there x/s is within a few ulps of a tie, and
    the reciprocal's own rounding error can push x·fl(1/s) across it.
    """
    s = np.float32(s)
    r = np.float32(1) / s  # the reciprocal an implementation might (wrongly) multiply by
    for k in rng.permutation(max(qmax - 1, 1)):
        x0 = np.array([np.float32((k + 0.5) * float(s))], dtype=np.float32)
        for d in range(-16, 17):
            x = (x0.view(np.uint32) + np.uint32(d) if d >= 0 else
                 x0.view(np.uint32) - np.uint32(-d)).view(np.float32)[0]  # d ulps away
            if 0 < x < qmax * s and np.round(x / s) != np.round(x * r):
                return x
    return None


def _sym_unit_scale(spec: QuantSpec, amax: np.float32) -> np.float32:
    one = QuantSpec(bits=spec.bits, scale_mode=spec.scale_mode, clip=spec.clip)
    s, _ = qparams(_f32([[amax]]), one)
    return np.float32(s.item())


def _quantize_cases(spec: QuantSpec, rng: np.random.Generator) -> list:
    R, K = _R, (9 if spec.granularity == "group" and spec.group_size == 3 else _K)
    U, m = _units(spec, R, K)
    cases = []

    def add(comment, flags, x, valid=True):
        cases.append((comment, flags, {"x": enc_f(_f32(x).reshape(R, K))}, valid))

    add("random Gaussian", ["Random"] + (["OddK"] if K % 2 else []), rng.normal(0, 2, (R, K)))
    if spec.clip == 1.0:  # ties: s = s0 = 2^e exactly, x = (k + ½)·s0
        s0 = 2.0 ** int(rng.integers(-3, 3))
        x = np.empty((U, m))
        if spec.symmetric:
            D, lo_k = spec.scale_divisor, (-spec.qmax - 1 if spec.scale_mode == "full" else -spec.qmax)
            x[:] = (rng.integers(lo_k, spec.qmax, (U, m)) + 0.5) * s0
            x[:, 0] = D * s0 * rng.choice([-1, 1], U)  # the unit's amax: s = D·s0 / D = s0
        else:
            a = int(rng.integers(1, spec.qmax))  # lo = −a·s0, hi = (2^b − 1 − a)·s0
            x[:] = (rng.integers(-a, spec.qmax - a, (U, m)) + 0.5) * s0
            x[:, 0], x[:, 1] = -a * s0, (spec.qmax - a) * s0
        add("x = (k + 1/2)·s exactly: half to even", ["Tie"], x)
    if spec.symmetric and spec.clip == 1.0:  # near-ties: x/s and x·fl(1/s) round apart
        x = rng.uniform(-0.9, 0.9, (U, m))
        for u in range(U):
            while True:
                amax = np.float32(rng.uniform(1, 4))
                xt = find_near_tie(_sym_unit_scale(spec, amax), spec.qmax, rng)
                if xt is not None:
                    break
            x[u, 0], x[u, 1] = amax, xt * rng.choice([-1, 1])
        add("x/s and x·(1/s) round differently; x/s is pinned", ["NearTie"], x)
    x = rng.normal(0, 1, (U, m))
    x[0] = 0.0
    add("one all-zero scale unit: s = 1, q = 0", ["AllZero"], x)
    x = rng.normal(0, 1, (R, K))
    x[:, int(rng.integers(K))] *= 100.0
    add("one outlier column, 100x larger", ["Outlier"], x)
    s0 = 2.0 ** int(rng.integers(-2, 2))  # ends built exactly: ±D·s0, or −a·s0 and (2^b−1−a)·s0
    lo, hi = ((-spec.scale_divisor * s0, spec.scale_divisor * s0) if spec.symmetric else
              (-(spec.qmax // 2) * s0, (spec.qmax - spec.qmax // 2) * s0))
    x = rng.uniform(lo / 2, hi / 2, (U, m))
    x[:, 0], x[:, 1] = hi, lo
    q, _, _ = quantize(_f32(x.reshape(R, K)), spec)
    if int(q.min()) == spec.qmin and int(q.max()) == spec.qmax:
        add("both grid ends are hit (clamped)", ["Extremes"], x)
    if spec.granularity != "group" or spec.group_size == 4:
        x = rng.normal(0, 1, (R, K))
        x[1, 2] = float("nan")
        add("NaN in x must raise ValueError", ["InvalidInput"], x, valid=False)
        x[1, 2] = float("-inf")
        add("-Inf in x must raise ValueError", ["InvalidInput"], x, valid=False)
    return cases


QUANT_SPECS = (
    [QuantSpec(bits=b, scale_mode=mode) for b in (2, 3, 4, 8) for mode in ("restricted", "full")]
    + [QuantSpec(bits=4, granularity=gr, group_size=4 if gr == "group" else None, scale_mode=mode)
       for gr in ("group", "token", "tensor") for mode in ("restricted", "full")]
    + [QuantSpec(bits=4, granularity="group", group_size=3),  # odd K = 9 in groups of 3
       QuantSpec(bits=4, clip=0.9),  # clip < 1: -2^(b-1) becomes reachable
       QuantSpec(bits=4, symmetric=False), QuantSpec(bits=8, symmetric=False),
       QuantSpec(bits=4, symmetric=False, granularity="group", group_size=4)]
)


def _pack_cases(bits: int, rng: np.random.Generator) -> list:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    cases = []
    shapes = [((3, 8), ["Random"]), ((3, 7), ["OddK"]), ((1, 1), ["OddK"]), ((2, 17), ["OddK"]),
              ((5,), ["OddK"]), ((2, 2, 6), ["Random"])]
    for shape, flags in shapes:
        cases.append((f"random values, shape {shape}", flags,
                      {"q": enc_i(torch.from_numpy(rng.integers(lo, hi + 1, shape)))}, True))
    ext = torch.tensor([[lo, hi] * 4 + [lo], [hi, lo] * 4 + [hi]])  # (2, 9)
    cases.append(("alternating grid ends", ["Extremes", "OddK"], {"q": enc_i(ext)}, True))
    cases.append(("all zeros", ["AllZero"], {"q": enc_i(torch.zeros(2, 8, dtype=torch.int64))}, True))
    cases.append((f"{hi + 1} is outside the grid", ["InvalidInput"],
                  {"q": enc_i(torch.tensor([[0, hi + 1]]))}, False))
    cases.append((f"{lo - 1} is outside the grid", ["InvalidInput"],
                  {"q": enc_i(torch.tensor([[lo - 1, 0, 1]]))}, False))
    return cases


MATMUL_CONFIGS = [(4, 4, None, 16), (4, 4, 4, 16), (4, 4, 3, 9), (8, 8, None, 16),
                  (8, 4, 8, 16), (2, 2, None, 8)]  # (bits_a, bits_w, group size, K)


def _matmul_cases(ba: int, bw: int, g: int | None, K: int, rng: np.random.Generator) -> list:
    T, N, G = 3, 4, (1 if g is None else K // g)
    qa, qw = 2 ** (ba - 1), 2 ** (bw - 1)

    def scales(shape):  # positive float32 scales spanning a few binades
        return _f32(rng.uniform(1, 2, shape) * 2.0 ** rng.integers(-8, 1, shape))

    def case(comment, flags, a, w, s_a=None, s_w=None, valid=True, **extra):
        inp = {"a_q": enc_i(torch.as_tensor(a)), "s_a": enc_f(scales((T, 1)) if s_a is None else s_a),
               "w_q": enc_i(torch.as_tensor(w)), "s_w": enc_f(scales((N, G)) if s_w is None else s_w)}
        return (comment, flags, {**inp, **extra}, valid)

    def ra(lo, hi, shape):
        return torch.from_numpy(rng.integers(lo, hi + 1, shape))

    odd = ["OddK"] if K % 2 else []
    cases = [case("random operands", ["Random"] + odd, ra(-qa, qa - 1, (T, K)), ra(-qw, qw - 1, (N, K)))]
    cases.append(case("every product at its maximum", ["MaxAccumulator"] + odd,
                      torch.full((T, K), -qa), torch.full((N, K), -qw)))
    ends_a = torch.tensor([-qa, qa - 1])[torch.from_numpy(rng.integers(0, 2, (T, K)))]
    ends_w = torch.tensor([-qw, qw - 1])[torch.from_numpy(rng.integers(0, 2, (N, K)))]
    ends_a[0, :2], ends_w[0, :2] = torch.tensor([-qa, qa - 1]), torch.tensor([-qw, qw - 1])
    cases.append(case("only grid ends in a_q and w_q", ["Extremes"] + odd, ends_a, ends_w))
    a = ra(-qa, qa - 1, (T, K))
    a[0] = 0
    w = ra(-qw, qw - 1, (N, K))
    w[1, : (g or K)] = 0
    cases.append(case("a zero token (s_a = 1) and a zero weight group", ["AllZero"] + odd, a, w,
                      s_a=torch.cat([torch.ones(1, 1), scales((T - 1, 1))])))
    a = ra(-1, 1, (T, K))
    a[:, int(rng.integers(K))] = qa - 1
    cases.append(case("one outlier column of a_q", ["Outlier"] + odd, a, ra(-qw, qw - 1, (N, K))))
    if g is None:
        k7 = 7
        cases.append(case("odd K = 7", ["OddK"], ra(-qa, qa - 1, (T, k7)), ra(-qw, qw - 1, (N, k7))))
    else:
        cases.append(case(f"group size {g + 1} does not divide K={K}", ["InvalidInput"],
                          ra(-qa, qa - 1, (T, K)), ra(-qw, qw - 1, (N, K)), valid=False,
                          groupSize=g + 1))
    cases.append(case(f"a_q = {qa} is outside the {ba}-bit grid", ["InvalidInput"],
                      torch.full((T, K), qa), ra(-qw, qw - 1, (N, K)), valid=False))
    return cases


def all_groups() -> list:
    """[(group header, [(comment, flags, inputs, valid)])] for every test group, seeded."""
    rng = np.random.default_rng(20261122)
    groups = [({"type": "QuantizeTest", "spec": spec_to_dict(sp)}, _quantize_cases(sp, rng))
              for sp in QUANT_SPECS]
    groups.append(({"type": "PackInt4Test"}, _pack_cases(4, rng)))
    groups += [({"type": "PackCtTest", "bits": b}, _pack_cases(b, rng)) for b in (2, 3, 4, 8)]
    groups += [({"type": "Int4MatmulTest", "bitsA": ba, "bitsW": bw, "groupSize": g},
                _matmul_cases(ba, bw, g, K, rng)) for ba, bw, g, K in MATMUL_CONFIGS]
    groups += _gptq_groups(rng)
    return groups


def _gptq_cases(spec: QuantSpec, rng: np.random.Generator) -> list:
    """W (N, K) and H = 2 X Xᵀ / n (float64 values stored as float32 hex, so exact)."""
    N, K, n = 4, 16, 24
    cases = []

    def case(comment, flags, X, W=None):
        W = rng.normal(0, 1, (N, K)) if W is None else W
        H = (2.0 * X @ X.T / n).astype(np.float32)  # (K, K), symmetric, PSD up to rounding
        H = (H + H.T) / 2  # exactly symmetric
        return (comment, flags, {"W": enc_f(_f32(W)), "H": enc_f(_f32(H))}, True)

    X = rng.normal(0, 1, (K, n))
    cases.append(case("random Gaussian inputs", ["Random"], X))
    X = rng.normal(0, 1, (K, n))
    X[[2, 9]] = 0.0  # two never-active input features
    cases.append(case("H_22 = H_99 = 0: dead columns", ["DeadHessian"], X))
    X = rng.normal(0, 1, (K, n))
    X[5] *= 30.0
    W = rng.normal(0, 1, (N, K))
    W[:, 11] *= 20.0
    cases.append(case("one outlier input feature and one outlier weight column", ["Outlier"], X, W))
    X = rng.normal(0, 1, (K, n))
    X[:8] = X[8:] + 1e-3 * rng.normal(0, 1, (8, n))  # nearly collinear pairs: ill-conditioned H
    cases.append(case("nearly collinear features (ill-conditioned H)", ["Random"], X))
    return cases


GPTQ_CONFIGS = [  # (spec, solver options); float64 working precision keeps BLAS-order effects
    (QuantSpec(bits=4), {}),  # far below the float32 grid rounding, so vectors are portable
    (QuantSpec(bits=4, granularity="group", group_size=4), {"blocksize": 8}),
    (QuantSpec(bits=4, granularity="group", group_size=4), {"static_groups": False}),
    (QuantSpec(bits=3, scale_mode="full"), {"act_order": True}),
]


def _gptq_groups(rng: np.random.Generator) -> list:
    """GptqTest groups (W, H, spec → q, scale, zero), SPEC §4.3a."""
    return [({"type": "GptqTest", "spec": spec_to_dict(sp), "options": {**o, "dtype": "float64"}},
             _gptq_cases(sp, rng)) for sp, o in GPTQ_CONFIGS]


# --- the document ---------------------------------------------------------------------------


def build_vectors() -> dict:
    """The whole vectors document (deterministic: every input comes from seeded generators)."""
    out_groups, tc = [], 0
    for header, cases in all_groups():  # [(group header, [(comment, flags, inputs, valid)])]
        run = RUNNERS[header["type"]]
        tests = []
        for comment, flags, inputs, valid in cases:
            tc += 1
            t = {"tcId": tc, "comment": comment, "flags": flags, **inputs,
                 "result": "valid" if valid else "invalid"}
            if valid:
                t.update(run(header, inputs))
            else:
                try:
                    run(header, inputs)
                except ValueError:
                    pass
                else:
                    raise AssertionError(f"invalid case {comment!r} did not raise ValueError")
            tests.append(t)
        out_groups.append({**header, "tests": tests})
    return {"schema": SCHEMA_VERSION, "algorithm": "fairref SPEC §1 quantization",
            "numberOfTests": tc, "header": HEADER, "notes": NOTES, "testGroups": out_groups}


def write_vectors(path: str | Path) -> int:
    """Write the golden vectors JSON to the file ``path``; returns the number of vectors.

    Atomic (a failure leaves no partial file and no temporary); a missing parent folder is
    created; a directory at ``path`` is a ``ValueError``."""
    doc = build_vectors()
    write_text_atomic(path, json.dumps(doc, indent=1, separators=(",", ": ")) + "\n")
    return doc["numberOfTests"]
