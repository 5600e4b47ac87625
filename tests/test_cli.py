"""The ``fairref`` command line (SPEC §8): ``generate`` and ``golden`` as a user runs them."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from fairref.cli import main
from fairref.diffusion import Trace, dream_generate, llada_generate
from fairref.models import load, random_model, save
from tiny import tiny_config

CHARS = list("0123456789+=abc")
SPECIALS = ["<|pad|>", "<|eos|>", "<|mask|>", "<|unk|>", "<|bos|>"]
V = len(SPECIALS) + len(CHARS)
PAD, EOS, MASK, BOS = 0, 1, 2, 4


def _write_checkpoint(path, arch):
    cfg = tiny_config(arch, V, mask=MASK, eos=EOS, pad=PAD, bos=BOS)
    save(random_model(cfg, seed=0, std=0.3), path)
    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_generate_prints_what_the_library_sampler_writes(tmp_path, capsys, arch):
    """The CLI is a thin shell: its text is the library sampler's tokens, decoded."""
    ckpt = _write_checkpoint(tmp_path / "m", arch)
    trace_file = tmp_path / "trace.json"
    rc = main(["generate", "--model", str(ckpt), "--prompt", "12+3=", "--steps", "4",
               "--gen-length", "8", "--trace", str(trace_file)])
    assert rc == 0
    printed = capsys.readouterr().out.strip()

    model = load(ckpt)
    ids = torch.tensor([[len(SPECIALS) + CHARS.index(c) for c in "12+3="]])  # (1, P)
    with torch.no_grad():
        if arch == "llada":
            x = llada_generate(model, ids, 4, 8, 8)
        else:
            x = dream_generate(model, ids, 4, 8)
    row = x[0, ids.shape[1]:].tolist()
    row = row[: row.index(EOS)] if EOS in row else row
    assert printed == Tokenizer.from_file(str(ckpt / "tokenizer.json")).decode(row)
    trace = Trace.from_json(trace_file)
    trace.validate()
    assert torch.equal(trace.y, x)


