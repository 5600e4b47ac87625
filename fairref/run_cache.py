"""A long run's intermediate results on disk, so that a rerun resumes (SPEC §3–5, §7).

``paper_repro/llada_dream_w4a4.py`` calibrates and evaluates one method at a time on a real
model; what every method shares is computed once and kept here:

- the full-precision teacher's recorded rollouts on the evaluation prompts
  (:func:`save_traces` / :func:`load_traces`), which :func:`fairref.eval.run.evaluate`
  accepts as ``teacher_traces``;
- the Stage I data of :func:`fairref.fair.pipeline.prepare` (:func:`save_calib_data` /
  :func:`load_calib_data`): the prior and the calibration states, masked and plain.

Format: a directory written atomically (:func:`fairref.files.atomic_directory`) holding
safetensors files (never pickle, SPEC §7) and JSON. Every tensor round-trips bit for bit,
so a resumed run calibrates on exactly the data of an uninterrupted one. At real sizes the
traces are large (T·N·L values per field; e.g. 256 steps × 500 problems × 400 positions ×
12 fields ≈ 2.5 GB), which is why they are binary and not :meth:`Trace.to_json`.

The probe's per-rollout statistics and traces (``CalibData.probe``) are not kept: Stage II
does not read them, and a loaded :class:`CalibData` has ``probe=None``.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from fairref.diffusion.trace import Trace
from fairref.fair.pipeline import CalibData
from fairref.fair.prior import Prior
from fairref.fair.states import CalibStates
from fairref.files import atomic_directory, read_json

_TRACE_META = ("prompt_len", "gen_length", "mask_token_id", "settings")


def _tensors(obj, prefix: str = "") -> dict[str, Tensor]:
    """The tensor fields of a dataclass ``obj`` (None fields left out), contiguous."""
    return {prefix + f.name: getattr(obj, f.name).contiguous() for f in fields(obj)
            if isinstance(getattr(obj, f.name), Tensor)}


def _read(file: Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and the JSON ``meta`` of one safetensors file written here."""
    if not file.is_file():
        raise FileNotFoundError(f"cache file {file} is missing; delete its folder to "
                                "recompute it")
    with safe_open(str(file), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
        return {k: fh.get_tensor(k) for k in fh.keys()}, meta


def save_traces(traces: list[Trace], folder: str | Path, overwrite: bool = False) -> None:
    """Write ``traces`` as ``folder/trace_NNN.safetensors`` (atomically, as one folder)."""
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        for i, tr in enumerate(traces):
            meta = {k: getattr(tr, k) for k in _TRACE_META}
            save_file(_tensors(tr), str(tmp / f"trace_{i:03d}.safetensors"),
                      metadata={"meta": json.dumps(meta)})


def load_traces(folder: str | Path) -> list[Trace]:
    """The traces written by :func:`save_traces`, in order (on the CPU, as recorded)."""
    files = sorted(Path(folder).glob("trace_*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no trace_*.safetensors in {folder}; delete the folder to "
                                "recompute the teacher's rollouts")
    out = []
    for f in files:
        tensors, meta = _read(f)
        out.append(Trace(**tensors, **{k: meta[k] for k in _TRACE_META}))
    return out


def save_calib_data(data: CalibData, folder: str | Path, overwrite: bool = False) -> None:
    """Write the prior and the calibration states of ``data`` (atomically, as one folder)."""
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        data.prior.save(tmp / "prior.json")
        tensors = {**_tensors(data.masked, "masked."), **_tensors(data.plain, "plain.")}
        save_file(tensors, str(tmp / "states.safetensors"))
        meta = {"prompt_len": {"masked": data.masked.prompt_len,
                               "plain": data.plain.prompt_len},
                "seconds": data.seconds}
        (tmp / "calib_data.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_calib_data(folder: str | Path, device="cpu") -> CalibData:
    """The :class:`CalibData` written by :func:`save_calib_data` (``probe=None``), its
    states on ``device`` (the model's: Stage II calibrates there)."""
    folder = Path(folder)
    meta = read_json(folder / "calib_data.json", "calibration data cache")
    tensors, _ = _read(folder / "states.safetensors")

    def states(kind: str) -> CalibStates:
        own = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(kind + ".")}
        return CalibStates(attention_mask=own.pop("attention_mask", None),
                           prompt_len=meta["prompt_len"][kind], **own).to(device)

    return CalibData(prior=Prior.load(folder / "prior.json"), masked=states("masked"),
                     plain=states("plain"), probe=None, seconds=meta["seconds"])
