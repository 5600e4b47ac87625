"""Checkpoints in and out: ``config.json`` + safetensors, strictly (SPEC §7).

A checkpoint is a directory laid out like the public LLaDA / Dream repositories::

    config.json                      model_type "llada" or "Dream" picks the architecture
    model.safetensors                either one file ...
    model.safetensors.index.json     ... or an index {"metadata": {...}, "weight_map":
    model-00001-of-0000K.safetensors     {tensor name: shard file}} and its K shards

:func:`load` is strict: a missing or unexpected tensor, a shape mismatch, an unsupported
config value, a missing file or a malformed index is an error that names the key or the
file. It never unpickles and never runs code from the checkpoint. It is also lazy: the
model is built on the ``meta`` device (no random init, no memory); every tensor name,
shape and dtype is checked against the config from the safetensors headers before any
data is read; then the tensors are read one at a time, each converted to the requested
dtype before the next is read, and assigned into the model without a copy. Peak memory
is one model in that dtype (plus one tensor), so LLaDA-8B in bfloat16 loads straight
onto a GPU.

:func:`save` writes the same layout atomically (:func:`fairref.files.atomic_directory`:
a temporary directory next to the target, renamed into place at the end, with ordinary
permissions) after checking that the disk has room for it; an existing non-empty target
is refused unless ``overwrite=True``. It can
add what :func:`load`, :func:`load_tokenizer` and ``fairref generate`` read beside the
weights: ``tokenizer.json`` and ``generation_config.json``.

The safetensors layer under both (index, shards, header and name checks, free disk
space, sharded writing) is :mod:`fairref.models.safetensors_io`; this file is the model
directory in and out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from fairref.files import atomic_directory, read_json
from fairref.models.config import DreamConfig, LLaDAConfig, config_from_dict
from fairref.models.dream import DreamModel
from fairref.models.llada import LLaDAModel
from fairref.models.safetensors_io import (  # INDEX_FILE: still importable from here
    INDEX_FILE, WEIGHTS_FILE, _check_headers, _check_names, _open_shard, _save_sharded,
    _weight_files, bytes_to_write, check_free_space, read_weights,
)

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
GENERATION_CONFIG_FILE = "generation_config.json"

Model = LLaDAModel | DreamModel


def build(config: LLaDAConfig | DreamConfig, device: torch.device | str = "cpu") -> Model:
    """The architecture for ``config`` with torch's default initialisation."""
    with torch.device(device):
        if isinstance(config, LLaDAConfig):
            return LLaDAModel(config)
        if isinstance(config, DreamConfig):
            return DreamModel(config)
    raise ValueError(f"config must be an LLaDAConfig or a DreamConfig, got {type(config).__name__}")