def test_generate_missing_model_is_a_clear_error(tmp_path, capsys):
    rc = main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "1+1="])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_golden_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "v.json"
    out.write_text("{}")
    assert main(["golden", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {}


def test_every_command_has_help(capsys):
    for cmd in ("golden", "generate"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: fairref " + cmd in capsys.readouterr().out


def test_generate_uses_the_prompt_format_of_generation_config(tmp_path, capsys):
    """A model trained on fixed-length, left-padded, BOS-prefixed prompts (the toy models)
    declares that format in generation_config.json; the CLI must reproduce it exactly."""
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    (ckpt / "generation_config.json").write_text(json.dumps(
        {"steps": 4, "gen_length": 8, "prompt_length": 9, "add_bos": True}))
    assert main(["generate", "--model", str(ckpt), "--prompt", "12+3="]) == 0
    printed = capsys.readouterr().out.strip()
    model = load(ckpt)
    row = [BOS] + [len(SPECIALS) + CHARS.index(c) for c in "12+3="]
    ids = torch.tensor([[PAD] * (9 - len(row)) + row])  # (1, 9): pads are visible tokens
    with torch.no_grad():
        x = llada_generate(model, ids, 4, 8, 8)
    gen = x[0, 9:].tolist()
    gen = gen[: gen.index(EOS)] if EOS in gen else gen
    assert printed == Tokenizer.from_file(str(ckpt / "tokenizer.json")).decode(gen)


def test_generate_rejects_a_prompt_longer_than_prompt_length(tmp_path, capsys):
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    (ckpt / "generation_config.json").write_text(json.dumps({"prompt_length": 3}))
    assert main(["generate", "--model", str(ckpt), "--prompt", "12+3="]) == 2
    assert "prompt_length=3" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_generate_on_a_shipped_toy_model_matches_the_toy_evaluation(capsys, arch):
    """`fairref generate --model toy_models/<arch>_toy` reproduces, from the checkpoint's
    generation_config.json alone, the answers the toy-model report scores."""
    from pathlib import Path

    from fairref.toy.char_tokenizer import decode_completion, encode_prompts
    from fairref.diffusion import generate
    from fairref.toy.evaluate import toy_sampler
    from fairref.toy.tasks import make_problems

    ckpt = Path(__file__).resolve().parents[1] / "toy_models" / f"{arch}_toy"
    prompts = [p for p, _ in make_problems("sort", 3, seed=7, split="heldout")]
    args = ["generate", "--model", str(ckpt)]
    for p in prompts:
        args += ["--prompt", p]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    x = encode_prompts(prompts)  # (B, P)
    with torch.no_grad():
        ids = generate(load(ckpt), x, toy_sampler(arch))
    assert printed == [decode_completion(row) for row in ids[:, x.shape[1]:]]


def test_generate_warns_about_characters_outside_the_vocabulary(tmp_path, capsys):
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    assert main(["generate", "--model", str(ckpt), "--prompt", "12#3=", "--steps", "2",
                 "--gen-length", "4"]) == 0
    err = capsys.readouterr().err
    assert "'#'" in err and "<|unk|>" in err


# --- errors: one line on stderr, exit 2, nothing half-written (SPEC §7) -----------------------


def _one_error_line(capsys, *names):
    """stderr is exactly one line, `error: ...`, mentioning every one of ``names``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def _generate(ckpt, *extra):
    return main(["generate", "--model", str(ckpt), "--prompt", "1+1=", "--steps", "2",
                 "--gen-length", "4", *extra])


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_generate_on_a_corrupt_safetensors_names_the_file(tmp_path, capsys, damage):
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100] if damage == "truncated" else b"not a checkpoint")
    assert _generate(ckpt) == 2
    _one_error_line(capsys, "model.safetensors", "corrupt")


def test_generate_with_an_index_naming_a_missing_shard_names_it(tmp_path, capsys):
    model = random_model(tiny_config("llada", V, mask=MASK, eos=EOS, pad=PAD), seed=0)
    ckpt = save(model, tmp_path / "m", max_shard_bytes=20000)
    shard = sorted(ckpt.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert _generate(ckpt) == 2
    _one_error_line(capsys, shard.name)


@pytest.mark.parametrize("key,value,says", [("rope_theta", "big", "positive number"),
                                            ("rms_norm_eps", None, "got null"),
                                            ("n_layers", True, "positive integer")])
def test_generate_with_a_config_value_of_the_wrong_type_names_file_and_key(
        tmp_path, capsys, key, value, says):
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    raw = json.loads((ckpt / "config.json").read_text())
    raw[key] = value
    (ckpt / "config.json").write_text(json.dumps(raw))
    assert _generate(ckpt) == 2
    _one_error_line(capsys, "config.json", repr(key), says)


def test_generate_with_a_misspelled_config_key_names_it_and_the_closest_key(tmp_path, capsys):
    ckpt = _write_checkpoint(tmp_path / "m", "dream")
    raw = json.loads((ckpt / "config.json").read_text())
    raw["rope_thetaa"] = raw.pop("rope_theta")
    (ckpt / "config.json").write_text(json.dumps(raw))
    assert _generate(ckpt) == 2
    _one_error_line(capsys, "'rope_thetaa'", "did you mean 'rope_theta'")


def test_generate_with_a_corrupt_tokenizer_json_names_it(tmp_path, capsys):
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    text = (ckpt / "tokenizer.json").read_text()
    (ckpt / "tokenizer.json").write_text(text[: len(text) // 2])
    assert _generate(ckpt) == 2
    _one_error_line(capsys, "tokenizer.json")


@pytest.mark.parametrize("what", ["file", "missing", "no config"])
def test_generate_with_a_model_path_that_is_not_a_checkpoint_says_what_it_is(
        tmp_path, capsys, what):
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    if what == "file":
        path, says = ckpt / "tokenizer.json", "is a file, not a checkpoint directory"
    elif what == "missing":
        path, says = tmp_path / "nope", "no checkpoint directory"
    else:
        (ckpt / "config.json").unlink()
        path, says = ckpt, "no config.json"
    assert _generate(path) == 2
    _one_error_line(capsys, path, says)


@pytest.mark.parametrize("flag", ["--steps", "--gen-length", "--block-length"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_generate_rejects_a_non_positive_count_naming_the_flag(tmp_path, capsys, flag, value):
    """`args.x or default` used to read 0 as "absent": now 0 is an argument error."""
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path), "--prompt", "1", flag, value])
    assert e.value.code == 2
    _one_error_line(capsys, f"argument {flag}", "positive integer", repr(value))


def test_generate_rejects_a_negative_temperature(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path), "--prompt", "1", "--temperature", "-1"])
    assert e.value.code == 2
    _one_error_line(capsys, "--temperature")


def test_a_missing_required_flag_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "1"])
    assert e.value.code == 2
    _one_error_line(capsys, "--model", "fairref generate --help")


VECTORS = Path(__file__).parent / "golden" / "int4_vectors.json"


@pytest.mark.parametrize("content,says", [
    ("not json {", "not valid JSON"),
    ("[1, 2, 3]", "holds a JSON list"),
    ('{"schema": "other/2", "testGroups": []}', "schema 'other/2'"),
    ('{"testGroups": []}', "no 'schema' key"),
    ('{"schema": "fairref-int4-vectors/1"}', "'testGroups' is missing"),
    ('{"schema": "fairref-int4-vectors/1", "testGroups": [{"tests": [{"x": 1}]}]}', "tcId"),
])
def test_golden_verify_on_a_file_that_is_not_a_vectors_file_names_it(
        tmp_path, capsys, content, says):
    f = tmp_path / "v.json"
    f.write_text(content)
    assert main(["golden", "--verify", str(f)]) == 2
    line = _one_error_line(capsys, f, says)
    assert "schema None" not in line


def test_golden_verify_on_a_missing_file_or_a_directory_names_it(tmp_path, capsys):
    assert main(["golden", "--verify", str(tmp_path / "none.json")]) == 2
    _one_error_line(capsys, "none.json")
    assert main(["golden", "--verify", str(tmp_path)]) == 2
    _one_error_line(capsys, tmp_path, "directory")


def test_golden_out_into_a_missing_folder_creates_it_and_writes_the_committed_bytes(
        tmp_path, capsys):
    """The writer is deterministic: a fresh file equals the committed one byte for byte."""
    out = tmp_path / "new" / "folder" / "v.json"
    assert main(["golden", "--out", str(out)]) == 0
    assert out.read_bytes() == VECTORS.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["v.json"]  # no temporary left


@pytest.mark.parametrize("force", [False, True])
def test_golden_out_onto_a_directory_is_an_error_that_leaves_nothing(tmp_path, capsys, force):
    target = tmp_path / "bad"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    assert main(["golden", "--out", str(target)] + (["--force"] if force else [])) == 2
    _one_error_line(capsys, target, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_golden_out_failing_midway_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    """A failure while the file is written leaves the old file and no `*.tmp*` beside it."""
    from fairref.quant import golden_cases

    out = tmp_path / "v.json"
    out.write_text("old")

    def full_disk(self, text, **k):  # half the text reaches the disk, then it is full
        open(self, "w").write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_text", full_disk)
    monkeypatch.setattr(golden_cases, "build_vectors", lambda: {"numberOfTests": 0})
    assert main(["golden", "--out", str(out), "--force"]) == 2
    _one_error_line(capsys, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json"]
    assert out.read_text() == "old"


def test_version_flag_prints_the_package_version(capsys):
    """`fairref --version` prints pyproject.toml's version; `__version__` (the fallback when
    the package is not installed) says the same."""
    import re

    import fairref

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert capsys.readouterr().out.strip() == f"fairref {declared}"
    assert fairref.__version__ == declared


def test_interrupt_exits_130_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Ctrl-C is a line and status 130; an unexpected exception type is a bug, not hidden."""
    from fairref import cli

    def interrupted(args):
        raise KeyboardInterrupt

    def bug(args):
        raise RuntimeError("internal")

    add = cli._COMMANDS["golden"][0]
    monkeypatch.setitem(cli._COMMANDS, "golden", (add, interrupted))
    assert main(["golden", "--verify", "x"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    monkeypatch.setitem(cli._COMMANDS, "golden", (add, bug))
    with pytest.raises(RuntimeError, match="internal"):
        main(["golden", "--verify", "x"])
