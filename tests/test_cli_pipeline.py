"""`fairref probe | calibrate | eval` as a user runs them (SPEC §3–§5, §7, §8; fairref/cli/).

The commands are thin shells over the library: each test checks what the command wrote
against the library call it stands for, or the property the SPEC states (an interrupted
calibration resumes to the same bytes; the toy default never calibrates on held-out
problems); and every way a user can get the input wrong ends in one `error:` line, exit
status 2 and nothing written.

Everything runs on a tiny random LLaDA (d = 32, 3 blocks) with a 20-token character
tokenizer, 4 prompts, G = 8 in 4 steps, one flat epoch: about a second per command.
"""

import dataclasses
import hashlib
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

import fairref.fair.calibrate as calibrate_module
import fairref.fair.pipeline as pipeline_module
from fairref.cli import main
from fairref.diffusion import SamplerSettings
from fairref.models import load, random_model, save
from tiny import tiny_config

CHARS = list("0123456789+=abc")
SPECIALS = ["<|pad|>", "<|eos|>", "<|mask|>", "<|unk|>", "<|bos|>"]
V = len(SPECIALS) + len(CHARS)
PAD, EOS, MASK, BOS = 0, 1, 2, 4
PROMPTS = ["12+3=", "1+1=", "ab+c=", "3+30="]
GEN = {"steps": 4, "gen_length": 8}
FAST = ["--epochs", "1", "--states", "2"]


def _checkpoint(path, *, n_layers=3, nan_in=None):
    """A tiny LLaDA directory with tokenizer.json and generation_config.json; ``nan_in``
    names a weight to poison with one NaN."""
    cfg = dataclasses.replace(tiny_config("llada", V, mask=MASK, eos=EOS, pad=PAD, bos=BOS),
                              n_layers=n_layers)
    model = random_model(cfg, seed=0, std=0.3)
    if nan_in is not None:
        with torch.no_grad():
            model.get_parameter(nan_in)[0, 0] = float("nan")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + CHARS)},
                                     unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    for s in SPECIALS:
        tok.add_special_tokens([s])
    return save(model, path, tokenizer=tok, generation_config=GEN)


