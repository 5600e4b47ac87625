"""The ``fairref`` command line (SPEC §8): ``generate`` and ``golden`` as a user runs them."""

import json

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
    from fairref.toy.evaluate import TOY_SAMPLER
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
        ids = generate(load(ckpt), x, TOY_SAMPLER)
    assert printed == [decode_completion(row) for row in ids[:, x.shape[1]:]]


def test_generate_warns_about_characters_outside_the_vocabulary(tmp_path, capsys):
    ckpt = _write_checkpoint(tmp_path / "m", "llada")
    assert main(["generate", "--model", str(ckpt), "--prompt", "12#3=", "--steps", "2",
                 "--gen-length", "4"]) == 0
    err = capsys.readouterr().err
    assert "'#'" in err and "<|unk|>" in err
