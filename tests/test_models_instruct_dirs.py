"""Real-layout instruct directories load (SPEC §2, §7): tiny LLaDA-Instruct / Dream-Instruct
checkpoints written by ``tests/tiny.py`` with the real file names, config.json key sets and
special-token layout go through ``load``, ``load_tokenizer`` and ``fairref generate --chat``.

The layout claims are checked against the committed real files (tests/models/), not against
numbers copied into this file."""

import json
import re

import pytest
import torch
from safetensors import safe_open

from fairref.cli import main
from fairref.diffusion import dream_generate, llada_generate
from fairref.models import encode_chat, load, load_tokenizer
from tiny import (
    ASCII, DATA, DREAM_FIRST_SPECIAL, DREAM_SPECIALS, LLADA_FIRST_SPECIAL, LLADA_SPECIALS,
    write_tiny_instruct,
)

ARCHS = ["llada", "dream"]
REAL = {"llada": "llada-8b-instruct.config.json", "dream": "dream-v0-instruct-7b.config.json"}
FIRST = {"llada": LLADA_FIRST_SPECIAL, "dream": DREAM_FIRST_SPECIAL}
SPECIALS = {"llada": LLADA_SPECIALS, "dream": DREAM_SPECIALS}
MASK = {"llada": "<|mdm_mask|>", "dream": "<|mask|>"}


@pytest.fixture(scope="module", params=ARCHS)
def instruct(request, tmp_path_factory):
    arch = request.param
    return arch, write_tiny_instruct(tmp_path_factory.mktemp(arch) / "m", arch)


def test_directory_mirrors_the_real_file_names_and_config_keys(instruct):
    arch, d = instruct
    real = json.loads((DATA / REAL[arch]).read_text())
    cfg = json.loads((d / "config.json").read_text())
    assert set(cfg) == set(real)  # exactly the real key set
    names = sorted(p.name for p in d.iterdir())
    shards = [n for n in names if n.endswith(".safetensors")]
    assert all(re.fullmatch(r"model-0000\d-of-0000\d\.safetensors", n) for n in shards)
    assert set(names) - set(shards) == {"config.json", "model.safetensors.index.json",
                                        "tokenizer.json", "tokenizer_config.json",
                                        "generation_config.json"}
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards


def test_special_ids_keep_their_real_offsets(instruct):
    """Every id config.json gives (mask, eos, pad, bos) and the embedding size sit at the same
    offset from the first special token as in the real config.json."""
    arch, d = instruct
    real = json.loads((DATA / REAL[arch]).read_text())
    cfg = json.loads((d / "config.json").read_text())
    for key in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "vocab_size"):
        if key in real:
            assert cfg[key] - ASCII == real[key] - FIRST[arch], key
    tok = load_tokenizer(d)
    assert tok.tokenizer.id_to_token(tok.mask_token_id) == MASK[arch]
    assert tok.mask_token_id - ASCII == SPECIALS[arch].index(MASK[arch])
    assert tok.chat_format == arch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sharded_bf16_directory_loads_exactly_in_the_requested_dtype(instruct, dtype):
    """Each parameter equals the stored bfloat16 tensor converted to ``dtype`` (exact both
    ways: bf16 → f32 is exact, bf16 → bf16 is the identity)."""
    arch, d = instruct
    model = load(d, dtype=dtype)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    state = model.state_dict()
    assert set(state) == set(index["weight_map"])
    for shard in set(index["weight_map"].values()):
        with safe_open(str(d / shard), framework="pt") as f:
            for name in f.keys():
                stored = f.get_tensor(name)
                assert stored.dtype == torch.bfloat16
                assert state[name].dtype == dtype
                assert torch.equal(state[name], stored.to(dtype)), name


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_chat_prints_what_the_library_writes_for_the_chat_prompt(arch, tmp_path,
                                                                          capsys):
    """`fairref generate --chat` = the library sampler on encode_chat(prompt)."""
    d = write_tiny_instruct(tmp_path / arch, arch, generation_config=False)
    rc = main(["generate", "--model", str(d), "--prompt", "Hi", "--chat", "--steps", "4",
               "--gen-length", "8"])
    assert rc == 0
    printed = capsys.readouterr().out.rstrip("\n")
    model, tok = load(d), load_tokenizer(d)
    ids = torch.tensor([encode_chat(tok, "Hi")])  # (1, P)
    with torch.no_grad():
        x = (llada_generate(model, ids, 4, 8, 8) if arch == "llada"
             else dream_generate(model, ids, 4, 8))
    row = x[0, ids.shape[1]:].tolist()
    row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
    assert printed == tok.decode(row)


def test_generate_chat_for_a_model_without_a_chat_format_is_one_error_line(tmp_path, capsys):
    d = write_tiny_instruct(tmp_path / "base", "llada", generation_config=False,
                            chat_template=False)
    rc = main(["generate", "--model", str(d), "--prompt", "Hi", "--chat"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "no chat format" in err[0] and "without --chat" in err[0]