def _jsonl(path, prompts=PROMPTS, answers=None):
    lines = [json.dumps({"prompt": p} if answers is None else {"prompt": p, "answer": a})
             for p, a in zip(prompts, answers or prompts)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_pipeline")
    return _checkpoint(d / "m"), _jsonl(d / "prompts.jsonl")


def _calibrate(ckpt, out, *extra):
    model, prompts = ckpt
    return main(["calibrate", "--model", str(model), "--prompts", str(prompts), "--out",
                 str(out), *FAST, *extra])


def _digest(qdir) -> str:
    """SHA-256 over the checkpoint's model.safetensors and config.json bytes."""
    h = hashlib.sha256()
    for f in ("model.safetensors", "config.json"):
        h.update((qdir / f).read_bytes())
    return h.hexdigest()


def _one_error_line(capsys, *names):
    """stderr is exactly one line, `error: ...`, mentioning every one of ``names``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method, solver", [("fair", "flat_block"),
                                            ("masked-uniform-gptq", "gptq_quantize")])
def test_an_interrupted_calibration_resumes_to_the_same_bytes(ckpt, tmp_path, monkeypatch,
                                                              capsys, method, solver):
    """Killed after block 2 of 3 (Ctrl-C between blocks), `--resume` recalibrates only
    block 3 and writes a checkpoint byte-identical to an uninterrupted run; two
    uninterrupted runs with the same seed are byte-identical too. The prior of `fair` is
    the one Stage I computes here (no --prior)."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _calibrate(ckpt, a, "--method", method) == 0
    assert _calibrate(ckpt, b, "--method", method) == 0
    assert _digest(a) == _digest(b)

    original = pipeline_module.quantize_model

    def killed_after_block_2(*args, on_block=None, **kw):
        def hook(l, model):
            on_block(l, model)
            if l == 1:
                raise KeyboardInterrupt
        return original(*args, on_block=hook, **kw)

    monkeypatch.setattr(pipeline_module, "quantize_model", killed_after_block_2)
    assert _calibrate(ckpt, c, "--method", method) == 130
    assert not c.exists() and (tmp_path / "c.partial").is_dir()
    monkeypatch.setattr(pipeline_module, "quantize_model", original)

    solved = []  # one flat_block call per block, one gptq_quantize call per linear
    solve = getattr(calibrate_module, solver)
    monkeypatch.setattr(calibrate_module, solver,
                        lambda *a, **k: solved.append(1) or solve(*a, **k))
    capsys.readouterr()
    assert _calibrate(ckpt, c, "--method", method, "--resume") == 0
    per_block = 1 if solver == "flat_block" else 7  # q, k, v, o, gate, up, down
    assert len(solved) == per_block  # blocks 1 and 2 came from the partial run
    assert "resumed after block 2" in capsys.readouterr().out
    assert _digest(c) == _digest(a)
    assert sorted(f.name for f in c.iterdir()) == sorted(f.name for f in a.iterdir())
    if method == "fair":
        assert (c / "prior.json").read_bytes() == (a / "prior.json").read_bytes()
    assert not (tmp_path / "c.partial").exists()


def test_resume_with_other_settings_is_refused(ckpt, tmp_path, monkeypatch, capsys):
    original = pipeline_module.quantize_model

    def killed(*args, on_block=None, **kw):
        def hook(l, model):
            on_block(l, model)
            raise KeyboardInterrupt
        return original(*args, on_block=hook, **kw)

    monkeypatch.setattr(pipeline_module, "quantize_model", killed)
    out = tmp_path / "q"
    assert _calibrate(ckpt, out, "--method", "fair-gptq") == 130
    monkeypatch.setattr(pipeline_module, "quantize_model", original)
    partial = (tmp_path / "q.partial" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert _calibrate(ckpt, out, "--method", "fair-gptq", "--resume", "--seed", "1") == 2
    _one_error_line(capsys, "--resume", "other settings")
    assert not out.exists()
    assert (tmp_path / "q.partial" / "model.safetensors").read_bytes() == partial
    # and a fresh run over a partial one must say which of the two the user wants
    assert _calibrate(ckpt, out, "--method", "fair-gptq") == 2
    _one_error_line(capsys, "--resume", "--force")


# --- what the commands write ----------------------------------------------------------------


def test_calibrate_without_prior_stores_the_prior_probe_writes(ckpt, tmp_path):
    """`fairref probe` writes fairref.fair.estimate_prior's prior for the same prompts and
    sampler. No --prior: a fair* method uses the prior Stage I computes on the same prompts
    and seed, which is exactly that file (and the one stored in the checkpoint)."""
    model, prompts = ckpt
    assert main(["probe", "--model", str(model), "--prompts", str(prompts), "--out",
                 str(tmp_path / "prior.json"), "--save-traces", str(tmp_path / "tr")]) == 0
    assert _calibrate(ckpt, tmp_path / "q", "--method", "fair-gptq") == 0
    written = json.loads((tmp_path / "prior.json").read_text())
    assert json.loads((tmp_path / "q" / "prior.json").read_text()) == written
    from fairref.fair import estimate_prior
    from fairref.prompts import load_prompts

    ps = load_prompts(model, "train", prompts_file=prompts)
    prior, _ = estimate_prior(load(model), ps.ids, SamplerSettings(**GEN),
                              attention_mask=ps.attention_mask)
    assert written == json.loads(json.dumps(prior.to_dict()))
    from fairref.diffusion import Trace

    [trace_file] = sorted((tmp_path / "tr").iterdir())
    trace = Trace.from_json(trace_file)
    trace.validate()
    assert trace.y.shape == (len(PROMPTS), trace.prompt_len + GEN["gen_length"])


def test_calibrate_with_a_given_prior_weights_by_that_prior(ckpt, tmp_path):
    """--prior FILE is what fair uses: a constant prior with γ = 0 gives w ≡ 1 on every
    row, so `fair` then writes the same weights as `masked-uniform` (SPEC §3.4)."""
    from fairref.fair import Prior, PriorConfig

    G = GEN["gen_length"]
    Prior.from_stats(torch.ones(G), torch.ones(G), PriorConfig(gamma=0.0)).save(
        tmp_path / "flat.json")
    assert _calibrate(ckpt, tmp_path / "f", "--method", "fair", "--prior",
                      str(tmp_path / "flat.json")) == 0
    assert _calibrate(ckpt, tmp_path / "u", "--method", "masked-uniform") == 0
    assert ((tmp_path / "f" / "model.safetensors").read_bytes()
            == (tmp_path / "u" / "model.safetensors").read_bytes())


def test_bits_reach_the_checkpoint_and_a16_keeps_activations_float(ckpt, tmp_path):
    assert _calibrate(ckpt, tmp_path / "q", "--method", "rtn", "--w-bits", "3",
                      "--a-bits", "16") == 0
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    for m in qc["modules"].values():
        assert m["weights"]["bits"] == 3 and m["activations"] is None


def test_eval_writes_what_the_library_evaluation_measures(ckpt, tmp_path, capsys):
    """The JSON is fairref.eval.run.evaluate on the same prompts, answers and models."""
    from fairref.eval.run import evaluate
    from fairref.prompts import load_prompts

    model, _ = ckpt
    prompts = _jsonl(tmp_path / "p.jsonl", PROMPTS, ["15", "2", "x", "33"])
    assert _calibrate(ckpt, tmp_path / "q", "--method", "quarot") == 0
    assert main(["eval", "--model", str(model), "--quantized", str(tmp_path / "q"),
                 "--prompts", str(prompts), "--out", str(tmp_path / "r.json")]) == 0
    table = capsys.readouterr().out
    got = json.loads((tmp_path / "r.json").read_text())

    ps = load_prompts(model, "heldout", prompts_file=prompts)
    assert ps.attention_mask is not None  # unequal prompts: left-padded, padding masked
    want = evaluate(load(model), {"q": load(tmp_path / "q")}, ps.ids, SamplerSettings(**GEN),
                    attention_mask=ps.attention_mask, problems=ps.problems, decode=ps.decode,
                    check=ps.check, eos_token_id=EOS)
    want = json.loads(json.dumps(want.to_dict()))
    for name in ("FP", "q"):  # everything but the wall time
        got["models"][name].pop("seconds"), want["models"][name].pop("seconds")
    assert got["models"] == want["models"]
    assert "token flip" in table and "\nq " in table


# --- the toy default --------------------------------------------------------------------------


def test_a_toy_model_calibrates_on_train_problems_and_evaluates_on_heldout(tmp_path):
    """SPEC §5: metrics on held-out prompts, never the calibration prompts. A model with the
    toy character tokenizer is recognised as a toy; its default prompts are its tasks'
    train split for Stage I/II and the held-out split for eval, in its prompt format."""
    from fairref.prompts import is_toy_model, load_prompts
    from fairref.toy import checkpoint_dir, presets, tasks
    from fairref.toy.char_tokenizer import (BOS_ID, EOS_ID, MASK_ID, PAD_ID, VOCAB_SIZE,
                                            build_tokenizer, encode_prompts)

    cfg = tiny_config("llada", VOCAB_SIZE, mask=MASK_ID, eos=EOS_ID, pad=PAD_ID, bos=BOS_ID)
    toy = save(random_model(cfg, seed=0), tmp_path / "toy", tokenizer=build_tokenizer(),
               generation_config=presets.generation_config("llada"))
    other = _checkpoint(tmp_path / "other")
    assert is_toy_model(toy) and is_toy_model(checkpoint_dir("llada"))
    assert not is_toy_model(other)
    train = load_prompts(toy, "train", n_per_task=3, seed=5)
    held = load_prompts(toy, "heldout", n_per_task=3, seed=5)
    assert len(train.texts) == len(held.texts) == 3 * len(tasks.TASKS)
    assert not any(tasks.is_heldout(p) for p in train.texts)
    assert all(tasks.is_heldout(p) for p in held.texts)
    assert torch.equal(train.ids, encode_prompts(list(train.texts)))
    with pytest.raises(ValueError, match="--prompts"):
        load_prompts(other, "train")


# --- errors: one line, exit 2, nothing written -----------------------------------------------


def test_a_prior_of_another_generation_length_is_refused(ckpt, tmp_path, capsys):
    from fairref.fair import Prior

    Prior.from_stats(torch.ones(5), torch.ones(5)).save(tmp_path / "p5.json")
    assert _calibrate(ckpt, tmp_path / "q", "--method", "fair", "--prior",
                      str(tmp_path / "p5.json")) == 2
    _one_error_line(capsys, "--prior", "5 generation positions", "gen_length = 8")
    assert not (tmp_path / "q").exists()


def test_an_unknown_method_names_the_closest_one(ckpt, tmp_path, capsys):
    assert _calibrate(ckpt, tmp_path / "q", "--method", "fiar-gptq") == 2
    _one_error_line(capsys, "'fiar-gptq'", "did you mean 'fair-gptq'")
    assert not (tmp_path / "q").exists()


def test_a_prior_for_a_method_without_prior_weights_is_refused(ckpt, tmp_path, capsys):
    from fairref.fair import Prior

    Prior.from_stats(torch.ones(8), torch.ones(8)).save(tmp_path / "p.json")
    assert _calibrate(ckpt, tmp_path / "q", "--method", "gptq", "--prior",
                      str(tmp_path / "p.json")) == 2
    _one_error_line(capsys, "--prior", "'gptq'")
    assert not (tmp_path / "q").exists()


def test_a_mask_token_inside_a_prompt_is_refused(ckpt, tmp_path, capsys):
    model, _ = ckpt
    bad = _jsonl(tmp_path / "bad.jsonl", ["1+1=", "2<|mask|>+3="])
    assert main(["probe", "--model", str(model), "--prompts", str(bad), "--out",
                 str(tmp_path / "prior.json")]) == 2
    _one_error_line(capsys, "bad.jsonl, line 2", "mask token")
    assert not (tmp_path / "prior.json").exists()


@pytest.mark.parametrize("flag, value", [("--w-bits", "1"), ("--w-bits", "9"),
                                         ("--a-bits", "1"), ("--a-bits", "12")])
def test_bits_outside_the_grid_are_refused(ckpt, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        _calibrate(ckpt, tmp_path / "q", "--method", "rtn", flag, value)
    assert e.value.code == 2
    _one_error_line(capsys, flag, value)
    assert not (tmp_path / "q").exists()


def test_eval_refuses_a_quantized_directory_whose_files_disagree(ckpt, tmp_path, capsys):
    model, prompts = ckpt
    assert _calibrate(ckpt, tmp_path / "q", "--method", "rtn") == 0
    cfg_file = tmp_path / "q" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    name = next(iter(cfg["quantization_config"]["modules"]))
    cfg["quantization_config"]["modules"][name]["weights"]["bits"] = 8  # file holds int4
    cfg_file.write_text(json.dumps(cfg))
    assert main(["eval", "--model", str(model), "--quantized", str(tmp_path / "q"),
                 "--prompts", str(prompts), "--out", str(tmp_path / "r.json")]) == 2
    _one_error_line(capsys, name)
    assert not (tmp_path / "r.json").exists()


def test_a_nan_in_the_teacher_is_a_clean_error(tmp_path, capsys):
    weight = "model.transformer.blocks.1.ff_out.weight"
    model = _checkpoint(tmp_path / "m", nan_in=weight)
    prompts = _jsonl(tmp_path / "p.jsonl")
    assert _calibrate((model, prompts), tmp_path / "q", "--method", "fair") == 2
    _one_error_line(capsys, "--model", weight, "NaN")
    assert not (tmp_path / "q").exists() and not (tmp_path / "q.partial").exists()


def test_a_nan_arising_in_calibration_is_the_pipelines_clean_error(ckpt, tmp_path, monkeypatch,
                                                                   capsys):
    """Calibration that leaves a NaN in the model (here planted after the last block): the
    pipeline's finiteness check refuses it; no checkpoint and no partial run (resuming
    would repeat the failure) remain."""
    original = pipeline_module.quantize_model

    def nan_after_the_last_block(*args, on_block=None, **kw):
        def hook(l, model):
            on_block(l, model)
            if l == len(model.blocks) - 1:
                with torch.no_grad():
                    model.get_parameter("model.transformer.ln_f.weight")[0] = float("nan")
        return original(*args, on_block=hook, **kw)

    monkeypatch.setattr(pipeline_module, "quantize_model", nan_after_the_last_block)
    assert _calibrate(ckpt, tmp_path / "q", "--method", "fair") == 2
    _one_error_line(capsys, "NaN/Inf", "'fair'", "ln_f")
    assert not (tmp_path / "q").exists() and not (tmp_path / "q.partial").exists()


def test_an_existing_out_is_not_overwritten_without_force(ckpt, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _calibrate(ckpt, out, "--method", "rtn") == 2
    _one_error_line(capsys, str(out), "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _calibrate(ckpt, out, "--method", "rtn", "--force") == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_a_clean_error(ckpt, tmp_path, capsys):
    assert _calibrate(ckpt, tmp_path / "q", "--method", "rtn", "--device", "cuda") == 2
    _one_error_line(capsys, "--device", "CUDA")


def test_every_stage_has_help(capsys):
    for cmd in ("probe", "calibrate", "eval"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: fairref {cmd}" in text and "SPEC §" in text and "--seed" in text


@pytest.mark.slow
def test_the_toy_pipeline_runs_end_to_end(tmp_path, capsys):
    """probe → calibrate fair with that prior → eval, on the shipped LLaDA toy."""
    from fairref.toy import checkpoint_dir

    toy = str(checkpoint_dir("llada"))
    small = ["--n-per-task", "2"]
    assert main(["probe", "--model", toy, "--out", str(tmp_path / "prior.json"), *small]) == 0
    assert main(["calibrate", "--model", toy, "--method", "fair", "--prior",
                 str(tmp_path / "prior.json"), "--out", str(tmp_path / "q"), "--epochs", "1",
                 *small]) == 0
    assert main(["eval", "--model", toy, "--quantized", str(tmp_path / "q"), "--out",
                 str(tmp_path / "r.json"), *small]) == 0
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["n_problems"] == 2 * 4 and set(got["models"]) == {"FP", "q"}
    assert 0 <= got["models"]["q"]["accuracy"]["accuracy"]["value"] <= 1
