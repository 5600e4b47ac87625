"""``fairref demo`` (fairref/demo.py, SPEC §8): a tiny configuration end to end, as a user runs it.

The run goes through the CLI with the default preset swapped for a tiny one (one toy, two
methods, a few problems, one flat epoch), so the test sees exactly what a user sees: the
printed table, ``results.json``, ``report.md`` and the figures. The table is checked against
an independent recomputation from the per-problem outcomes stored in ``results.json``.
"""

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

import fairref.demo as demo
from fairref.cli import main
from fairref.demo import DemoConfig, format_table, run_demo
from fairref.toy.tasks import TASKS, is_heldout

TINY = dict(models=("dream",), methods=("rtn", "fair"), calib_per_task=1, eval_per_task=2,
            lag_problems=2, flat_epochs=1, n_resamples=50)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny demo through ``fairref demo``: (stdout, results.json, out folder)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRREF_PROGRESS", "0")
        mp.setattr(DemoConfig, "small", classmethod(lambda cls, **kw: cls(**{**TINY, **kw})))
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = main(["demo", "--out", str(out), "--seed", "3"])
    assert rc == 0
    return buf.getvalue(), json.loads((out / "results.json").read_text()), out


@pytest.mark.slow  # shares one tiny run: ~10 s of CPU, more on a busy machine
def test_the_demo_writes_results_report_and_every_figure_it_names(run):
    _, results, out = run
    assert results["config"]["seed"] == 3 and results["config"]["models"] == ["dream"]
    m = results["models"]["dream"]
    names = list(m["figures"].values())
    assert {"prior", "flip_by_margin", "lag_ccdf"} <= set(m["figures"])
    report = (out / "report.md").read_text()
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in report  # the report shows it
    assert (out / m["calibration"]["prior_file"]).is_file()
    assert "one run proves nothing" in report and "paper_repro" in report
    assert "Held-out accuracy per task" in report
    # nothing else is left beside OUT (the temporary build folder was renamed)
    assert [p.name for p in out.parent.iterdir()] == ["out"]


@pytest.mark.slow  # shares one tiny run: ~10 s of CPU, more on a busy machine
def test_calibration_uses_only_train_prompts_and_evaluation_only_held_out_ones(run):
    _, results, _ = run
    m = results["models"]["dream"]
    calib = [p for _, p in m["calibration"]["problems"]]
    held = [p for _, p in m["heldout"]["problems"]]
    assert not any(is_heldout(p) for p in calib)
    assert all(is_heldout(p) for p in held)
    assert {t for t, _ in m["heldout"]["problems"]} == set(TASKS)  # all four tasks
    assert len(held) == 4 * TINY["eval_per_task"]


def _recomputed(pp: dict) -> dict:
    """The headline numbers from per-problem outcomes (the oracle: pooled sums, NumPy)."""
    def ratio(num, den):
        num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
        return None if den.sum() == 0 else float(num.sum() / den.sum())

    out = {"accuracy": float(np.mean(pp["correct"]))}
    if "token_flips" in pp:
        out |= {"token_flip": ratio(pp["token_flips"], pp["frontier_slots"]),
                "set_flip": ratio(pp["set_flips"], pp["set_steps"]),
                "masked_kl": ratio(pp["kl_sum"], pp["kl_slots"]),
                "mismatch": ratio(pp["mismatched"], pp["counted"])}
    else:  # the teacher: nothing to flip or mismatch
        out |= dict.fromkeys(("token_flip", "set_flip", "masked_kl", "mismatch"))
    return out


@pytest.mark.slow  # shares one tiny run: ~10 s of CPU, more on a busy machine
def test_table_rows_equal_the_numbers_recomputed_from_per_problem_outcomes(run):
    """Every value in the table (and so in the printed one) is the pooled ratio of the
    stored per-problem counts: the numbers a paired test would use are the table's."""
    _, results, _ = run
    rows = results["table"]
    assert [(r["model"], r["method"]) for r in rows] == [
        ("dream", "FP"), ("dream", "rtn"), ("dream", "fair")]
    for r in rows:
        want = _recomputed(results["models"][r["model"]]["per_problem"][r["method"]])
        for key, v in want.items():
            assert r[key] == v, (r["method"], key)
            if v is not None:
                lo, hi = r[key + "_ci95"]
                assert lo <= v <= hi or np.isclose(lo, v) or np.isclose(hi, v)


