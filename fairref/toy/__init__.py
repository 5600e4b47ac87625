"""The toy tasks, their character tokenizer and the two toy architectures (importable).

The shipped toy checkpoints live in the repository's ``toy_models/`` folder (the same
layout as a real LLaDA / Dream directory, SPEC §7); a regular ``pip install`` copies them
into the package as ``fairref/toy/checkpoints/``. :func:`checkpoint_dir` finds them, in
this order:

1. ``$FAIRREF_TOY_MODELS/<name>`` when that variable is set;
2. the installed copy, ``fairref/toy/checkpoints/<name>``;
3. the source checkout, ``<repo>/toy_models/<name>`` (an editable install or a clone).
"""

from __future__ import annotations

import os
from pathlib import Path

#: the shipped toy checkpoints, by short name → directory name
TOY_MODELS = {"llada": "llada_toy", "dream": "dream_toy"}


def checkpoint_dir(name: str) -> Path:
    """The directory of a shipped toy checkpoint: ``"llada"``/``"dream"`` or its folder name."""
    folder = TOY_MODELS.get(name, name)
    if folder not in TOY_MODELS.values():
        known = ", ".join(sorted(TOY_MODELS) + sorted(TOY_MODELS.values()))
        raise ValueError(f"no shipped toy model {name!r}; known: {known}")
    here = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get("FAIRREF_TOY_MODELS"):
        candidates.append(Path(os.environ["FAIRREF_TOY_MODELS"]) / folder)
    candidates += [here / "checkpoints" / folder, here.parents[1] / "toy_models" / folder]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise FileNotFoundError(
        f"toy checkpoint {folder!r} not found (looked in {', '.join(map(str, candidates))}); "
        "install fairref from a clone of the repository, or set FAIRREF_TOY_MODELS to the "
        "folder that holds llada_toy/ and dream_toy/")


__all__ = ["TOY_MODELS", "checkpoint_dir"]
