"""Checkpoints in and out: ``config.json`` + safetensors, strictly (SPEC §7).

A checkpoint is a directory laid out like the public LLaDA / Dream repositories::

    config.json                      model_type "llada" or "Dream" picks the architecture
    model.safetensors                either one file ...
    model.safetensors.index.json     ... or an index {"metadata": {...}, "weight_map":
    model-00001-of-0000K.safetensors     {tensor name: shard file}} and its K shards

:func:`load` is strict: a missing or unexpected tensor, a shape mismatch, an unsupported
config value, a missing file or a malformed index is an error that names the key or the
file. It never unpickles and never runs code from the checkpoint. The model is first
built on the ``meta`` device (no random init, no memory) and the tensors read from disk
are assigned into it, so LLaDA-8B in bfloat16 loads straight onto a GPU.

:func:`save` writes the same layout atomically (:func:`fairref.files.atomic_directory`:
a temporary directory next to the target, renamed into place at the end, with ordinary
permissions); an existing non-empty target is refused unless ``overwrite=True``. It can
add what :func:`load`, :func:`load_tokenizer` and ``fairref generate`` read beside the
weights: ``tokenizer.json`` and ``generation_config.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fairref.files import atomic_directory, read_json
from fairref.models.config import DreamConfig, LLaDAConfig, config_from_dict
from fairref.models.dream import DreamModel
from fairref.models.llada import LLaDAModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
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


def _weight_files(path: Path) -> dict[str, list[str]]:
    """shard file → tensor names it must hold, from the index or the single file."""
    index = path / INDEX_FILE
    if index.is_file():
        raw = read_json(index, "shard index")
        wmap = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(wmap, dict) or not wmap or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
            raise ValueError(f"{index}: 'weight_map' must be a non-empty object mapping "
                             "tensor names to shard file names")
        shards: dict[str, list[str]] = {}
        for name, shard in wmap.items():
            if Path(shard).name != shard:
                raise ValueError(f"{index}: shard {shard!r} for {name!r} is not a plain file "
                                 "name inside the checkpoint directory")
            shards.setdefault(shard, []).append(name)
        for shard in shards:
            if not (path / shard).is_file():
                raise FileNotFoundError(f"{index} names shard {shard!r}, which is missing "
                                        f"from {path}; the download may be incomplete")
        return shards
    if (path / WEIGHTS_FILE).is_file():
        return {WEIGHTS_FILE: []}  # [] = whatever the single file holds
    raise FileNotFoundError(f"no {WEIGHTS_FILE} and no {INDEX_FILE} in {path}")


def read_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """All tensors of the checkpoint at ``path`` (as stored), checking index ↔ shards."""
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for shard, expected in _weight_files(path).items():
        try:
            tensors.update(_read_shard(path / shard, expected, tensors, device))
        except SafetensorError as e:  # a truncated download, or not a safetensors file
            raise ValueError(f"{path / shard} is not a readable safetensors file ({e}); "
                             "it may be truncated or corrupt: download it again") from e
    return tensors


def _read_shard(file: Path, expected: list[str], seen: Mapping[str, Tensor],
                device: torch.device | str) -> dict[str, Tensor]:
    """The tensors of one safetensors file, checked against the index's ``expected``."""
    shard = file.name
    tensors: dict[str, Tensor] = {}
    with safe_open(str(file), framework="pt", device=str(device)) as f:
        names = list(f.keys())
        if expected:
            absent = sorted(set(expected) - set(names))
            if absent:
                raise ValueError(f"{INDEX_FILE} maps {absent[:5]} to {shard!r}, which does "
                                 "not contain them")
            stray = sorted(set(names) - set(expected))
            if stray:
                raise ValueError(f"unexpected key(s) {stray[:5]} in shard {shard!r}: not "
                                 f"listed for it in {INDEX_FILE}")
        for name in names:
            if name in seen:
                raise ValueError(f"tensor {name!r} appears in more than one shard")
            tensors[name] = f.get_tensor(name)
    return tensors


def check_state_dict(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Strict name and shape check of ``tensors`` against ``model``'s parameters."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), e.g. missing key "
                         f"{missing[0]!r} (all: {missing[:8]}{' ...' if len(missing) > 8 else ''})")
    unexpected = sorted(set(tensors) - set(want))
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} unexpected tensor(s), e.g. "
                         f"unexpected key {unexpected[0]!r} (all: {unexpected[:8]})")
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
    """Load the checkpoint directory ``path``.

    ``dtype=None`` means float32 (the reference computes in float32; bfloat16 weights are
    upcast exactly). Pass ``torch.bfloat16`` for 8B models on a GPU. Every way a directory
    can be unusable (missing, a file, no config.json, a bad config value, a missing or
    corrupt shard, a missing or misshapen tensor) raises ``FileNotFoundError`` or
    ``ValueError`` naming the file or key."""
    path = _checkpoint_dir(path)
    dtype = torch.float32 if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    config = read_config(path)
    model = build(config, device="meta")
    tensors = read_weights(path, device=device)
    check_state_dict(model, tensors)
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
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
    16}``) is written as ``generation_config.json``. Everything appears at once or not at
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
    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
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


def _save_sharded(state: dict[str, Tensor], out: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    K = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{K:05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
