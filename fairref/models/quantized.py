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

The tensors live in one ``model.safetensors`` (the default) or, with
``shard_per_block=True`` and in everything layer streaming writes
(``fairref.models.blocks``), in ``model-0000ℓ-of-0000M.safetensors`` shards — shard ℓ + 1
holds block ℓ, the last one (M = N + 1) the embedding, final norm and head — listed by a
``model.safetensors.index.json`` in the layout of the float checkpoints. The two layouts
hold the same tensors bit for bit; both writers build them with :func:`quantized_tensors`
and the config with :func:`quantized_config`, so a streamed directory is byte-identical
to ``save_quantized(..., shard_per_block=True)`` of the same model.

``save_quantized`` checks the free disk space first, then writes atomically (a temporary
directory, then a rename) and refuses an existing directory unless ``overwrite``.
``load_quantized`` (through :func:`rebuild_quantized`, which also rebuilds one streamed
block on resume) checks that the tensors agree with the ``quantization_config`` (shapes,
dtypes, names) and names what does not.
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
from fairref.models.safetensors_io import (
    WEIGHTS_FILE, bytes_to_write, check_free_space, shard_file, tensor_bytes, write_index,
)
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
                                 "which they lack")
            full[k] = tensors.pop(name)
        else:
            full[k] = v
    return full


def quantized_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """The model's QuantLinear modules by their path in the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def blocks_prefix(model: nn.Module) -> str:
    """The state-dict prefix of ``model.blocks`` ("model.transformer.blocks" for LLaDA,
    "model.layers" for Dream): block ℓ's tensors are named ``f"{prefix}.{ℓ}.…"``."""
    for name, m in model.named_modules():
        if m is model.blocks:
            return name
    raise ValueError(f"{type(model).__name__}.blocks is not a submodule of the model")


def quantized_tensors(module: nn.Module, prefix: str = "") -> tuple[dict[str, Tensor], dict]:
    """What the directory stores for ``module`` (the whole model, or one block): the tensors
    (module docstring) and the per-linear descriptions of ``quantization_config.modules``,
    every name prefixed by ``prefix`` (e.g. "model.transformer.blocks.3")."""
    pre = f"{prefix}." if prefix else ""
    qls = quantized_linears(module)
    tensors: dict[str, Tensor] = {}
    modules = {}
    for local, ql in qls.items():
        name = pre + local
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
    for k, v in module.state_dict().items():
        if not k.startswith(inside):
            tensors[pre + k] = v.detach().to(torch.float32).contiguous().cpu()
    return tensors, modules


