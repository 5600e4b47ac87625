"""The real-model reproduction: the math answer rule, the problem file and its split, the
run cache, and paper_repro/llada_dream_w4a4.py end to end on tiny instruct directories.

The answer rule is checked on hand-made completions whose answer a person reads off; the
split by its defining properties (sizes, disjointness, determinism, a function of the
distinct questions only); the cache by a bit-exact round trip; the script by its outputs'
structure, a resume that skips and leaves every byte as it was, and one clear error for
each bad input.
"""

import importlib.util
import json
import re
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from fairref.diffusion import SamplerSettings
from fairref.eval.math_answers import (
    MathProblem,
    draw_problems,
    is_correct,
    predicted_answer,
    read_math_jsonl,
    reference_answer,
    split_problems,
)
from tiny import write_tiny_instruct

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "llada_dream_w4a4", ROOT / "paper_repro" / "llada_dream_w4a4.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


repro = _script()


# ------------------------------------------------------------------ the answer rule

@pytest.mark.parametrize("answer, value", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", Fraction(72)),
    ("#### 1,234", Fraction(1234)),
    ("so $5 each #### $18.", Fraction(18)),
    ("#### -3.50", Fraction(-7, 2)),
    ("first #### 3 then corrected #### 4", Fraction(4)),  # the LAST ####
    ("#### 3/4", Fraction(3, 4)),
    ("#### 1,000,000", Fraction(10**6)),
])
def test_reference_answer_is_the_number_after_the_last_hashes(answer, value):
    assert reference_answer(answer) == value


@pytest.mark.parametrize("answer", ["the answer is 72", "#### seventy-two", "####", "#### 3 4"])
def test_reference_answer_without_one_number_after_hashes_is_an_error(answer):
    with pytest.raises(ValueError, match="####"):
        reference_answer(answer)


@pytest.mark.parametrize("completion, value", [
    ("She sold 48 + 24 = 72 clips.\n#### 72", Fraction(72)),
    ("#### 72 (that is 3 times 24)", Fraction(72)),  # first number after ####
    ("5 + 7 = 12, so the answer is \\boxed{12}. Check: 12 - 5 = 7", Fraction(12)),
    ("Total: $1,234.50.", Fraction(246900, 200)),
    ("It costs 18 dollars. The answer is 20.", Fraction(20)),  # the last number
    ("pages 3-4 then 10", Fraction(10)),
    ("3-4", Fraction(4)),  # a hyphen after a digit is not a minus sign
    ("The temperature is -7 degrees", Fraction(-7)),
    ("1,2,3", Fraction(3)),  # commas not followed by three digits separate numbers
    ("half: .5", Fraction(1, 2)),
    ("no number here", None),
    ("", None),
])
def test_predicted_answer_follows_the_documented_rules(completion, value):
    assert predicted_answer(completion) == value


def test_correct_means_equal_as_exact_fractions():
    p = MathProblem("q", "#### 42", Fraction(42), 1)
    for text in ("42", "42.0", "$42", "#### 42.", "84/2", "The answer is 42.00"):
        assert is_correct(p, text), text
    for text in ("42.01", "41", "4 2 0", "no idea"):
        assert not is_correct(p, text), text


# ------------------------------------------------------------------ the file and the split

def _write(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records)
                    + "\n")
    return path


def _gsm(path: Path, n: int, offset: int = 0) -> Path:
    return _write(path, [{"question": f"Ann has {i} pens and gets {i + 1}. How many?",
                          "answer": f"{i}+{i + 1}={2 * i + 1}\n#### {2 * i + 1:,}"}
                         for i in range(offset, offset + n)])


@pytest.mark.parametrize("line, match", [
    ("{not json", "line 2: not valid JSON"),
    ('["a list"]', "line 2: expected a JSON object"),
    ('{"answer": "#### 1"}', 'line 2: expected a non-empty "question"'),
    ('{"question": "q?"}', 'line 2: expected an "answer" string'),
    ('{"question": "q?", "answer": "it is 4"}', 'line 2: the answer has no "####"'),
])
def test_bad_problem_lines_are_one_error_naming_the_line(tmp_path, line, match):
    f = _write(tmp_path / "p.jsonl", [{"question": "ok?", "answer": "#### 1"}, line])
    with pytest.raises(ValueError, match=match):
        read_math_jsonl(f)