def random_model(config: LLaDAConfig | DreamConfig, seed: int,
                 dtype: torch.dtype = torch.float32, std: float = 0.02) -> Model:
    """A model with reproducible random weights (tests, toy training).

    Every tensor is drawn from one ``torch.Generator(seed)`` in sorted-name order, so the
    weights depend only on (config, seed): matrices and biases ~ N(0, std²), norm weights
    1 + N(0, std²) (not exactly 1, so a test notices a norm weight that is ignored)."""
    model = build(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
            p.copy_(1.0 + noise if _is_norm(name) else noise)
    return model.to(dtype)


def _is_norm(name: str) -> bool:
    return any(k in name for k in ("norm", "ln_f"))


# --- reading ---------------------------------------------------------------------------


def read_config(path: str | Path) -> LLaDAConfig | DreamConfig:
    """Parse and validate ``path/config.json``; every error names the file."""
    path = _checkpoint_dir(path)
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}: a checkpoint directory holds "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE} (or its shards)")
    raw = read_json(file, "model config")
    if isinstance(raw, dict):  # a quantized directory's extra section (models/quantized.py)
        raw = {k: v for k, v in raw.items() if k != "quantization_config"}
    try:
        return config_from_dict(raw)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def _checkpoint_dir(path: str | Path) -> Path:
    """``path`` as a directory, or an error saying what it is instead."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file, not a checkpoint directory: pass the "
                                f"folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return path


def check_state_dict(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Strict name and shape check of ``tensors`` against ``model``'s parameters."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_names(want, tensors)
    for name, shape in want.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise ValueError(f"shape mismatch for key {name!r}: checkpoint has {got}, the "
                             f"config implies {shape}")
        if not tensors[name].is_floating_point():
            raise ValueError(f"key {name!r} has dtype {tensors[name].dtype}; expected a "
                             "floating-point tensor")


def load(path: str | Path, dtype: torch.dtype | None = None,
         device: torch.device | str = "cpu") -> Model:
    """Load the checkpoint directory ``path``, lazily: peak memory is one model in ``dtype``.

    ``dtype=None`` means float32 (the reference computes in float32; bfloat16 weights are
    upcast exactly). Pass ``torch.bfloat16`` for 8B models on a GPU. The model is built on
    the ``meta`` device (no memory, no random init); every name, shape and dtype is checked
    against the config from the safetensors headers before any tensor data is read; then
    each tensor is read on its own (``safe_open``), converted to ``dtype`` on ``device``,
    and its stored-dtype copy dropped before the next one is read. The converted tensors
    become the model's parameters as they are (``assign=True``, no second copy).

    Every way a directory can be unusable (missing, a file, no config.json, a bad config
    value, a missing or corrupt shard, an index naming a key the config does not imply, a
    missing, unexpected, misshapen or non-float tensor) raises ``FileNotFoundError`` or
    ``ValueError`` naming the file or key."""
    path = _checkpoint_dir(path)
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    from fairref.models.quantized import is_quantized_dir, load_quantized

    if is_quantized_dir(path):  # SPEC §7: a calibrated directory, rebuilt bit for bit
        if dtype != torch.float32:
            raise ValueError(f"{path} is a quantized checkpoint: it loads in float32, the "
                             f"dtype its stored numbers are defined in; got dtype={dtype}")
        model = load_quantized(path, lambda raw: build(config_from_dict(raw)),
                               read_weights(path, device=device))
        return model.to(device).eval()
    config = read_config(path)
    model = build(config, device="meta").to(dtype)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shards = _weight_files(path, want)
    _check_headers(path, shards, want)
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        with _open_shard(path / shard, device) as f:
            for name in f.keys():
                # the stored-dtype tensor lives only until it is converted
                tensors[name] = f.get_tensor(name).to(dtype)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


# --- writing ---------------------------------------------------------------------------


def save(model: Model, path: str | Path, dtype: torch.dtype | None = None,
         max_shard_bytes: int | None = None, overwrite: bool = False,
         tokenizer: str | Path | Any | None = None,
         generation_config: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as ``config.json`` + safetensors into the directory ``path``.

    ``dtype=None`` keeps each tensor's dtype. With ``max_shard_bytes`` the tensors are
    split, in name order, into shards of at most that many bytes (a single larger tensor
    gets a shard of its own) and an index is written. ``tokenizer`` adds
    ``tokenizer.json``: a path to copy (the file, or a directory holding it), a
    ``tokenizers.Tokenizer``, or a :class:`~fairref.models.TextTokenizer`.
    ``generation_config`` (a JSON-serialisable dict, e.g. ``{"steps": 8, "gen_length":
    16}``) is written as ``generation_config.json``. Free disk space is checked against
    the bytes to be written before anything is written (``ValueError`` when short).
    Everything appears at once or not at
    all; files get mode 0o644 and the directory 0o755 under the usual umask 022.
    Returns ``path``."""
    path = Path(path)
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    # check every input before anything is written
    tok_source = _tokenizer_source(tokenizer)
    gen_text = _generation_config_text(generation_config)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    config_text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    texts = [config_text, gen_text or ""]
    tok_bytes = tok_source.stat().st_size if isinstance(tok_source, Path) else (
        len(tok_source.to_str().encode()) if tok_source is not None else 0)
    check_free_space(path, bytes_to_write(state, texts) + tok_bytes)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(config_text)
        if max_shard_bytes is None:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        else:
            _save_sharded(state, tmp, max_shard_bytes)
        if isinstance(tok_source, Path):
            shutil.copyfile(tok_source, tmp / TOKENIZER_FILE)
        elif tok_source is not None:
            tok_source.save(str(tmp / TOKENIZER_FILE))
        if gen_text is not None:
            (tmp / GENERATION_CONFIG_FILE).write_text(gen_text)
    return path


def _tokenizer_source(tokenizer: str | Path | Any | None) -> Path | Any | None:
    """The tokenizer.json file to copy, or an object with ``.save(str)``, or None."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, Path)):
        file = Path(tokenizer)
        file = file / TOKENIZER_FILE if file.is_dir() else file
        if not file.is_file():
            raise FileNotFoundError(f"save(tokenizer=...): no {TOKENIZER_FILE} at {tokenizer}")
        return file
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a TextTokenizer wraps a Tokenizer
    if not callable(getattr(tok, "save", None)) or not callable(getattr(tok, "to_str", None)):
        raise ValueError("save(tokenizer=...) takes a path to a tokenizer.json, a "
                         f"tokenizers.Tokenizer or a TextTokenizer, got {type(tokenizer).__name__}")
    return tok


def _generation_config_text(generation_config: Mapping[str, Any] | None) -> str | None:
    if generation_config is None:
        return None
    if not isinstance(generation_config, Mapping):
        raise ValueError("save(generation_config=...) takes a dict, got "
                         f"{type(generation_config).__name__}")
    try:
        # the caller's key order, as a hand-written file would have it
        return json.dumps(dict(generation_config), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"save(generation_config=...) is not JSON-serialisable: {e}") from e
