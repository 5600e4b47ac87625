"""paper_repro/fair_vs_baselines.py's piece store: the main table is computed as pieces
(regime × bits × calibration subset), each saved as it finishes, so an interrupted run
continues and the table is assembled only from complete groups.

A piece must come back from disk exactly (outcomes included), a piece made with another
configuration must not be reused, a rerun must compute nothing when every piece is there,
and a group with a missing subset must be listed as missing, not tabulated.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fvb():
    spec = importlib.util.spec_from_file_location(
        "fair_vs_baselines", ROOT / "paper_repro" / "fair_vs_baselines.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TINY = {"regimes": ["dream_default"], "bits": [[4, 8]], "subsets": 2, "calib_per_task": 1,
        "calib_seed": 0, "states_per_rollout": 2, "epochs": 1, "eval_per_task": 2,
        "eval_seed": 1, "diag_per_task": 0, "diag_method": "fair-gptq",
        "methods": ["fair", "fair-gptq", "quarot"]}


@pytest.mark.slow
def test_pieces_are_saved_reused_and_assembled_from_complete_groups(fvb, tmp_path, monkeypatch):
    monkeypatch.setattr(fvb, "OUT", tmp_path)
    store = fvb.piece_store("t", TINY)
    results, priors = fvb.run(TINY, 1, store)
    names = [fvb.piece_name("dream_default", [4, 8], k) for k in range(2)]
    assert sorted(p.name for p in store.folder.iterdir()) == sorted(
        f"{n}.{ext}" for n in names for ext in ("json", "npz"))
    entry = results["regimes"]["dream_default"]["bits"]["w4a8"]
    assert results["missing"] == [] and len(entry["subsets"]) == 2
    assert set(entry["aggregate"]["paired"]) == {"fair-gptq", "quarot"}
    assert "dream_default" in priors

    # every piece is on disk: a rerun computes nothing and assembles the same table
    monkeypatch.setattr(fvb, "run_piece", lambda *a: pytest.fail("recomputed a stored piece"))
    again, _ = fvb.run(TINY, 1, store)
    assert fvb.strip_seconds(again) == fvb.strip_seconds(results)

    # outcomes come back as the integers they were
    piece = store.load(names[1])
    for m, outs in piece["outcomes"].items():
        for key, v in outs.items():
            assert v.dtype == np.float64 and np.array_equal(v, np.round(v)) and v.shape == (8,)

    # another configuration does not reuse them
    assert fvb.piece_store("t", dict(TINY, epochs=2)).load(names[1]) is None
    # ... but which regimes and bits are run is not part of a piece
    assert fvb.piece_store("t", dict(TINY, bits=[[4, 4], [4, 8]])).load(names[1]) is not None

    # a missing subset leaves its group out and names it
    have = {names[0]: store.load(names[0])}
    partial, _ = fvb.assemble(TINY, have)
    assert partial["missing"] == [names[1]]
    assert partial["regimes"]["dream_default"]["bits"] == {}
    assert "**Incomplete**" in fvb.markdown(partial, "t")

    # every piece records its device; a group computed on two is marked as such
    assert store.load(names[0])["device"] == "cpu"
    assert "Computed on" not in fvb.markdown(results, "t")
    mixed = {names[0]: store.load(names[0]), names[1]: dict(store.load(names[1]), device="cuda:0")}
    text = fvb.markdown(fvb.assemble(TINY, mixed)[0], "t")
    assert "Computed on cpu and cuda:0 (subsets on different devices" in text


def test_cuda_without_cuda_is_one_clear_error_before_any_work(fvb, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.setattr(fvb, "OUT", tmp_path)
    monkeypatch.setattr(fvb, "run_piece", lambda *a: pytest.fail("ran a piece"))
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
        fvb.main(["--device", "cuda", "--quick", "--tag", "t"])
    assert list(tmp_path.iterdir()) == []


def test_out_naming_a_file_is_one_clear_error(fvb, tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ValueError, match="--out .* is a file; give a folder"):
        fvb.main(["--out", str(tmp_path / "f"), "--assemble", "--tag", "t"])
    assert (tmp_path / "f").read_text() == "mine"


def _paired(fvb, a, b):
    """The paired entry of fair (outcomes a) against one baseline (outcomes b), per outcome."""
    from fairref.eval.stats import paired_comparison
    pc = paired_comparison(np.asarray(a, float), np.asarray(b, float)).to_dict()
    return {"base": {k: pc for k in fvb.FAVOURS}}


def test_verdict_direction_is_the_sign_tests_not_the_means(fvb):
    """fair ahead on 40 problems by 0.05 and behind on 10 by 1.0: on average fair is behind
    (mean difference −0.08, its bootstrap CI below 0) while the sign test (40 vs 10,
    p ≈ 2e-5) puts fair ahead. "better"/"worse" follow the sign test, and the line adds
    that the mean's CI points the other way, rather than labelling a significant sign test
    with the mean's direction."""
    a = [0.05] * 40 + [0.0] * 10 + [0.0] * 50
    b = [0.0] * 40 + [1.0] * 10 + [0.0] * 50
    pc = _paired(fvb, a, b)
    assert pc["base"]["correct"]["mean_diff"]["hi"] < 0 and pc["base"]["correct"]["sign_test_p"] < 1e-4
    line = fvb.verdict(pc)[0]
    # correct: higher favours fair; token flips and mismatches: lower does
    assert "correct better (the mean's CI: worse)" in line
    assert "token_flips worse (the mean's CI: better)" in line


