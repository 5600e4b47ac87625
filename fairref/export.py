"""Export a quantized model to the compressed-tensors "pack-quantized" layout (SPEC §1, §7).

A second output format beside fairref's own quantized directory (``fairref.models.
quantized``, SPEC §7): a float checkpoint directory (``config.json``, ``model.safetensors``,
tokenizer and generation config copied from the source) in which every quantized linear
``<name>`` (its path in the model, which is the public checkpoint's name) is stored as

- ``<name>.weight_packed`` — int32 (N, ceil(K·b/32)): offset-binary u = q + 2^(b−1),
  bit-packed along K, value i in bits [i·b, i·b + b) of each row's little-endian stream
  (``fairref.quant.int4.pack_int32_ct``; eight values per word at b = 4);
- ``<name>.weight_scale`` — float32 (N, 1) per channel, (N, K/g) per group, (1,) per tensor;
- ``<name>.weight_shape`` — int64 [N, K];
- ``<name>.weight_zero_point`` — asymmetric weights only: z − 2^(b−1) packed the same way
  along the output axis (so (q − 2^(b−1)) − (z − 2^(b−1)) = q_u − z, SPEC §1);
- ``<name>.bias`` — float32, when the linear has one,

and ``config.json`` is the model's own with a compressed-tensors ``quantization_config``
(``config_groups`` of schemes: the weight args, the dynamic ``input_activations`` when
activations are quantized, ``format: "pack-quantized"``; ``ignore`` lists the linears left
in floating point, such as the LM head). Every other tensor (embeddings, norms, head) is
written under its usual name and dtype, as in a float checkpoint. The library's own
decompressor turns each linear back into exactly Ŵ = dequantize(q) (tests/test_export.py).

**What the format cannot express is refused, not approximated.** compressed-tensors
stores the weight that the linear multiplies the *untransformed* input with, so

- a rotated linear (SPEC §1, ``RotationSpec``): Ŵ is on the grid only in the rotated
  basis (Ŵ Rᵀ is not), so R must run online. compressed-tensors 0.20.1 can state a
  Hadamard ``transform_config`` (same Sylvester matrix, same place: before input
  quantization), but it computes (x · S) / √m with the ±1 matrix S at run time, while
  fairref computes x · R with entries ±fl32(1/√m) (for m ≥ 128 as two factored matmuls):
  the rotated activations differ in their last bits, and so, at near-ties, in their
  quantized values. Measured through the library (its ``apply_transform_config`` on an
  ``nn.Linear``, 192 random tokens, this machine): 70% of the rotated values differ at
  m = 8, 81% at m = 32, 87% at m = 256 (factored); none at m = 16 and 64, where 1/√m is a
  power of two and the sums happened to run in the same order, which nothing guarantees.
  Not fairref's outputs, so refused; a ``random`` rotation (QR of a Gaussian) has no
  counterpart at all;
- the flat solver's learned transform (SPEC §4.3d, ``KroneckerTransform``:
  x diag(ζ)⁻¹ (P_l ⊗ P_r)): no learned dense transform or per-channel divisor exists in
  the format, and folding it into the weight takes Ŵ off the grid. Refused. (Its ζ at the
  q/k/v and gate/up sites is already folded into the RMSNorm weights by calibration, the
  folded forward being the reference, so those norms export unchanged; the ζ left at the
  o and down sites sits inside the transform.)

Activations: compressed-tensors' dynamic symmetric int quantizer (checked in its source,
``calculate_qparams`` / ``_quantize_dequantize``) computes s = amax / ((qmax − qmin)/2) =
amax / (2^(b−1) − ½), q = round(clamp(x / s)) with a true division and round half to even,
x̂ = q·s: SPEC §1's ``scale_mode="full"`` at clip 1, bit for bit (an all-zero token gives
its eps scale where we use 1; q = 0 either way). Its "token" strategy reduces over the
dims after the first two, i.e. per token for the (batch, sequence, K) inputs the models
here pass. So:

- ``a_spec`` "full", clip 1, per token or tensor: stated and exact;
- ``a_spec`` "restricted" (s = amax / (2^(b−1) − 1), the calibration default): stated as the
  nearest scheme, and the exported config's ``fairref_export.notes`` say that a consumer's
  activation rounding is not fairref's (weights stay exact);
- a clip ratio c < 1, asymmetric or per-group activations: refused (the calibrated clip or
  the grid would be silently dropped).

Legend: N output features, K input features, b bits, g group size, G = K/g.
Checked against: compressed-tensors 0.20.1 — its ``QuantizationConfig`` parses the config;
``PackedQuantizationCompressor.decompress``, the model-free ``CompressedTensorsDequantizer``
(weight-only schemes: it re-infers a scheme's format and takes any scheme with input
activations for "int-quantized", ignoring the declared one) and its model-loading path
(``apply_quantization_config``, ``ModelCompressor.compress_model`` / ``decompress_model``)
give exactly Ŵ, and that loaded model's own quantized forward gives exactly our logits
(W4A16, and W4A4 with the "full" activation scale); tests/test_export.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from fairref.files import atomic_directory
from fairref.quant.grid import QuantSpec
from fairref.quant.int4 import pack_int32_ct
from fairref.quant.linear import QuantLinear
from fairref.quant.rotation import RotationSpec
from fairref.quant.transform import KroneckerTransform

FORMAT = "pack-quantized"
#: the compressed-tensors version whose layout and semantics this export was checked against
CT_VERSION = "0.20.1"

_INSTEAD = ("export a method without an input transform (e.g. --method gptq), or keep "
            "fairref's own format (--format fairref)")


def transform_refusal(kind: str) -> str:
    """Why a linear whose input goes through transform ``kind`` ("hadamard", "random",
    "kronecker" or "other") cannot be exported exactly, and what to do instead (module docstring)."""
    why = {
        "hadamard": "its input is rotated by a block-wise Hadamard R (SPEC §1), so Ŵ is on the "
                    "int grid only in the rotated basis and R must run online; "
                    "compressed-tensors' Hadamard transform computes (x·S)/√m with the ±1 "
                    "matrix S while fairref multiplies by entries ±fl32(1/√m), so the rotated "
                    "activations, and the outputs, would not be fairref's",
        "random": "its input is rotated by a seeded random orthogonal R (SPEC §1), which "
                  "compressed-tensors cannot state (its random-hadamard is another matrix), "
                  "and Ŵ Rᵀ is not on the int grid",
        "kronecker": "its input goes through the flat solver's learned transform "
                     "x diag(ζ)⁻¹ (P_l ⊗ P_r) (SPEC §4.3d), which compressed-tensors cannot "
                     "state, and folding it into the weight takes Ŵ off the int grid",
        "other": "its input goes through an input transform that compressed-tensors cannot "
                 "state, and folding it into the weight takes Ŵ off the int grid",
    }
    if kind not in why:
        raise ValueError(f"unknown transform kind {kind!r}; known: {sorted(why)}")
    return f"{why[kind]}; {_INSTEAD}"


def _transform_kind(transform) -> str:
    if isinstance(transform, RotationSpec):
        return transform.kind
    return "kronecker" if isinstance(transform, KroneckerTransform) else "other"


# --- schemes ----------------------------------------------------------------------------------

def _weight_args(w: QuantSpec, where: str) -> dict:
    """compressed-tensors QuantizationArgs of a weight spec (its scales are stored, so the
    scale formula and clip need not be stated)."""
    if not w.symmetric and w.granularity == "tensor":
        raise ValueError(f"{where}: an asymmetric per-tensor weight has no packed zero point in "
                         "compressed-tensors' pack-quantized layout; use per-channel or "
                         "per-group weights")
    # our granularity names are compressed-tensors' strategy names
    return {"num_bits": w.bits, "type": "int", "symmetric": w.symmetric,
            "group_size": w.group_size, "strategy": w.granularity, "dynamic": False}


def _activation_args(a: QuantSpec | None, where: str) -> tuple[dict | None, str | None]:
    """The dynamic ``input_activations`` of an activation spec, and a note when the
    consumer's quantizer is not ours (module docstring); refusals raise."""
    if a is None:
        return None, None
    if not a.symmetric or a.granularity not in ("token", "tensor"):
        how = "asymmetrically" if not a.symmetric else f"per {a.granularity}"
        raise ValueError(f"{where}: activations quantized {how} cannot be stated exactly as "
                         "compressed-tensors dynamic activations (symmetric, per token or per "
                         "tensor only); calibrate with symmetric per-token activations or "
                         "export weight-only (--a-bits 16)")
    if a.clip != 1.0:
        raise ValueError(f"{where}: the activation clip ratio c = {a.clip} has no counterpart "
                         "in compressed-tensors' dynamic activation scale amax/(2^(b−1) − ½), "
                         "so the calibrated clip would be dropped; export a method without an "
                         "activation clip search, or weight-only (--a-bits 16)")
    args = {"num_bits": a.bits, "type": "int", "symmetric": True, "group_size": None,
            "strategy": a.granularity, "dynamic": True}
    note = None
    if a.scale_mode != "full":
        qmax = 2 ** (a.bits - 1) - 1
        note = (f"input activations: fairref quantizes them with s = amax / {qmax} (SPEC §1 "
                f"'restricted'), compressed-tensors with s = amax / {qmax + 0.5}; the weights "
                "are exact, but a consumer's activation rounding, and so its outputs, are "
                "not fairref's")
    return args, note


