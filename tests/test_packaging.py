"""Packaging: what a plain ``pip install .`` puts in the wheel (pyproject.toml).

The package list is written by hand (two entries map the toy checkpoints from toy_models/),
so a new subpackage of fairref/ must be added there or it silently disappears from
non-editable installs; and the toy checkpoints must be found from the package (SPEC §8:
``fairref demo`` runs from an installed package).
"""

import tomllib
from pathlib import Path

from fairref.toy import TOY_MODELS, checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]


def test_every_fairref_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fairref").rglob("__init__.py")}
    assert on_disk <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(on_disk - listed)}"


def test_toy_checkpoints_are_found_and_mapped_into_the_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for arch, folder in TOY_MODELS.items():
        d = checkpoint_dir(arch)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
            assert (d / f).is_file(), f"{d / f} missing"
        assert data["package-dir"][f"fairref.toy.checkpoints.{folder}"] == f"toy_models/{folder}"
