"""The safetensors layer of a checkpoint directory: weight files in and out (SPEC §7).

The weights lie in the layout of the public LLaDA / Dream repositories::

    model.safetensors                either one file ...
    model.safetensors.index.json     ... or an index {"metadata": {...}, "weight_map":
    model-00001-of-0000K.safetensors     {tensor name: shard file}} and its K shards

Reading is strict: a malformed index, a missing shard, a truncated or corrupt file, a
missing, unexpected, misshapen or non-float tensor is an error that names the file or the
key. Nothing is unpickled and no code from the checkpoint runs. Names, shapes and dtypes
are checked from the safetensors headers alone (:func:`_check_headers`), so a mismatch is
reported before any tensor data is read. Writing checks free disk space first
(:func:`bytes_to_write`, :func:`check_free_space`) and splits tensors into shards in name
order (:func:`_save_sharded`).

Nothing here knows a model or a config: callers pass the tensor names and shapes they
want. ``config.json``, model build, :func:`~fairref.models.checkpoint.load` and
:func:`~fairref.models.checkpoint.save` are in :mod:`fairref.models.checkpoint`.
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
from torch import Tensor

from fairref.files import read_json

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


# --- reading ---------------------------------------------------------------------------


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

    This holds the whole checkpoint in memory in its stored dtype: a float checkpoint's
    :func:`~fairref.models.checkpoint.load` does not use it (it converts tensor by
    tensor); a quantized directory's, whose packed tensors are small, does."""
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


# --- writing ---------------------------------------------------------------------------


#: safetensors header and index bytes allowed per tensor (its name, dtype, shape, offsets)
_HEADER_BYTES_PER_TENSOR = 256


def bytes_to_write(state: Mapping[str, Tensor], texts: list[str]) -> int:
    """An upper estimate of what :func:`~fairref.models.checkpoint.save` writes: the
    tensor data, a generous allowance for the safetensors headers and the index, and the
    text files."""
    return tensor_bytes(state) + _HEADER_BYTES_PER_TENSOR * len(state) + sum(len(t.encode()) for t in texts)


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


def shard_file(i: int, n: int) -> str:
    """The name of shard ``i`` (1-based) of ``n``, as the public checkpoints name them."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def write_index(folder: Path, weight_map: dict[str, str], total_size: int) -> None:
    """``model.safetensors.index.json`` in the layout of the public checkpoints."""
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def tensor_bytes(tensors: Mapping[str, Tensor]) -> int:
    """The bytes of the tensors' data (headers not counted)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


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
        fname = shard_file(i, K)
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    write_index(out, weight_map, tensor_bytes(state))
