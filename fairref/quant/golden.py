"""Golden test vectors for the SPEC §1 conventions, Wycheproof style (SPEC §1, "Golden vectors").

``write_vectors(path)`` builds a deterministic (seeded) JSON file; ``verify_vectors(path)``
recomputes every vector with this implementation and compares bit-exactly. The file has
a schema version, a header, ``notes`` explaining each flag, and ``testGroups[].tests[]``
with ``tcId``, ``comment``, ``flags``, inputs and expected results. ``result`` is
``"valid"`` (outputs must match) or ``"invalid"`` (the call must raise ``ValueError``).

Encoding (lossless): a tensor is ``{"shape": [...], "hex": [...]}`` with each float32 as
``float.hex`` of its exact value (``"nan"``/``"inf"`` allowed in invalid inputs), or
``{"shape": [...], "int": [...]}`` for integer tensors, row-major.

Group types: ``QuantizeTest`` (x → q, scale, zero, x̂ for one QuantSpec), ``PackInt4Test``
(q → uint8 nibbles), ``PackCtTest`` (q → compressed-tensors int32 words),
``Int4MatmulTest`` (a_q, s_a, w_q, s_w → out), ``GptqTest`` (W, H, spec, solver options →
q, scale, zero; SPEC §4.3a, float64 working precision). Hard cases are built by construction
in :mod:`fairref.quant.golden_cases`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fairref.quant.grid import QuantSpec, dequantize, quantize
from fairref.quant.int4 import int4_matmul, pack_int4, pack_int32_ct, unpack_int4, unpack_int32_ct

SCHEMA_VERSION = "fairref-int4-vectors/1"

NOTES = {
    "Random": "Seeded Gaussian inputs, no particular structure: the ordinary case.",
    "Tie": "x = (k + 1/2)·s exactly (s a power of two, so x/s is exactly k + 1/2): "
           "round-half-to-even must pick the even neighbour.",
    "NearTie": "x/s (true division, pinned) and x·fl(1/s) (a reciprocal multiply) round to "
               "different integers: catches implementations that multiply by 1/s.",
    "AllZero": "A row/group/token that is all zeros: s = 1 and q = 0 by convention.",
    "Outlier": "One input column is ~100x larger than the rest: its scale unit saturates "
               "the grid while the others round to few levels.",
    "Extremes": "Both ends of the integer grid, -2^(b-1) and 2^(b-1)-1 (0 and 2^b-1 "
                "unsigned), appear: clamping and sign handling at the edges.",
    "OddK": "The last axis K is odd: packing pads a zero nibble / zero bits; groups of odd "
            "size.",
    "MaxAccumulator": "Every product at its largest magnitude: the accumulator reaches "
                      "K·2^(b_a-1)·2^(b_w-1), the edge of the exact float32/int32 path.",
    "DeadHessian": "Some H_ii = 0 (a never-active input): GPTQ sets H_ii = 1, W[:, i] = 0.",
    "InvalidInput": "Bad input (NaN/Inf, out-of-grid values, a group size not dividing K): "
                    "the call must raise ValueError, never return a value.",
}

HEADER = [
    "Test vectors for the fairref quantization conventions (SPEC §1).",
    "Every float is float32, stored losslessly as float.hex of its exact value.",
    "Rounding is half-to-even on x / s (true division); scales and outputs are float32.",
]


# --- encoding --------------------------------------------------------------------------------


def enc_f(t: torch.Tensor) -> dict:
    """Float tensor → {"shape", "hex"} (float32, lossless)."""
    t = t.detach().to(torch.float32).contiguous()
    return {"shape": list(t.shape), "hex": [float(v).hex() for v in t.flatten().tolist()]}


def enc_i(t: torch.Tensor) -> dict:
    """Integer tensor → {"shape", "int"}."""
    return {"shape": list(t.shape), "int": [int(v) for v in t.flatten().tolist()]}


def dec(d: dict, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Inverse of ``enc_f`` / ``enc_i`` (``dtype`` overrides the integer dtype)."""
    if "hex" in d:
        vals = [float.fromhex(h) for h in d["hex"]]
        return torch.tensor(vals, dtype=torch.float64).to(torch.float32).reshape(d["shape"])
    return torch.tensor(d["int"], dtype=dtype or torch.int64).reshape(d["shape"])


def spec_to_dict(spec: QuantSpec) -> dict:
    return {"bits": spec.bits, "symmetric": spec.symmetric, "granularity": spec.granularity,
            "groupSize": spec.group_size, "scaleMode": spec.scale_mode, "clip": spec.clip}


def spec_from_dict(d: dict) -> QuantSpec:
    return QuantSpec(bits=d["bits"], symmetric=d["symmetric"], granularity=d["granularity"],
                     group_size=d["groupSize"], scale_mode=d["scaleMode"], clip=d["clip"])