def _scheme(ql: QuantLinear, where: str) -> tuple[dict, str | None]:
    if ql.transform is not None:
        raise ValueError(f"{where}: cannot be exported to compressed-tensors: "
                         + transform_refusal(_transform_kind(ql.transform)))
    acts, note = _activation_args(ql.a_spec, where)
    scheme = {"weights": _weight_args(ql.w_spec, where), "input_activations": acts,
              "output_activations": None, "format": FORMAT}
    return scheme, note


# --- tensors ----------------------------------------------------------------------------------


def linear_tensors(name: str, ql: QuantLinear) -> dict[str, Tensor]:
    """The pack-quantized tensors of one linear (module docstring), on the CPU."""
    w = ql.w_spec
    N, K = ql.out_features, ql.in_features
    offset = 2 ** (w.bits - 1)
    # the layout's grid is signed: an unsigned asymmetric q_u is stored as q_u − 2^(b−1)
    q = ql.q_w if w.symmetric else ql.q_w - offset  # (N, K) in [−2^(b−1), 2^(b−1) − 1]
    s = ql.s_w.reshape(1) if w.granularity == "tensor" else ql.s_w  # (N, 1), (N, G) or (1,)
    out = {f"{name}.weight_packed": pack_int32_ct(q.cpu(), bits=w.bits),  # (N, ceil(K·b/32))
           f"{name}.weight_scale": s.detach().to(torch.float32).contiguous().cpu(),
           f"{name}.weight_shape": torch.tensor([N, K], dtype=torch.int64)}
    if not w.symmetric:
        # zero points packed along the output axis (compressed-tensors' packed_dim=0)
        z = (ql.z_w - offset).cpu()  # (N, 1) or (N, G), same offset as q
        zp = pack_int32_ct(z.T.contiguous(), bits=w.bits)  # (G, ceil(N·b/32))
        out[f"{name}.weight_zero_point"] = zp.T.contiguous()  # (ceil(N·b/32), G)
    if ql.bias is not None:
        out[f"{name}.bias"] = ql.bias.detach().to(torch.float32).contiguous().cpu()
    return out


