"""Quantized checkpoint directories in and out (SPEC §7).

A quantized directory is a float checkpoint directory whose ``config.json`` carries a
``quantization_config`` and whose ``model.safetensors`` holds, for every quantized linear
``<name>`` (its path in the model, e.g. ``model.transformer.blocks.0.q_proj``):

- ``<name>.weight_packed`` — the integer weight: two's-complement nibbles, two per uint8
  along K (``fairref.quant.int4.pack_int4``) when ``bits == 4``, else int8; an asymmetric
  (unsigned, [0, 2^b − 1]) grid is stored offset by −2^(b−1) so that it fits the same
  signed containers;
- ``<name>.weight_scale`` — float32 scales, (N, 1) per channel or (N, K/g) per group;
- ``<name>.weight_zero`` — int32 zero points, only for asymmetric weights;
- ``<name>.bias`` — float32, when the linear has one;
- ``<name>.transform.<key>`` — the tensors of its input transform (a learned transform's
  factors P_l, P_r and smoothing ζ); the transform's JSON description in the config names
  them as ``"tensor:<key>"``.

Everything else in the model (embeddings, norms — with any folded smoothing —, the head)
is stored in float32 under its usual name. ``quantization_config`` records, per linear, its
weight and activation specs (``fairref.quant.grid.QuantSpec`` fields) and its transform
description (a rotation is pure data: kind, dim, block, seed), and for the whole model the
method, the solver settings and the file of the Stage I prior used, if any (copied in).
Reloading gives bit-identical outputs: every stored number is the one the forward uses.

``save_quantized`` writes atomically (a temporary directory, then a rename) and refuses an
existing directory unless ``overwrite``. ``load_quantized`` checks that the tensors agree
with the ``quantization_config`` (shapes, dtypes, names) and names what does not.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from fairref.files import atomic_directory, read_json
from fairref.quant.grid import QuantSpec
from fairref.quant.int4 import pack_int4, unpack_int4
from fairref.quant.linear import QuantLinear, transform_from_dict

FORMAT = "fairref-int"
VERSION = 1
_TENSOR_REF = "tensor:"


def _spec_to_dict(spec: QuantSpec | None) -> dict | None:
    return None if spec is None else dataclasses.asdict(spec)


def _spec_from_dict(d: dict | None, where: str) -> QuantSpec | None:
    if d is None:
        return None
    try:
        return QuantSpec(**d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad quantization spec {d!r}: {e}") from None


def _split_tensors(desc: dict, prefix: str, out: dict[str, Tensor]) -> dict:
    """Replace every array value (a tensor, or a list of numbers) of a transform description
    by a reference to a float32 tensor in ``out`` (float32 values survive the trip exactly)."""
    clean = {}
    for k, v in desc.items():
        if isinstance(v, (Tensor, list)):
            t = v.detach() if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float32)
            out[f"{prefix}.transform.{k}"] = t.to(torch.float32).contiguous().cpu()
            clean[k] = _TENSOR_REF + k
        else:
            clean[k] = v
    return clean


def _join_tensors(desc: dict, prefix: str, tensors: dict[str, Tensor], where: str) -> dict:
    full = {}
    for k, v in desc.items():
        if isinstance(v, str) and v.startswith(_TENSOR_REF):
            name = f"{prefix}.transform.{v[len(_TENSOR_REF):]}"
            if name not in tensors:
                raise ValueError(f"{where}: the transform of {prefix} refers to tensor {name!r}, "
                                 "which model.safetensors lacks")
            full[k] = tensors.pop(name)
        else:
            full[k] = v
    return full


def quantized_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """The model's QuantLinear modules by their path in the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_quantized(model, path: str | Path, *, method: dict | None = None,
                   prior_file: str | Path | None = None, source: str | Path | None = None,
                   overwrite: bool = False) -> Path:
    """Write the quantized ``model`` as a directory (module docstring).

    ``method``: JSON-able record of the method and solver settings used; ``prior_file``: the
    Stage I prior JSON to copy in as ``prior.json``; ``source``: the float checkpoint
    directory whose tokenizer.json and generation_config.json are copied alongside.
    """
    qls = quantized_linears(model)
    if not qls:
        raise ValueError("the model has no QuantLinear: quantize it before saving it as a "
                         "quantized checkpoint (fairref.models.save writes float models)")
    tensors: dict[str, Tensor] = {}
    modules = {}
    for name, ql in qls.items():
        # asymmetric grids are unsigned [0, 2^b − 1]: stored offset by −2^(b−1) (module doc)
        q = ql.q_w if ql.w_spec.symmetric else ql.q_w - 2 ** (ql.w_spec.bits - 1)
        tensors[f"{name}.weight_packed"] = (pack_int4(q) if ql.w_spec.bits == 4
                                            else q.to(torch.int8)).contiguous().cpu()
        tensors[f"{name}.weight_scale"] = ql.s_w.contiguous().cpu()
        if not ql.w_spec.symmetric:
            tensors[f"{name}.weight_zero"] = ql.z_w.contiguous().cpu()
        if ql.bias is not None:
            tensors[f"{name}.bias"] = ql.bias.contiguous().cpu()
        desc = None if ql.transform is None else _split_tensors(ql.transform.to_dict(), name, tensors)
        modules[name] = {"shape": [ql.out_features, ql.in_features],
                         "weights": _spec_to_dict(ql.w_spec),
                         "activations": _spec_to_dict(ql.a_spec),
                         "bias": ql.bias is not None, "transform": desc}
    inside = tuple(f"{n}." for n in qls)
    for k, v in model.state_dict().items():
        if not k.startswith(inside):
            tensors[k] = v.detach().to(torch.float32).contiguous().cpu()
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))
    config["quantization_config"] = {
        "quant_method": "fairref", "format": FORMAT, "version": VERSION,
        "method": method or {}, "prior": "prior.json" if prior_file is not None else None,
        "modules": modules,
    }
    path = Path(path)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if prior_file is not None:
            shutil.copyfile(prior_file, tmp / "prior.json")
        if source is not None:
            for f in ("tokenizer.json", "generation_config.json"):
                if (Path(source) / f).is_file():
                    shutil.copyfile(Path(source) / f, tmp / f)
    return path