@pytest.mark.slow  # shares one tiny run: ~10 s of CPU, more on a busy machine
def test_the_printed_table_shows_the_results_json_numbers(run):
    stdout, results, _ = run
    lines = [ln for ln in stdout.splitlines() if ln.startswith("dream ")]
    assert len(lines) == len(results["table"])
    for line, r in zip(lines, results["table"]):
        assert line.split()[1] == r["method"]
        acc = f"{100 * r['accuracy']:.1f}"
        assert f"  {acc} [" in line
        if r["method"] == "FP":
            assert line.count("n/a") == 4  # flips, KL and mismatch are undefined for FP
        else:
            assert f"{100 * r['token_flip']:.2f} [" in line
            assert f"{r['masked_kl']:.4f} [" in line
            assert f"{100 * r['mismatch']:.2f} [" in line
    assert format_table(results) in stdout


def test_an_existing_out_is_refused_before_any_work_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        run_demo(DemoConfig(**TINY), out)
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "keep.txt").read_text() == "mine"


def test_a_failure_midway_leaves_no_out_folder_and_no_temporary(tmp_path, monkeypatch):
    def fail(name, config, tmp, progress):
        (tmp / "half.png").write_bytes(b"x")
        raise ValueError("boom")

    monkeypatch.setattr(demo, "_run_model", fail)
    with pytest.raises(ValueError, match="boom"):
        run_demo(DemoConfig(**TINY), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_the_run_restores_the_callers_thread_count(tmp_path, monkeypatch):
    import torch

    def fail(*args):
        raise ValueError("x")

    monkeypatch.setattr(demo, "_run_model", fail)
    before = torch.get_num_threads()
    with pytest.raises(ValueError):
        run_demo(DemoConfig(**{**TINY, "threads": before + 1}), tmp_path / "o")
    assert torch.get_num_threads() == before


def test_demo_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--models", "--full", "--seed", "--force"):
        assert flag in text


@pytest.mark.parametrize("bad", [dict(models=("gpt",)), dict(methods=("nope",)),
                                 dict(eval_per_task=0), dict(flat_epochs=-1), dict(models=())])
def test_a_bad_config_is_a_value_error_naming_the_field(bad):
    with pytest.raises(ValueError, match="DemoConfig." + next(iter(bad))):
        DemoConfig(**bad)


def test_the_full_preset_is_larger_than_the_default_in_every_size():
    s, f = DemoConfig.small(), DemoConfig.full()
    for name in ("calib_per_task", "states_per_rollout", "flat_epochs", "eval_per_task",
                 "lag_problems"):
        assert getattr(f, name) > getattr(s, name), name
    assert f.flat_epochs == 15  # the SPEC §4.3d default
    assert DemoConfig.full(seed=5).seed == 5
    assert s == DemoConfig(workers=2) and s.models == ("llada", "dream")


@pytest.mark.slow  # two spawned interpreters importing torch: ~10 s of CPU
def test_one_process_per_model_gives_the_in_process_outcomes(tmp_path, monkeypatch):
    """The models are independent: running them in worker processes (the CLI's default)
    changes no outcome, so nothing leaks between them through global state."""
    monkeypatch.setenv("FAIRREF_PROGRESS", "0")
    base = dict(TINY, models=("llada", "dream"), methods=("rtn",), eval_per_task=1,
                lag_problems=1)
    a = run_demo(DemoConfig(**base, workers=1), tmp_path / "a")
    b = run_demo(DemoConfig(**base, workers=2), tmp_path / "b")
    assert b["timing"]["workers"] == 2
    for name in ("llada", "dream"):
        assert a["models"][name]["per_problem"] == b["models"][name]["per_problem"]
        assert a["models"][name]["eval"]["models"]["rtn"]["teacher_forced"] == \
            b["models"][name]["eval"]["models"]["rtn"]["teacher_forced"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        p.name for p in (tmp_path / "a").iterdir())


@pytest.mark.slow  # shares one tiny run: ~10 s of CPU, more on a busy machine
def test_the_demo_runs_and_reports_each_toys_shipped_sampler(run):
    """Stage I and the evaluation use the sampler of the checkpoint's generation_config.json
    (fairref.toy.evaluate.toy_sampler), recorded per model and stated in the report."""
    import dataclasses

    from fairref.toy.evaluate import describe_sampler, toy_sampler

    _, results, out = run
    m = results["models"]["dream"]
    assert m["sampler"] == dataclasses.asdict(toy_sampler("dream"))
    assert f"dream: {describe_sampler(toy_sampler('dream'), 'dream')}" in (
        out / "report.md").read_text()