# --- the directory ----------------------------------------------------------------------------


def compressed_tensors_config(model: nn.Module) -> tuple[dict, list[str]]:
    """The ``quantization_config`` of ``model`` and the notes on what is not exact.

    Raises ``ValueError`` naming the first linear that cannot be exported and why."""
    qls = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not qls:
        raise ValueError("the model has no QuantLinear: quantize it before exporting it")
    groups: dict[str, tuple[dict, list[str]]] = {}  # scheme JSON → (scheme, module names)
    notes: list[str] = []
    for name, ql in qls.items():
        scheme, note = _scheme(ql, name)
        key = json.dumps(scheme, sort_keys=True)
        groups.setdefault(key, (scheme, []))[1].append(name)
        if note is not None and note not in notes:
            notes.append(note)
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]  # float linears
    config_groups = {}
    for i, (scheme, names) in enumerate(groups.values()):
        # one scheme: every Linear but the ignored ones (llm-compressor's convention);
        # several: each group names its modules
        targets = ["Linear"] if len(groups) == 1 else names
        config_groups[f"group_{i}"] = {"targets": targets, **scheme}
    qc = {"quant_method": "compressed-tensors", "format": FORMAT,
          "quantization_status": "compressed", "version": CT_VERSION,
          "config_groups": config_groups, "ignore": ignore, "kv_cache_scheme": None,
          "global_compression_ratio": None, "sparsity_config": {}, "transform_config": {}}
    return qc, notes


def export_compressed_tensors(model: nn.Module, path: str | Path, *, method: dict | None = None,
                              source: str | Path | None = None,
                              overwrite: bool = False) -> Path:
    """Write ``model`` (with QuantLinears) as a compressed-tensors pack-quantized directory.

    ``method``: JSON-able record of how it was calibrated, kept in ``config.json`` under
    ``fairref_export`` with the notes on what a consumer computes differently; ``source``:
    the float checkpoint whose tokenizer.json and generation_config.json are copied. Written
    atomically; an existing non-empty directory is refused unless ``overwrite``. Everything
    is checked before anything is written. Returns ``path``.
    """
    qc, notes = compressed_tensors_config(model)  # raises before anything is written
    qls = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    tensors: dict[str, Tensor] = {}
    for name, ql in qls.items():
        tensors.update(linear_tensors(name, ql))
    inside = tuple(f"{n}." for n in qls)
    for k, v in model.state_dict().items():
        if not k.startswith(inside):  # embeddings, norms, head: as in a float checkpoint
            tensors[k] = v.detach().contiguous().cpu()
    cfg = model.config
    config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    config["quantization_config"] = qc
    config["fairref_export"] = {
        "format": f"compressed-tensors {FORMAT}, checked against compressed-tensors {CT_VERSION}",
        "method": method or {},
        "exact": "every packed weight decompresses to fairref's dequantized weight bit for bit",
        "cannot_express": "input rotations (SPEC §1) and the flat solver's learned transforms "
                          "(SPEC §4.3d, whose o/down smoothing ζ could be folded only into "
                          "v_proj/up_proj scales, not bit-exactly in float32); a model using "
                          "them is refused, so none is present here",
        "notes": notes or ["activations, where quantized, use compressed-tensors' own dynamic "
                           "quantizer, which is fairref's bit for bit (SPEC §1 'full', clip 1)"],
    }
    path = Path(path)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if source is not None:
            for f in ("tokenizer.json", "generation_config.json"):
                if (Path(source) / f).is_file():
                    shutil.copyfile(Path(source) / f, tmp / f)
    return path