# --- the computations a vector pins (shared by writer and verifier) -----------------------------


def _run_quantize(group: dict, inp: dict) -> dict:
    spec = spec_from_dict(group["spec"])
    q, s, z = quantize(dec(inp["x"]), spec)
    return {"q": enc_i(q), "scale": enc_f(s), "zero": enc_i(z),
            "xhat": enc_f(dequantize(q, s, z, spec))}


def _run_pack_int4(group: dict, inp: dict) -> dict:
    q = dec(inp["q"], torch.int32)
    packed = pack_int4(q)
    if not torch.equal(unpack_int4(packed, q.shape[-1]), q):
        raise AssertionError("unpack_int4 does not invert pack_int4")
    return {"packed": enc_i(packed)}


def _run_pack_ct(group: dict, inp: dict) -> dict:
    q = dec(inp["q"], torch.int32)
    packed = pack_int32_ct(q, bits=group["bits"])
    if not torch.equal(unpack_int32_ct(packed, q.shape[-1], bits=group["bits"]), q):
        raise AssertionError("unpack_int32_ct does not invert pack_int32_ct")
    return {"packed": enc_i(packed)}


def _run_matmul(group: dict, inp: dict) -> dict:
    out = int4_matmul(dec(inp["a_q"], torch.int32), dec(inp["s_a"]), dec(inp["w_q"], torch.int32),
                      dec(inp["s_w"]), group_size=inp.get("groupSize", group["groupSize"]),
                      bits_a=group["bitsA"], bits_w=group["bitsW"])
    return {"out": enc_f(out)}


def _run_gptq(group: dict, inp: dict) -> dict:
    from fairref.quant.gptq import gptq_quantize  # SPEC §4.3a, a separate module

    opts = dict(group.get("options", {}))
    opts["dtype"] = getattr(torch, opts.get("dtype", "float64"))  # working precision
    res = gptq_quantize(dec(inp["W"]), dec(inp["H"]).to(torch.float64),
                        spec_from_dict(group["spec"]), **opts)
    return {"q": enc_i(res.q), "scale": enc_f(res.scale), "zero": enc_i(res.zero)}


RUNNERS = {"QuantizeTest": _run_quantize, "PackInt4Test": _run_pack_int4,
           "PackCtTest": _run_pack_ct, "Int4MatmulTest": _run_matmul, "GptqTest": _run_gptq}
INPUT_KEYS = {"QuantizeTest": ("x",), "PackInt4Test": ("q",), "PackCtTest": ("q",),
              "Int4MatmulTest": ("a_q", "s_a", "w_q", "s_w", "groupSize"),
              "GptqTest": ("W", "H")}


# --- writing ------------------------------------------------------------------------------------


def build_vectors() -> dict:
    """The whole vectors document (deterministic: every input comes from seeded generators)."""
    from fairref.quant.golden_cases import all_groups  # the cases import this module's codecs

    groups = all_groups()  # [(group header dict, [(comment, flags, inputs, valid)])]
    out_groups, tc = [], 0
    for header, cases in groups:
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
    """Write the golden vectors JSON to ``path``; returns the number of vectors."""
    doc = build_vectors()
    path = Path(path)
    # write beside the target, then rename: a failure never leaves a half-written file
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, separators=(",", ": ")) + "\n")
    tmp.replace(path)
    return doc["numberOfTests"]


# --- verifying ----------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """Outcome of ``verify_vectors``: ``failed`` lists tcIds, ``reasons`` says why."""

    total: int = 0
    failed: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def _check_one(header: dict, test: dict) -> str | None:
    """None when the test passes, otherwise the reason it fails."""
    run = RUNNERS.get(header.get("type"))
    if run is None:
        return f"unknown group type {header.get('type')!r}"
    inputs = {k: test[k] for k in INPUT_KEYS[header["type"]] if k in test}
    if test.get("result") == "invalid":
        try:
            run(header, inputs)
        except ValueError:
            return None
        return "expected ValueError, got a result"
    try:
        got = run(header, inputs)
    except Exception as e:  # noqa: BLE001 - any failure of a valid vector is reported
        return f"raised {type(e).__name__}: {e}"
    for key, val in got.items():
        if test.get(key) != val:
            return f"{key} differs"
    return None


def verify_vectors(path: str | Path) -> VerifyReport:
    """Recompute every vector in ``path`` and compare bit-exactly (SPEC §1)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"path: schema {doc.get('schema')!r} is not {SCHEMA_VERSION!r}")
    report = VerifyReport()
    for group in doc["testGroups"]:
        header = {k: v for k, v in group.items() if k != "tests"}
        for test in group["tests"]:
            report.total += 1
            reason = _check_one(header, test)
            if reason is not None:
                report.failed.append(test["tcId"])
                report.reasons[test["tcId"]] = reason
    return report