def test_problem_file_accepts_prompt_for_question_and_skips_blank_lines(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "a?", "answer": "#### 2", "id": 7}, "",
                                      {"question": "b?", "answer": "x #### 3"}])
    got = read_math_jsonl(f)
    assert [(p.question, p.reference, p.line) for p in got] == [("a?", 2, 1), ("b?", 3, 3)]
    with pytest.raises(FileNotFoundError, match="no problems file"):
        read_math_jsonl(tmp_path / "missing.jsonl")


def test_split_is_disjoint_sized_seeded_and_ignores_repeats(tmp_path):
    problems = read_math_jsonl(_gsm(tmp_path / "p.jsonl", 20))
    calib, evals = split_problems(problems, 5, 9, seed=3)
    assert len(calib) == 5 and len(evals) == 9
    assert not {p.question for p in calib} & {p.question for p in evals}
    assert (calib, evals) == split_problems(problems, 5, 9, seed=3)
    assert (calib, evals) != split_problems(problems, 5, 9, seed=4)
    # repeating questions changes nothing: the rule sees distinct questions only
    assert split_problems(problems + problems[:7], 5, 9, seed=3) == (calib, evals)
    # the split is a prefix of the seeded order: the evaluation problems are the next ones
    assert draw_problems(problems, 14, seed=3) == calib + evals
    with pytest.raises(ValueError, match="20 distinct questions.*21 are needed"):
        split_problems(problems, 12, 9, seed=0)


# ------------------------------------------------------------------ the run cache

def _same(v, w, where) -> None:
    """Bit-exact equality of a tensor (NaN where NaN, same dtype) or equality of a value."""
    if isinstance(v, torch.Tensor):
        torch.testing.assert_close(w, v, rtol=0, atol=0, equal_nan=True, msg=str(where))
    else:
        assert v == w, where


def test_run_cache_round_trips_traces_and_stage1_data_bit_for_bit(tmp_path):
    from fairref.fair.pipeline import prepare
    from fairref.models import load
    from fairref.run_cache import load_calib_data, load_traces, save_calib_data, save_traces

    d = write_tiny_instruct(tmp_path / "llada", "llada")
    model = load(d)
    ids = torch.randint(0, 100, (3, 5))
    data = prepare(model, ids, SamplerSettings(steps=4, gen_length=4), states_per_rollout=2)
    save_traces(list(data.probe.traces), tmp_path / "traces")
    save_calib_data(data, tmp_path / "stage1")
    again = load_traces(tmp_path / "traces")
    for a, b in zip(data.probe.traces, again):
        for name, v in vars(a).items():
            w = getattr(b, name)
            _same(v, w, name)
    back = load_calib_data(tmp_path / "stage1")
    assert torch.equal(back.prior.pi, data.prior.pi)
    for kind in ("masked", "plain"):
        for name, v in vars(getattr(data, kind)).items():
            w = getattr(getattr(back, kind), name)
            _same(v, w, (kind, name))


# ------------------------------------------------------------------ the script end to end

SMALL = ["--n-calib", "2", "--n-eval", "3", "--epochs", "1", "--states", "2",
         "--gen-length", "8", "--steps", "4", "--methods", "rtn", "fair"]