def quantized_config(model, modules: dict, method: dict | None, has_prior: bool) -> str:
    """The text of a quantized directory's config.json: the model's config with its
    ``quantization_config`` (module docstring)."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))
    config["quantization_config"] = {
        "quant_method": "fairref", "format": FORMAT, "version": VERSION,
        "method": method or {}, "prior": "prior.json" if has_prior else None,
        "modules": modules,
    }
    return json.dumps(config, indent=2) + "\n"


def side_files(prior_file: str | Path | None, source: str | Path | None) -> dict[str, Path]:
    """The files copied beside the weights: ``prior.json`` and the source's tokenizer.json
    and generation_config.json (those present), by their name in the directory."""
    files = {} if prior_file is None else {"prior.json": Path(prior_file)}
    if prior_file is not None and not Path(prior_file).is_file():
        raise FileNotFoundError(f"no prior file at {prior_file}")
    if source is not None:
        for f in ("tokenizer.json", "generation_config.json"):
            if (Path(source) / f).is_file():
                files[f] = Path(source) / f
    return files


def save_quantized(model, path: str | Path, *, method: dict | None = None,
                   prior_file: str | Path | None = None, source: str | Path | None = None,
                   overwrite: bool = False, shard_per_block: bool = False) -> Path:
    """Write the quantized ``model`` as a directory (module docstring).

    ``method``: JSON-able record of the method and solver settings used; ``prior_file``: the
    Stage I prior JSON to copy in as ``prior.json``; ``source``: the float checkpoint
    directory whose tokenizer.json and generation_config.json are copied alongside.
    ``shard_per_block``: one shard per block plus one for the rest (embedding, final norm,
    head) and an index, the layout the streaming writer (``fairref.models.blocks``)
    produces byte for byte; default one ``model.safetensors``. Free disk space is checked
    against the bytes to be written before anything is written (``ValueError`` when short).
    """
    if not quantized_linears(model):
        raise ValueError("the model has no QuantLinear: quantize it before saving it as a "
                         "quantized checkpoint (fairref.models.save writes float models)")
    if shard_per_block:
        prefix = blocks_prefix(model)
        parts = [quantized_tensors(b, f"{prefix}.{l}") for l, b in enumerate(model.blocks)]
        rest = {k: v.detach().to(torch.float32).contiguous().cpu()
                for k, v in model.state_dict().items() if not k.startswith(f"{prefix}.")}
        shards = [t for t, _ in parts] + [rest]
        modules = {k: v for _, m in parts for k, v in m.items()}
    else:
        tensors, modules = quantized_tensors(model)
        shards = [tensors]
    config_text = quantized_config(model, modules, method, prior_file is not None)
    copies = side_files(prior_file, source)
    need = sum(bytes_to_write(s, []) for s in shards) + len(config_text.encode()) + sum(
        f.stat().st_size for f in copies.values())
    path = Path(path)
    check_free_space(path, need)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        if not shard_per_block:
            save_file(shards[0], str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                save_file(shard, str(tmp / shard_file(i, len(shards))), metadata={"format": "pt"})
                weight_map.update({k: shard_file(i, len(shards)) for k in shard})
            write_index(tmp, weight_map, sum(tensor_bytes(s) for s in shards))
        (tmp / "config.json").write_text(config_text)
        for name, f in copies.items():
            shutil.copyfile(f, tmp / name)
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
    without its ``quantization_config``; ``tensors`` is every tensor of the directory's
    safetensors (``model.safetensors``, or the shards its index lists).
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
    rebuild_quantized(model, modules, tensors, str(path))
    model.quantization_config = qc
    return model


def rebuild_quantized(root: nn.Module, modules: dict, tensors: dict[str, Tensor], where: str,
                      prefix: str = "") -> nn.Module:
    """Replace the linears of ``root`` named in ``modules`` by their stored QuantLinear and
    load the remaining float tensors, strictly: a tensor the descriptions do not imply, or
    one they imply that is absent or of another dtype or shape, is an error naming it.

    ``root`` is the whole model (``prefix`` "") or one block (``prefix`` its path, e.g.
    "model.transformer.blocks.3"); names in ``modules`` and ``tensors`` are full paths.
    ``root`` may live on the ``meta`` device: every tensor is assigned, none copied into."""
    pre = f"{prefix}." if prefix else ""
    files = f"{where}'s safetensors"
    tensors = dict(tensors)
    local_names = []
    for name, m in modules.items():
        if not name.startswith(pre):
            raise ValueError(f"{where}: quantization_config names module {name!r} outside "
                             f"{prefix!r}")
        local = name[len(pre):]
        local_names.append(local)
        try:
            lin = root.get_submodule(local)
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
                raise ValueError(f"{files}: missing tensor {full!r} that the "
                                 "quantization_config implies")
            t = tensors.pop(full)
            if t.dtype != dtype or (shape is not None and tuple(t.shape) != shape):
                raise ValueError(f"{files}: {full} is {t.dtype} {tuple(t.shape)}, expected "
                                 f"{dtype} {shape} from the quantization_config")
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
            transform = transform_from_dict(_join_tensors(desc, name, tensors, files))
        try:
            ql = QuantLinear.from_quantized(q, s, z, w_spec, a_spec, bias, transform)
        except ValueError as e:
            raise ValueError(f"{where}: {name}: {e}") from None
        parent, _, attr = local.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, attr, ql)
    inside = tuple(f"{n}." for n in local_names)
    want = {pre + k for k in root.state_dict() if not k.startswith(inside)}
    extra, missing = sorted(set(tensors) - want), sorted(want - set(tensors))
    if extra or missing:
        raise ValueError(f"{files}: "
                         + (f"unexpected tensors {extra[:3]}" if extra else "")
                         + (" and " if extra and missing else "")
                         + (f"missing tensors {missing[:3]}" if missing else ""))
    root.load_state_dict({k[len(pre):]: v for k, v in tensors.items()}, strict=False,
                         assign=True)
    return root
