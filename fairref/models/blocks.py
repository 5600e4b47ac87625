"""Block sources: where the §4.2 block loop gets block ℓ and where the final block goes.

The calibration loop (``fairref.fair.calibrate.quantize_model``) is written once, against
this small interface; a source decides what is resident:

- :class:`InMemoryBlocks` — today's ``model.blocks``: every block is resident, a final
  block stays in the model (and blocks of an interrupted run can be swapped in).
- :class:`StreamingBlocks` — layer streaming (issue #12): resident are only the
  embedding, the final norm, the head and *one* block. Block ℓ's tensors are read from
  the float directory's shards on demand (only that block's, each converted to the
  requested dtype before the next is read); when block ℓ is final its quantized tensors
  are written as one shard of the output and the block is dropped (the model's slot goes
  back to a ``meta`` placeholder) before block ℓ + 1 is read.

The interface (duck-typed, both classes implement it): ``model`` (embedding, head and
``run_block`` live there; ``model.blocks[ℓ]`` is block ℓ while it is resident),
``len(source)``, ``n_done`` (blocks already final from an interrupted run),
``float_block(ℓ)``, ``final_block(ℓ)`` (ℓ < n_done: the stored quantized block swapped
in) and ``finish(ℓ)``, called in order once block ℓ is final.

The streamed output is the SPEC §7 directory that
``save_quantized(model, out, shard_per_block=True)`` writes for the same calibrated model,
file for file and byte for byte (shard ℓ + 1 of N + 1 holds block ℓ, the last shard the
rest, plus the index): both go through ``quantized_tensors`` / ``quantized_config`` of
``fairref.models.quantized`` (tests/test_fair_streaming.py compares the bytes).
Until :meth:`StreamingBlocks.save` the shards live in a work directory beside the output
(``OUT.partial`` by default) with ``progress.json`` (blocks done, their module
descriptions and a caller-chosen ``run_key``), so an interrupted run resumes from the
blocks already written; ``save`` moves them into a temporary directory, adds the rest,
the index and config.json, and renames it into place (``fairref.files.atomic_directory``).

Why in ``models/``: a source is checkpoint I/O and model structure (shards, tensor names,
the quantized layout), no calibration math, so models stays below fair (STYLE).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fairref.files import atomic_directory, read_json, write_text_atomic
from fairref.models.checkpoint import _checkpoint_dir, build, read_config
from fairref.models.quantized import (
    blocks_prefix, quantized_config, quantized_tensors, rebuild_quantized, side_files,
)
from fairref.models.safetensors_io import (
    _check_headers, _open_shard, _weight_files, bytes_to_write, check_free_space, shard_file,
    tensor_bytes, write_index,
)
from fairref.quant.grid import QuantSpec
from fairref.quant.transform import kronecker_sizes

PROGRESS_FILE = "progress.json"


class InMemoryBlocks:
    """Every block resident in ``model``; ``resume_blocks`` (blocks 0..k−1 of an
    interrupted run, e.g. reloaded from a checkpoint) are swapped in instead of calibrated."""

    def __init__(self, model: nn.Module, resume_blocks: Sequence[nn.Module] = ()) -> None:
        if len(resume_blocks) > len(model.blocks):
            raise ValueError(f"resume_blocks has {len(resume_blocks)} blocks but the model only "
                             f"{len(model.blocks)}; it comes from another model")
        self.model, self._resume = model, list(resume_blocks)
        self.n_done = len(self._resume)

    def __len__(self) -> int:
        return len(self.model.blocks)

    def float_block(self, l: int) -> nn.Module:
        return self.model.blocks[l]

    def final_block(self, l: int) -> nn.Module:
        device = next(self.model.blocks[l].parameters()).device
        self.model.blocks[l] = self._resume[l].to(device)
        return self.model.blocks[l]

    def finish(self, l: int) -> None:
        """Nothing to do: the final block stays in the model."""


class StreamingBlocks:
    """Blocks read from the float directory ``source`` one at a time; quantized blocks
    streamed to the SPEC §7 directory ``out`` (module docstring).

    ``dtype``: the dtype blocks are read in (float32, the reference, by default);
    ``w_spec``: the weight grid, for the disk-space estimate made before anything is
    written; ``work_dir``: where shards wait (default ``OUT.partial``); ``resume``: continue
    the run in ``work_dir`` (its ``run_key`` must equal ``run_key``); ``overwrite``: replace
    an existing ``out`` at :meth:`save`, and discard a stale work directory.
    """

    def __init__(self, source: str | Path, out: str | Path, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", w_spec: QuantSpec = QuantSpec(bits=4),
                 work_dir: str | Path | None = None, resume: bool = False, run_key: str = "",
                 overwrite: bool = False) -> None:
        self.source, self.out = _checkpoint_dir(source), Path(out)
        self.work = Path(work_dir) if work_dir is not None else self.out.with_name(
            self.out.name + ".partial")
        self.dtype, self.device, self.run_key = dtype, device, run_key
        self.overwrite = overwrite
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"{self.out} exists and is not a directory; choose another "
                                  "output path or remove the file")
        if self.out.is_dir() and any(self.out.iterdir()) and not overwrite:
            raise FileExistsError(f"{self.out} exists and is not empty; pass overwrite=True "
                                  "(--force) to replace it, or choose another output path")
        # the skeleton: every parameter on meta (no memory), then the non-block ones read
        self.model = build(read_config(self.source), device="meta").to(dtype)
        want = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        shards = _weight_files(self.source, want)
        _check_headers(self.source, shards, want)  # names, shapes, dtypes: headers only
        self._shard_of: dict[str, str] = {}
        for shard in shards:
            with _open_shard(self.source / shard) as f:
                self._shard_of.update({k: shard for k in f.keys()})
        self.prefix = blocks_prefix(self.model)
        self._placeholders = list(self.model.blocks)  # the meta blocks, put back after use
        rest = [k for k in want if not k.startswith(f"{self.prefix}.")]
        self.model.load_state_dict(self._read(rest, ""), strict=False, assign=True)
        self._progress = self._start(resume, w_spec)
        self.n_done = self._progress["blocks_done"]

    # --- the block-source interface ---------------------------------------------------

    def __len__(self) -> int:
        return len(self.model.blocks)

    def float_block(self, l: int) -> nn.Module:
        """Block ℓ read from the float shards in ``dtype``, now ``model.blocks[ℓ]``."""
        pre = f"{self.prefix}.{l}."
        block = copy.deepcopy(self._placeholders[l])  # meta: costs no memory
        names = [k for k in self._shard_of if k.startswith(pre)]
        block.load_state_dict(self._read(names, pre), strict=True, assign=True)
        self.model.blocks[l] = block
        return block

    def final_block(self, l: int) -> nn.Module:
        """Block ℓ as the interrupted run wrote it (its shard in the work directory)."""
        file = self.work / shard_file(l + 1, len(self) + 1)
        tensors = load_file(str(file), device=str(self.device))
        block = copy.deepcopy(self._placeholders[l])
        rebuild_quantized(block, self._progress["blocks"][l]["modules"], tensors, str(file),
                          prefix=f"{self.prefix}.{l}")
        self.model.blocks[l] = block
        return block

    def finish(self, l: int) -> None:
        """Block ℓ is final: write its shard (unless an interrupted run already did) and
        drop it, so that the next block can be read."""
        if l >= self.n_done:
            if l != self._progress["blocks_done"]:
                raise ValueError(f"blocks must be finished in order: block {l} after "
                                 f"{self._progress['blocks_done']} of {len(self)}")
            tensors, modules = quantized_tensors(self.model.blocks[l], f"{self.prefix}.{l}")
            save_file(tensors, str(self.work / shard_file(l + 1, len(self) + 1)),
                      metadata={"format": "pt"})
            self._progress["blocks"].append({"modules": modules, "tensors": {
                k: t.numel() * t.element_size() for k, t in tensors.items()}})
            self._progress["blocks_done"] = l + 1
            write_text_atomic(self.work / PROGRESS_FILE, json.dumps(self._progress) + "\n")
        self.model.blocks[l] = self._placeholders[l]

    # --- the end ----------------------------------------------------------------------

    def save(self, *, method: dict | None = None, prior_file: str | Path | None = None,
             source: str | Path | None = None) -> Path:
        """Finalise ``out`` atomically from the written blocks (module docstring); the
        arguments are those of ``save_quantized``. Returns ``out``."""
        n = len(self)
        if self._progress["blocks_done"] != n:
            raise ValueError(f"{self._progress['blocks_done']} of {n} blocks are written; "
                             "calibrate every block before saving")
        rest = {k: v.detach().to(torch.float32).contiguous().cpu()
                for k, v in self.model.state_dict().items()
                if not k.startswith(f"{self.prefix}.")}
        modules = {k: v for b in self._progress["blocks"] for k, v in b["modules"].items()}
        config_text = quantized_config(self.model, modules, method, prior_file is not None)
        copies = side_files(prior_file, source)
        check_free_space(self.out, bytes_to_write(rest, [config_text])
                         + sum(f.stat().st_size for f in copies.values()))
        weight_map = {k: shard_file(l + 1, n + 1) for l, b in enumerate(self._progress["blocks"])
                      for k in b["tensors"]}
        weight_map.update({k: shard_file(n + 1, n + 1) for k in rest})
        total = sum(sum(b["tensors"].values()) for b in self._progress["blocks"]) + tensor_bytes(rest)
        moved: list[tuple[Path, Path]] = []
        with atomic_directory(self.out, overwrite=self.overwrite) as tmp:
            try:
                for l in range(n):  # same filesystem: renames, no copies
                    src, dst = self.work / shard_file(l + 1, n + 1), tmp / shard_file(l + 1, n + 1)
                    os.rename(src, dst)
                    moved.append((dst, src))
                save_file(rest, str(tmp / shard_file(n + 1, n + 1)), metadata={"format": "pt"})
                write_index(tmp, weight_map, total)
                (tmp / "config.json").write_text(config_text)
                for name, f in copies.items():
                    shutil.copyfile(f, tmp / name)
            except BaseException:
                for dst, src in moved:  # the work directory stays resumable
                    os.rename(dst, src)
                raise
        shutil.rmtree(self.work, ignore_errors=True)
        return self.out

    # --- helpers ----------------------------------------------------------------------

    def _read(self, names: list[str], strip: str) -> dict[str, torch.Tensor]:
        """``names`` from the float shards, each converted to ``dtype`` before the next is
        read, keyed without the prefix ``strip``."""
        out = {}
        by_shard: dict[str, list[str]] = {}
        for k in names:
            by_shard.setdefault(self._shard_of[k], []).append(k)
        for shard, keys in by_shard.items():
            with _open_shard(self.source / shard, self.device) as f:
                for k in keys:
                    out[k[len(strip):]] = f.get_tensor(k).to(self.dtype)
        return out

    def _start(self, resume: bool, w_spec: QuantSpec) -> dict:
        """The work directory: checked and reused (``resume``) or made fresh, after the
        free-disk check; returns its progress record."""
        if resume:
            file = self.work / PROGRESS_FILE
            if not file.is_file():
                raise FileNotFoundError(f"resume: no interrupted streamed run at {self.work} "
                                        f"(no {PROGRESS_FILE}); start without resume")
            progress = read_json(file, "streaming progress")
            if not isinstance(progress, dict) or progress.get("run_key") != self.run_key \
                    or progress.get("n_blocks") != len(self) \
                    or progress.get("blocks_done") != len(progress.get("blocks", [])):
                raise ValueError(f"resume: {self.work} was written by another run (other "
                                 "model, inputs or settings); rerun with the original ones, or "
                                 "start over with overwrite")
            done = progress["blocks_done"]
            check_free_space(self.work, self._bytes_estimate(w_spec, range(done, len(self))))
            return progress
        if self.work.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.work} holds an interrupted streamed run; resume "
                                      "it, or pass overwrite=True (--force) to start over")
            shutil.rmtree(self.work)
        check_free_space(self.work, self._bytes_estimate(w_spec, range(len(self))))
        self.work.mkdir(parents=True)
        progress = {"run_key": self.run_key, "n_blocks": len(self), "blocks_done": 0,
                    "blocks": []}
        write_text_atomic(self.work / PROGRESS_FILE, json.dumps(progress) + "\n")
        return progress

    def _bytes_estimate(self, w_spec: QuantSpec, blocks) -> int:
        """An upper estimate of the output's bytes for ``blocks`` plus the rest."""
        total = 0
        for l in blocks:
            for name, m in self._placeholders[l].named_modules():
                if isinstance(m, nn.Linear):
                    total += linear_bytes(m.out_features, m.in_features, w_spec, m.bias is not None)
                elif not any(True for _ in m.children()):  # norms: float32
                    total += sum(4 * p.numel() + 256 for p in m.parameters(recurse=False))
        rest = [v for k, v in self.model.state_dict().items()
                if not k.startswith(f"{self.prefix}.")]
        return total + sum(4 * t.numel() + 256 for t in rest) + (1 << 20)  # + config, index


def linear_bytes(N: int, K: int, w_spec: QuantSpec, bias: bool) -> int:
    """An upper estimate of what one quantized (N, K) linear stores (SPEC §7): packed
    weights, scales (and zero points), bias, and a learned Kronecker transform (P_l, P_r,
    their inverse-transposes, ζ) — the largest transform any solver stores."""
    n_l, n_r = kronecker_sizes(K)
    groups = K // w_spec.group_size if w_spec.granularity == "group" else 1
    packed = N * ((K + 1) // 2 if w_spec.bits == 4 else K)
    scales = 4 * N * groups * (1 if w_spec.symmetric else 2)
    return packed + scales + 4 * N * bias + 4 * (2 * n_l * n_l + 2 * n_r * n_r + K) + 1024