def _args(model, data, out, *extra):
    return ["--model", str(model), "--data", str(data), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    return {"llada": write_tiny_instruct(root / "llada", "llada"),
            "dream": write_tiny_instruct(root / "dream", "dream"),
            "data": _gsm(root / "gsm.jsonl", 8)}


def _snapshot(out: Path) -> dict:
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*"))
            if f.is_file()}


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_script_runs_end_to_end_and_a_rerun_resumes(dirs, tmp_path, arch, capsys):
    out = tmp_path / "out"
    extra = ["--block-length", "4"] if arch == "llada" else []
    argv = _args(dirs[arch], dirs["data"], out, *SMALL, *extra)
    assert repro.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["FP", "rtn", "fair"]
    for m in ("rtn", "fair"):
        row = results["models"][m]
        for key in ("accuracy", "token_flip", "set_flip", "masked_kl", "mismatch"):
            assert key in row
        assert 0 <= row["accuracy"]["value"] <= 1
        assert row["masked_kl"]["value"] >= 0
        record = json.loads((out / "methods" / f"{m}.json").read_text())
        assert record["method"]["name"] == m
        outcomes = record["outcomes"]
        assert all(len(v) == 3 for v in outcomes.values())
    fair = results["models"]["fair"]["description"]
    assert fair["solver"] == "flat" and fair["flat"]["epochs"] == 1
    assert len(fair["block_loss"]) == 2  # both tiny blocks calibrated
    assert set(results["paired"]) == {"rtn"}
    assert set(results["paired"]["rtn"]) == {"correct", "token_flips", "mismatched"}
    rec = results["record"]
    assert rec["family"] == arch and rec["n_calib"] == 2 and rec["n_eval"] == 3
    published = repro.SAMPLERS[arch]
    assert rec["sampler"]["gen_length"] == 8 and rec["sampler"]["temperature"] == \
        published.temperature
    assert "| fair |" in (out / "results.md").read_text()
    before = _snapshot(out)
    capsys.readouterr()
    # a rerun with the same settings computes nothing: it must not even calibrate
    repro_quantize, repro.quantize = repro.quantize, None
    try:
        assert repro.main(argv) == 0
    finally:
        repro.quantize = repro_quantize
    assert "rtn: finished earlier" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_rerun_with_other_settings_is_refused_unless_forced(dirs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _args(dirs["llada"], dirs["data"], out, "--n-calib", "2", "--n-eval", "3",
                 "--gen-length", "4", "--steps", "4", "--block-length", "4",
                 "--methods", "rtn")
    assert repro.main(argv) == 0
    capsys.readouterr()
    changed = [a if a != "3" else "4" for a in argv]  # --n-eval 4
    assert repro.main(changed) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "n_eval" in err and "--force" in err
    assert repro.main(changed + ["--force"]) == 0
    assert json.loads((out / "results.json").read_text())["record"]["n_eval"] == 4


@pytest.mark.parametrize("case, match", [
    ("missing data", "no problems file"),
    ("missing model", "--model .*: no such directory"),
    ("too few", "8 distinct questions.*--n-calib 5 \\+ --n-eval 5"),
    ("no chat format", "no chat_template"),
    ("unused sampler flag", "--alg: not an option of the llada sampler"),
    ("llada blocks", "--gen-length \\(8\\) to be a multiple of --block-length \\(32\\)"),
    ("cuda", "CUDA is not available"),
    ("bfloat16 flat", "--dtype bfloat16: the flat solver of fair"),
    ("overlap", "also a calibration question"),
    ("foreign out", "holds no run of this script"),
])
def test_bad_inputs_are_one_error_line(dirs, tmp_path, capsys, case, match):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    model, data = dirs["llada"], dirs["data"]
    extra = ["--n-calib", "2", "--n-eval", "2", "--methods", "rtn"]
    if case == "missing data":
        data = tmp_path / "none.jsonl"
    elif case == "missing model":
        model = tmp_path / "no_model"
    elif case == "too few":
        extra = ["--n-calib", "5", "--n-eval", "5"]
    elif case == "no chat format":
        model = write_tiny_instruct(tmp_path / "base", "llada", chat_template=False)
    elif case == "unused sampler flag":
        extra += ["--alg", "entropy"]
    elif case == "llada blocks":
        extra += ["--gen-length", "8"]
    elif case == "cuda":
        extra += ["--device", "cuda"]
    elif case == "bfloat16 flat":
        extra = ["--dtype", "bfloat16", "--methods", "rtn", "fair"]
    elif case == "overlap":
        extra += ["--calib", str(data)]
    elif case == "foreign out":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("mine")
    assert repro.main(_args(model, data, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(match, err), err
    assert not (tmp_path / "out" / "results.json").exists()


def test_help_says_what_the_user_provides_and_the_sampler_sources(capsys):
    with pytest.raises(SystemExit):
        repro.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for needle in ("LLaDA-8B-Instruct", "Dream-v0-Instruct-7B", "#### 42", "generate.py",
                   "eval_instruct/eval.sh", "Memory", "Reproducing the paper"):
        assert needle in text, needle


def test_stage1_is_what_prepare_computes(tmp_path):
    """The script's Stage I is pipeline.prepare with its batch size passed on; with every
    prompt in one batch it must be the same computation as one unbatched call."""
    from fairref.fair.pipeline import prepare
    from fairref.models import load

    model = load(write_tiny_instruct(tmp_path / "llada", "llada"))
    ids = torch.randint(0, 100, (3, 5))
    settings = SamplerSettings(steps=4, gen_length=4)
    cfg = repro.ReproConfig(model=tmp_path, data=tmp_path, out=tmp_path, batch=8,
                            states_per_rollout=2)
    ours = repro.stage1(model, ids, None, settings, cfg)
    ref = prepare(model, ids, settings, states_per_rollout=2)
    _same(ours.prior.pi, ref.prior.pi, "pi")
    for kind in ("masked", "plain"):
        for name, v in vars(getattr(ref, kind)).items():
            _same(v, getattr(getattr(ours, kind), name), (kind, name))


def _no_seconds(tree):
    if isinstance(tree, dict):
        return {k: _no_seconds(v) for k, v in tree.items() if k != "seconds"}
    return tree


def test_students_evaluated_one_at_a_time_on_cached_traces_match_one_joint_call(tmp_path):
    """What makes the script's per-method resume exact: evaluate(teacher_traces=) gives each
    student the result it gets in one call with all students (a random sampler, so the
    generators must line up too), and the traces survive the cache."""
    from fairref.eval.run import evaluate, teacher_eval_traces
    from fairref.fair.pipeline import calibrate
    from fairref.models import load
    from fairref.run_cache import load_traces, save_traces

    model = load(write_tiny_instruct(tmp_path / "dream", "dream"))
    ids = torch.randint(0, 100, (5, 4))  # (N, P)
    settings = SamplerSettings(steps=4, gen_length=6, alg="entropy", temperature=0.1, top_p=0.9)
    students = {m: calibrate(model, m).model for m in ("rtn",)}
    students["rtn-w8"] = calibrate(model, "rtn", w_bits=8, a_bits=8).model
    joint = evaluate(model, students, ids, settings, chunk=2, seed=5)
    save_traces(teacher_eval_traces(model, ids, settings, chunk=2, seed=5), tmp_path / "t")
    traces = load_traces(tmp_path / "t")
    for name, student in students.items():
        alone = evaluate(model, {name: student}, ids, settings, chunk=2, seed=5,
                         teacher_traces=traces)
        assert _no_seconds(alone.models[name].to_dict()) == \
            _no_seconds(joint.models[name].to_dict()), name


def test_calibration_problems_from_their_own_file(tmp_path):
    calib_file, data_file = _gsm(tmp_path / "train.jsonl", 6), _gsm(tmp_path / "test.jsonl", 5, 100)
    cfg = repro.ReproConfig(model=tmp_path, data=data_file, out=tmp_path / "o", calib=calib_file,
                            n_calib=4, n_eval=5)
    calib, evals = repro.load_problems(cfg)
    assert calib == draw_problems(read_math_jsonl(calib_file), 4, 0)
    assert sorted(p.line for p in evals) == [1, 2, 3, 4, 5]  # all of --data, in seeded order
    with pytest.raises(ValueError, match="--calib .*--n-calib 7"):
        repro.load_problems(repro.ReproConfig(model=tmp_path, data=data_file, out=tmp_path,
                                              calib=calib_file, n_calib=7, n_eval=5))
