"""fairref.eval.pieces: a piece comes back from disk exactly, only under the config it was
computed with, never half-written, with the commit that computed it."""

import json
import subprocess

import numpy as np
import pytest

from fairref.eval.pieces import PieceStore, source_version

CONFIG = {"subsets": 2, "epochs": 1, "methods": ["fair", "quarot"]}


def a_piece(**over):
    piece = {"regime": "r", "subset": 0, "models": {"fair": {"accuracy": 0.5}},
             "outcomes": {"fair": {"correct": [1, 0, 1], "token_flips": np.array([0, 3, 1])},
                          "quarot": {"correct": np.array([0.0, 1.0, 1.0])}}}
    return dict(piece, **over)


def test_round_trip_keeps_numbers_and_integer_outcomes(tmp_path):
    store = PieceStore(tmp_path / "p", CONFIG)
    store.save("r_s0", a_piece())
    got = store.load("r_s0")
    assert got["models"] == {"fair": {"accuracy": 0.5}} and got["regime"] == "r"
    assert got["config"] == CONFIG
    assert got["source"] == {"commit": None, "dirty": None}  # no repo given
    assert np.array_equal(got["outcomes"]["fair"]["token_flips"], [0, 3, 1])
    assert got["outcomes"]["quarot"]["correct"].dtype == np.float64
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["r_s0.json", "r_s0.npz"]


def test_another_config_or_a_missing_half_is_not_a_piece(tmp_path):
    folder = tmp_path / "p"
    PieceStore(folder, CONFIG).save("r_s0", a_piece())
    assert PieceStore(folder, dict(CONFIG, epochs=2)).load("r_s0") is None
    assert PieceStore(folder, {**CONFIG, "methods": ["fair"]}).load("r_s0") is None
    assert PieceStore(folder, dict(CONFIG)).load("r_s1") is None
    (folder / "r_s0.npz").unlink()  # the outcomes are part of the piece
    assert PieceStore(folder, CONFIG).load("r_s0") is None
    # a config that only reads back equal through JSON (tuples) still matches
    PieceStore(folder, {**CONFIG, "methods": ("fair", "quarot")}).save("r_s1", a_piece())
    assert PieceStore(folder, CONFIG).load_all(["r_s0", "r_s1"]).keys() == {"r_s1"}


@pytest.mark.parametrize("bad", [{"fair": {"correct": np.array([0.5])}},
                                 {"fair/x": {"correct": [1]}}])
def test_a_bad_outcome_is_refused_before_anything_is_written(tmp_path, bad):
    store = PieceStore(tmp_path, CONFIG)
    with pytest.raises(ValueError, match="piece r_s0"):
        store.save("r_s0", a_piece(outcomes=bad))
    assert list(tmp_path.iterdir()) == []


def test_the_source_commit_and_dirty_flag_are_recorded(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert source_version(repo, ["pkg"]) == {"commit": head, "dirty": False}
    (repo / "other.txt").write_text("not watched\n")
    assert source_version(repo, ["pkg"])["dirty"] is False
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    assert source_version(repo, ["pkg"]) == {"commit": head, "dirty": True}
    store = PieceStore(tmp_path / "p", CONFIG, repo=repo, source_paths=["pkg"])
    store.save("r_s0", a_piece())
    meta = json.loads((tmp_path / "p" / "r_s0.json").read_text())
    assert meta["source"] == {"commit": head, "dirty": True} and "outcomes" not in meta
    assert source_version(tmp_path / "not-a-repo") == {"commit": None, "dirty": None}