def is_quantized_dir(path: str | Path) -> bool:
    """Whether ``path/config.json`` carries a fairref ``quantization_config``."""
    f = Path(path) / "config.json"
    if not f.is_file():
        return False
    raw = read_json(f, "config")
    return isinstance(raw, dict) and isinstance(raw.get("quantization_config"), dict)


def load_quantized(path: str | Path, build_float_model, tensors: dict[str, Tensor]):
    """Rebuild the quantized model of directory ``path`` (module docstring).

    ``build_float_model(config_dict)`` builds the float architecture from the config
    without its ``quantization_config``; ``tensors`` is the whole of model.safetensors.
    """
    path = Path(path)
    where = f"{path / 'config.json'}"
    raw = read_json(path / "config.json", "config")
    qc = raw.pop("quantization_config")
    if qc.get("format") != FORMAT or qc.get("version") != VERSION:
        raise ValueError(f"{where}: quantization_config format {qc.get('format')!r} version "
                         f"{qc.get('version')!r} is not {FORMAT!r} version {VERSION}; this "
                         "fairref cannot read it")
    modules = qc.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"{where}: quantization_config.modules must list the quantized linears")
    model = build_float_model(raw)
    tensors = dict(tensors)
    for name, m in modules.items():
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: quantization_config names module {name!r}, which the "
                             "model does not have") from None
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"{where}: {name!r} is a {type(lin).__name__}, not a linear")
        N, K = lin.out_features, lin.in_features
        if list(m.get("shape", [])) != [N, K]:
            raise ValueError(f"{where}: {name} has shape {m.get('shape')} in the config but the "
                             f"architecture gives {[N, K]}")
        w_spec = _spec_from_dict(m.get("weights"), f"{where} ({name})")
        a_spec = _spec_from_dict(m.get("activations"), f"{where} ({name})")

        def take(key: str, dtype: torch.dtype, shape: tuple | None) -> Tensor:
            full = f"{name}.{key}"
            if full not in tensors:
                raise ValueError(f"{path / 'model.safetensors'}: missing tensor {full!r} that "
                                 "the quantization_config implies")
            t = tensors.pop(full)
            if t.dtype != dtype or (shape is not None and tuple(t.shape) != shape):
                raise ValueError(f"{path / 'model.safetensors'}: {full} is {t.dtype} "
                                 f"{tuple(t.shape)}, expected {dtype} {shape} from the "
                                 "quantization_config")
            return t

        if w_spec.bits == 4:
            q = unpack_int4(take("weight_packed", torch.uint8, (N, (K + 1) // 2)), K)
        else:
            q = take("weight_packed", torch.int8, (N, K)).to(torch.int32)
        if not w_spec.symmetric:
            q = q + 2 ** (w_spec.bits - 1)  # back to the unsigned grid
        s = take("weight_scale", torch.float32, None)
        z = None if w_spec.symmetric else take("weight_zero", torch.int32, None)
        bias = take("bias", torch.float32, (N,)) if m.get("bias") else None
        desc = m.get("transform")
        transform = None
        if desc is not None:
            transform = transform_from_dict(_join_tensors(desc, name, tensors, where))
        try:
            ql = QuantLinear.from_quantized(q, s, z, w_spec, a_spec, bias, transform)
        except ValueError as e:
            raise ValueError(f"{path}: {name}: {e}") from None
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, ql)
    state = model.state_dict()
    extra = sorted(set(tensors) - set(state))
    missing = sorted(set(state) - set(tensors) - {k for k in state if k.startswith(
        tuple(f"{n}." for n in modules))})
    if extra or missing:
        raise ValueError(f"{path / 'model.safetensors'}: "
                         + (f"unexpected tensors {extra[:3]}" if extra else "")
                         + (" and " if extra and missing else "")
                         + (f"missing tensors {missing[:3]}" if missing else ""))
    model.load_state_dict(tensors, strict=False)
    model.quantization_config = qc
    return model
