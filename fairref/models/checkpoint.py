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
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

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


def _index_map(path: Path) -> dict[str, list[str]] | None:
    """shard file → tensor names, from ``model.safetensors.index.json``; None if absent."""
    index = path / INDEX_FILE
    if not index.is_file():
        return None
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
    return shards


def _weight_files(path: Path, want: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """shard file → tensor names it must hold, from the index or the single file.

    With ``want`` (the names the config implies), an index that lists a name outside it is
    an error naming that key, raised before any shard is opened."""
    shards = _index_map(path)
    if shards is None:
        if (path / WEIGHTS_FILE).is_file():
            return {WEIGHTS_FILE: []}  # [] = whatever the single file holds
        raise FileNotFoundError(f"no {WEIGHTS_FILE} and no {INDEX_FILE} in {path}")
    index = path / INDEX_FILE
    if want is not None:
        stray = sorted(n for names in shards.values() for n in names if n not in want)
        if stray:
            raise ValueError(f"{index} lists key {stray[0]!r}, which config.json does not "
                             f"imply ({len(stray)} such key(s): {stray[:5]}); the weights "
                             "belong to another architecture or size than config.json says")
    for shard in shards:
        if not (path / shard).is_file():
            raise FileNotFoundError(f"{index} names shard {shard!r}, which is missing "
                                    f"from {path}; the download may be incomplete")
    return shards


@contextmanager
def _open_shard(file: Path, device: torch.device | str = "cpu") -> Iterator[Any]:
    """``safe_open`` on one shard; a truncated or foreign file becomes a ``ValueError``
    naming it, whether the damage shows in the header or only when a tensor is read."""
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            yield f
    except SafetensorError as e:
        raise ValueError(f"{file} is not a readable safetensors file ({e}); it may be "
                         "truncated or corrupt: download it again") from e


#: safetensors dtype codes of the floating-point weights a float checkpoint may hold
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")


def _check_headers(path: Path, shards: Mapping[str, list[str]],
                   want: Mapping[str, tuple[int, ...]]) -> None:
    """Names, shapes and dtypes of every stored tensor against the config, from the
    safetensors headers alone (no tensor data is read), so a mismatch is reported before
    gigabytes are loaded."""
    found: dict[str, str] = {}  # tensor name → shard that holds it
    for shard, expected in shards.items():
        with _open_shard(path / shard) as f:
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
                if name in found:
                    raise ValueError(f"tensor {name!r} appears in more than one shard "
                                     f"({found[name]!r} and {shard!r})")
                found[name] = shard
                if name not in want:
                    continue  # reported with the others below
                header = f.get_slice(name)
                shape, code = tuple(header.get_shape()), header.get_dtype()
                if shape != want[name]:
                    raise ValueError(f"shape mismatch for key {name!r}: {shard} has {shape}, "
                                     f"the config implies {want[name]}")
                if code not in _FLOAT_CODES:
                    raise ValueError(f"key {name!r} in {shard} has dtype {code}; a float "
                                     f"checkpoint holds {list(_FLOAT_CODES)} weights (a "
                                     "quantized checkpoint is not loaded by this function)")
    _check_names(want, found)


def _check_names(want: Mapping[str, Any], have: Mapping[str, Any]) -> None:
    """Missing and unexpected tensor names, each error naming a key."""
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), e.g. missing key "
                         f"{missing[0]!r} (all: {missing[:8]}{' ...' if len(missing) > 8 else ''})")
    unexpected = sorted(set(have) - set(want))
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} unexpected tensor(s), e.g. "
                         f"unexpected key {unexpected[0]!r} (all: {unexpected[:8]})")


def read_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """All tensors of the checkpoint at ``path`` (as stored), checking index ↔ shards.

    This holds the whole checkpoint in memory in its stored dtype; :func:`load` does not
    use it (it converts tensor by tensor)."""
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for shard, expected in _weight_files(path).items():
        with _open_shard(path / shard, device) as f:
            names = list(f.keys())
            if expected and sorted(names) != sorted(expected):
                raise ValueError(f"{INDEX_FILE} and shard {shard!r} disagree on its tensors")
            for name in names:
                if name in tensors:
                    raise ValueError(f"tensor {name!r} appears in more than one shard")
                tensors[name] = f.get_tensor(name)
    return tensors


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


#: safetensors header and index bytes allowed per tensor (its name, dtype, shape, offsets)
_HEADER_BYTES_PER_TENSOR = 256


def bytes_to_write(state: Mapping[str, Tensor], texts: list[str]) -> int:
    """An upper estimate of what :func:`save` writes: the tensor data, a generous
    allowance for the safetensors headers and the index, and the text files."""
    data = sum(t.numel() * t.element_size() for t in state.values())
    return data + _HEADER_BYTES_PER_TENSOR * len(state) + sum(len(t.encode()) for t in texts)


def check_free_space(path: Path, need: int) -> None:
    """``ValueError`` if the filesystem that will hold ``path`` has less than ``need``
    bytes free; checked before anything is written, so a full disk never leaves a
    half-written checkpoint (the atomic write would clean up, but only after a long write)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:  # the folder that will hold it
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ValueError(f"not enough free disk space to save to {path}: the checkpoint needs "
                         f"about {need / 2**30:.2f} GiB ({need} bytes), {probe} has "
                         f"{free / 2**30:.2f} GiB free; free some space or choose another "
                         "output directory")


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