def test_verdict_says_when_the_mean_is_clear_and_the_sign_test_is_not(fvb):
    """fair ahead on 5 problems by 1.0, behind on none: n.s. by the sign test (p = 0.0625)
    while the mean's bootstrap CI excludes 0 (every resample with a problem ahead is > 0):
    the line reports both, and the summary counts only the sign test."""
    a = [1.0] * 5 + [0.0] * 95
    b = [0.0] * 100
    pc = _paired(fvb, a, b)
    assert pc["base"]["correct"]["sign_test_p"] > 0.05 and pc["base"]["correct"]["mean_diff"]["lo"] > 0
    lines = fvb.verdict(pc)
    assert lines[0].startswith("- vs base: correct n.s. (the mean's CI: better)")
    assert lines[-1].startswith("- **Does FAIR-Calib win here?** no")


def test_verdict_adds_nothing_when_both_agree(fvb):
    a = [1.0] * 60 + [0.0] * 40
    b = [0.0] * 60 + [0.0] * 40
    lines = fvb.verdict(_paired(fvb, a, b))
    assert lines[0] == "- vs base: correct better, token_flips worse, mismatched worse"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "fair", "nosuch"], "--methods: unknown method nosuch"),
    (["--methods", "fair-gptq", "masked-uniform-gptq"], "--versus fair is not among the methods"),
    (["--methods", "fair-gptq", "gptq", "--versus", "quarot"], "--versus quarot is not among"),
    (["--methods", "fair-gptq", "fair-gptq", "--versus", "fair-gptq"], "at least two methods"),
])
def test_bad_methods_are_one_clear_error_before_any_work(fvb, tmp_path, monkeypatch, argv,
                                                         message):
    monkeypatch.setattr(fvb, "OUT", tmp_path)
    monkeypatch.setattr(fvb, "run_piece", lambda *a: pytest.fail("ran a piece"))
    with pytest.raises(ValueError, match=message):
        fvb.main(argv + ["--tag", "t", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def _subset(correct: dict) -> dict:
    """A piece's subset entry whose methods get the given per-problem correctness, and one
    token flip and one mismatch on every problem they get wrong (the other numbers are
    placeholders that aggregate only averages)."""
    row = {k: 0.0 for k in ("token_flip", "set_flip", "mismatch", "accuracy", "masked_kl")}
    row["margin_bins"] = {"flips": [0, 0, 0, 0], "counts": [1, 1, 1, 1]}
    return {"models": {m: dict(row) for m in ["FP", *correct]},
            "outcomes": {m: {"correct": np.asarray(v, float),
                             "token_flips": 1 - np.asarray(v, float),
                             "mismatched": 1 - np.asarray(v, float)}
                         for m, v in correct.items()}}


def test_versus_judges_the_named_method_against_every_other(fvb):
    """With ``primary`` set, the paired tests are that method minus each other one (not
    fair minus them), and the table and verdict name it; without it the configuration,
    and so every committed piece's validity, is unchanged."""
    good, bad = [1.0] * 30, [0.0] * 30
    subsets = [_subset({"fair-gptq": good, "masked-uniform-gptq": bad})] * 2
    agg = fvb.aggregate(subsets, "fair-gptq")
    assert list(agg["paired"]) == ["masked-uniform-gptq"]
    assert agg["paired"]["masked-uniform-gptq"]["correct"]["mean_diff"]["estimate"] == 1.0
    c = dict(fvb.CONFIG, methods=["fair-gptq", "masked-uniform-gptq"], primary="fair-gptq")
    assert fvb.primary(c) == "fair-gptq" and fvb.baselines(c) == ["masked-uniform-gptq"]
    assert "primary" not in fvb.CONFIG and fvb.primary(fvb.CONFIG) == "fair"
    # an ablation chooses its bit settings; the main table at W4A8 alone is reduced
    assert not fvb.is_reduced(dict(c, bits=[[4, 8]]))
    assert fvb.is_reduced(dict(fvb.CONFIG, bits=[[4, 8]]))
    lines = fvb.verdict(agg["paired"], "`fair-gptq`")
    assert lines[0] == ("- vs masked-uniform-gptq: correct better, token_flips better, "
                        "mismatched better")
    assert lines[-1].startswith("- **Does `fair-gptq` win here?** yes")
