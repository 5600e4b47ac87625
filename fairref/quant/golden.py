"""Golden test vectors for the SPEC §1 conventions, Wycheproof style (SPEC §1, "Golden vectors").

This module is the file format and the verifier: the encoding, the computation each group
type pins (``RUNNERS``) and ``verify_vectors(path)``, which recomputes every vector with
this implementation and compares bit-exactly. The writer, ``write_vectors(path)``, lives
with the cases in :mod:`fairref.quant.golden_cases`, which depends on this module and not
the reverse (a deterministic, seeded JSON file). The file has
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

A file that is not a vectors file at all (not JSON, another schema, no ``testGroups``) is a
``ValueError`` naming the file; a vector that disagrees is a *result* (its tcId in
:class:`VerifyReport`), never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fairref.files import read_json
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
        except Exception as e:  # noqa: BLE001 - e.g. a malformed vector: report, go on
            return f"expected ValueError, raised {type(e).__name__}: {e}"
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
    """Recompute every vector in ``path`` and compare bit-exactly (SPEC §1).

    Raises ``FileNotFoundError`` / ``ValueError`` (naming ``path``) when the file is not a
    vectors file of this schema; disagreeing vectors are reported, not raised."""
    path = Path(path)
    doc = read_json(path, "vectors file")
    groups = _check_layout(doc, path)
    report = VerifyReport()
    for group in groups:
        header = {k: v for k, v in group.items() if k != "tests"}
        for test in group["tests"]:
            report.total += 1
            reason = _check_one(header, test)
            if reason is not None:
                report.failed.append(test["tcId"])
                report.reasons[test["tcId"]] = reason
    return report


def _check_layout(doc: object, path: Path) -> list[dict]:
    """``doc["testGroups"]`` after checking the document's shape, or a ``ValueError``."""
    hint = "; write a fresh one with `fairref golden --out FILE`"
    if not isinstance(doc, dict):
        raise ValueError(f"{path} holds a JSON {type(doc).__name__}, not a vectors file (a JSON "
                         f"object with 'schema' and 'testGroups'){hint}")
    if doc.get("schema") != SCHEMA_VERSION:
        got = "no 'schema' key" if "schema" not in doc else f"schema {doc['schema']!r}"
        raise ValueError(f"{path} has {got}, not {SCHEMA_VERSION!r}: it is not a fairref "
                         f"int4 vectors file, or one of another version{hint}")
    groups = doc.get("testGroups")
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"{path}: 'testGroups' is missing or not a non-empty list{hint}")
    for i, group in enumerate(groups):
        tests = group.get("tests") if isinstance(group, dict) else None
        if not isinstance(tests, list):
            raise ValueError(f"{path}: testGroups[{i}] is not an object with a 'tests' "
                             f"list{hint}")
        for j, test in enumerate(tests):
            if not isinstance(test, dict) or not isinstance(test.get("tcId"), int):
                raise ValueError(f"{path}: testGroups[{i}].tests[{j}] is not an object "
                                 f"with an integer 'tcId'{hint}")
    return groups
