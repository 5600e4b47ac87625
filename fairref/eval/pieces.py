"""An experiment computed in pieces that survive interruption: the paper's tables.

A long comparison (methods × calibration subsets × settings, each evaluated on thousands of
problems) is split into *pieces*, each an independent unit of work with a name. A
:class:`PieceStore` keeps each finished piece as two files in one folder:

- ``NAME.json``: its numbers, the experiment ``config`` it was computed under and the
  ``source`` (git commit, and whether the checkout had uncommitted changes);
- ``NAME.npz``: its per-problem outcomes (``{model: {outcome: counts}}``), as integers.

Both are written atomically, the JSON last, so a JSON on disk always has its outcomes. A
stored piece is returned only when its config equals the one asked for, so changing any
option of the experiment recomputes rather than mixing settings; rerunning an interrupted
experiment computes only what is missing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fairref.files import write_atomic, write_text_atomic


class PieceStore:
    """Pieces of one experiment in ``folder``, valid for ``config`` (a JSON-able dict).

    ``repo`` and ``source_paths``: the git checkout whose commit is recorded with each
    piece, and the paths in it whose uncommitted changes mark the piece ``dirty``."""

    def __init__(self, folder: str | Path, config: Mapping, repo: str | Path | None = None,
                 source_paths: Sequence[str] = ("fairref",)):
        self.folder = Path(folder)
        self.config = json.loads(json.dumps(dict(config)))  # as it reads back from JSON
        self.repo = None if repo is None else Path(repo)
        self.source_paths = list(source_paths)

    def save(self, name: str, piece: Mapping) -> None:
        """Store ``piece`` (a JSON-able dict whose ``outcomes`` are {model: {key: counts}})
        as ``name``; an outcome that is not a whole number is a ``ValueError``."""
        arrays = {}
        for m, outs in piece["outcomes"].items():
            for key, v in outs.items():
                v = np.asarray(v)
                if not np.array_equal(v, np.round(v)):
                    raise ValueError(f"piece {name}: outcome {m}/{key} is not a count")
                if "/" in m or "/" in key:
                    raise ValueError(f"piece {name}: '/' in model or outcome name {m}/{key}")
                arrays[f"{m}/{key}"] = v.astype(np.int32)
        meta = {k: v for k, v in piece.items() if k != "outcomes"}
        meta["config"] = self.config
        meta["source"] = source_version(self.repo, self.source_paths)

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        write_atomic(self.folder / f"{name}.npz", write_npz)
        write_text_atomic(self.folder / f"{name}.json", json.dumps(meta, indent=1))

    def load(self, name: str) -> dict | None:
        """The stored piece ``name`` with its outcomes (float64 arrays), or None when there
        is none or it was computed under another config."""
        meta_path, npz_path = self.folder / f"{name}.json", self.folder / f"{name}.npz"
        if not meta_path.is_file() or not npz_path.is_file():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("config") != self.config:
            return None
        outcomes: dict = {}
        with np.load(npz_path) as z:
            for key in z.files:
                m, what = key.split("/")
                outcomes.setdefault(m, {})[what] = z[key].astype(np.float64)
        return dict(meta, outcomes=outcomes)

    def load_all(self, names: Sequence[str]) -> dict[str, dict]:
        """{name: piece} for those of ``names`` stored under this config."""
        return {n: p for n in names if (p := self.load(n)) is not None}


def source_version(repo: Path | None, paths: Sequence[str] = ("fairref",)) -> dict:
    """{"commit", "dirty"}: the HEAD of the git checkout ``repo`` and whether ``paths`` in
    it have uncommitted changes; both None without a repo or outside a git checkout."""
    if repo is None:
        return {"commit": None, "dirty": None}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": dirty != ""}
