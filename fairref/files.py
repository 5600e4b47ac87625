"""User files in and out, with clear errors and nothing half-written (SPEC §7).

Every file a user hands to fairref (config.json, an index, generation_config.json, a
vectors file) is read with :func:`read_json`, which turns every way the read can fail
into one ``ValueError`` / ``FileNotFoundError`` whose message names the file and says
what to do. Everything fairref writes goes through :func:`write_text_atomic` or
:func:`write_atomic` (one file) or :func:`atomic_directory` (a directory): the content
is written under a hidden temporary name beside the target and renamed into place only
when complete, so a failure (an exception, a full disk, Ctrl-C) leaves the target as it
was and no temporary behind.

Permissions are the ordinary ones: files 0o666 and directories 0o777, filtered by the
process umask, like ``open`` and ``mkdir`` — unlike ``tempfile.mkstemp`` / ``mkdtemp`` or
safetensors' ``save_file``, whose 0o600 / 0o700 would survive the rename and hide a saved
checkpoint from the other users of a shared machine.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed JSON of the file ``path``; ``what`` names it in errors ("vectors file").

    Raises ``FileNotFoundError`` when ``path`` is not a file and ``ValueError`` when it is
    not UTF-8 JSON, each message naming ``path``."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{what} {path} is a directory; expected a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not a JSON text file (byte {e.start} is not "
                         "UTF-8); check that the path points at the right file") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, "
                         f"column {e.colno}); the file may be truncated or corrupt") from e


def read_jsonl(path: str | Path, what: str, example: str) -> Iterator[tuple[int, str, dict]]:
    """(line number, "FILE, line N", object) for each non-blank line of a JSONL file of
    ``what`` (e.g. "prompts") whose lines must each be one JSON object; ``example`` (e.g.
    ``'{"prompt": "..."}'``) is shown in the errors, which name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}: give a JSONL file with one "
                                f"{example} per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); give a JSONL file") from e
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg}); write one JSON object per "
                             "line") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object like {example}, got "
                             f"{line.strip()[:60]!r}")
        yield n, where, rec


def _temp_name(path: Path, kind: str) -> Path:
    """A fresh hidden name beside ``path`` (same filesystem, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to the file ``path`` atomically; returns ``path``.

    An existing file is replaced; an existing *directory* is an error (``ValueError``),
    never touched. A missing parent folder is created."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path``, then rename it to
    ``path``; returns ``path``. ``write`` may open ``tmp`` and write it from the start in
    any way (``np.savez`` on an open handle; ``fig.savefig(tmp, format="png")``: the
    temporary name does not end in the target's suffix). If it raises, nothing is left
    behind and ``path`` is as it was.

    The rules of :func:`write_text_atomic` apply: an existing file is replaced, a
    directory at ``path`` is a ``ValueError``, a missing parent folder is created."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory; give a file name "
                         f"(e.g. {path / 'out.json'})")
    _make_parent(path)
    tmp = _temp_name(path, "tmp")
    try:
        # O_EXCL: never write through someone else's file; 0o666 & ~umask, like open().
        # The file exists before ``write`` runs, so a writer that reopens it keeps the mode.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on a clean exit it becomes ``path``.

    ``path`` must not exist, be an empty directory, or (with ``overwrite=True``) be a
    directory that is then replaced as a whole. If the body raises, the temporary is
    removed and ``path`` is left exactly as it was. A missing parent folder is created.
    Raises ``FileExistsError`` for a file at ``path`` or a non-empty one without
    ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another "
                              "output path or remove the file")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True "
                              "(--force) to replace it, or choose another output path")
    _make_parent(path)
    tmp = _temp_name(path, "tmp")
    os.mkdir(tmp)  # 0o777 & ~umask, like mkdir
    try:
        yield tmp
        _ordinary_permissions(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ordinary_permissions(folder: Path) -> None:
    """Give every file under ``folder`` the mode ``open()`` would (0o666 & ~umask).

    Some writers create private files (safetensors' ``save_file`` uses 0o600). The umask
    is read by creating a probe file, not with ``os.umask``, which would change it for
    every thread of the process for a moment."""
    probe = folder / f".probe-{uuid.uuid4().hex[:12]}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink() and (f.stat().st_mode & 0o777) != mode:
            os.chmod(f, mode)


def _make_parent(path: Path) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
    parent.mkdir(parents=True, exist_ok=True)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside first, then removed,
    so at every instant ``path`` is either the old directory or the new one."""
    old = None
    if path.exists():
        old = _temp_name(path, "old")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)  # put the old directory back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
