"""Checkpoint directories in and out (SPEC §7): the public layout, shards, bit-identical
round trips, and one strict error per malformed case, each naming the key or file.

The public layout is written here independently of ``fairref.models``: tensor names and
shapes come from the naming rules of SPEC §2 spelled out below, not from a model's
``state_dict``."""

import json
import os
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fairref.models import DreamModel, LLaDAModel, load, random_model, save
from fairref.models.config import config_from_dict
from tiny import DATA, tiny_raw


def public_shapes(arch: str) -> dict[str, tuple]:
    """Tensor name → shape in the public checkpoints (LLaDA-8B / Dream-7B naming)."""
    if arch == "llada":
        d, F, V, n, kv = 32, 48, 48, 2, 32  # kv = n_kv_heads * head_dim
        out = {"model.transformer.wte.weight": (V, d), "model.transformer.ln_f.weight": (d,),
               "model.transformer.ff_out.weight": (V, d)}
        for i in range(n):
            p = f"model.transformer.blocks.{i}."
            out.update({p + "attn_norm.weight": (d,), p + "q_proj.weight": (d, d),
                        p + "k_proj.weight": (kv, d), p + "v_proj.weight": (kv, d),
                        p + "attn_out.weight": (d, d), p + "ff_norm.weight": (d,),
                        p + "ff_proj.weight": (F, d), p + "up_proj.weight": (F, d),
                        p + "ff_out.weight": (d, F)})
        return out
    d, F, V, n, kv = 32, 48, 48, 2, 16  # Dream: 2 kv heads of 8
    out = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(n):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                    p + "self_attn.q_proj.weight": (d, d), p + "self_attn.q_proj.bias": (d,),
                    p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.v_proj.bias": (kv,),
                    p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight": (F, d),
                    p + "mlp.up_proj.weight": (F, d), p + "mlp.down_proj.weight": (d, F)})
    return out


def public_tensors(arch: str, dtype=torch.bfloat16, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.3).to(dtype) for k, s in public_shapes(arch).items()}


def write_public(path: Path, raw: dict, tensors: dict, shards: int = 1) -> Path:
    """Write a checkpoint the way the public repositories are laid out."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[s::shards]}  # interleaved, like the real index
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return path


ARCHS = ["llada", "dream"]
X = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("arch", ARCHS)
def test_public_layout_loads_every_tensor_under_its_public_name(arch, tmp_path):
    """bf16 weights on disk come back as float32, upcast exactly, at the right names."""
    tensors = public_tensors(arch)
    model = load(write_public(tmp_path / "ck", tiny_raw(arch), tensors))
    assert isinstance(model, {"llada": LLaDAModel, "dream": DreamModel}[arch])
    sd = model.state_dict()
    assert sorted(sd) == sorted(tensors)
    assert all(sd[k].dtype == torch.float32 and torch.equal(sd[k], tensors[k].float()) for k in sd)
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_sharded_checkpoint_with_index_loads_identically(arch, tmp_path):
    tensors = public_tensors(arch)
    one = load(write_public(tmp_path / "one", tiny_raw(arch), tensors))
    two = load(write_public(tmp_path / "two", tiny_raw(arch), tensors, shards=2))
    assert len(list((tmp_path / "two").glob("*.safetensors"))) == 2
    assert torch.equal(one.logits(X), two.logits(X))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("max_shard_bytes", [None, 5000])
def test_save_then_load_gives_bit_identical_logits(arch, max_shard_bytes, tmp_path):
    model = random_model(config_from_dict(tiny_raw(arch)), seed=4, std=0.3)
    out = save(model, tmp_path / "saved", max_shard_bytes=max_shard_bytes)
    again = load(out)
    assert torch.equal(again.logits(X), model.logits(X))
    if max_shard_bytes is not None:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        shards = set(index["weight_map"].values())
        assert len(shards) > 1 and all((out / s).is_file() for s in shards)
        assert not (out / "model.safetensors").exists()
    # config.json is written back with every informational key of the real file
    assert json.loads((out / "config.json").read_text()) == tiny_raw(arch)


def test_save_in_bfloat16_then_load_float32_is_exact_upcast(tmp_path):
    model = random_model(config_from_dict(tiny_raw("dream")), seed=5)
    again = load(save(model, tmp_path / "bf16", dtype=torch.bfloat16))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v.to(torch.bfloat16).float())


def test_load_in_bfloat16_keeps_bfloat16(tmp_path):
    model = load(write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada")),
                 dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.logits(X).dtype == torch.bfloat16


# --- malformed checkpoints: one test per case, each error names the key or file ---------


def test_missing_tensor_is_an_error_naming_it(tmp_path):
    t = public_tensors("llada")
    del t["model.transformer.blocks.1.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing key 'model\.transformer\.blocks\.1\.up_proj\.weight'"):
        load(write_public(tmp_path / "ck", tiny_raw("llada"), t))


def test_unexpected_tensor_is_an_error_naming_it(tmp_path):
    t = public_tensors("dream")
    t["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(32)
    with pytest.raises(ValueError, match=r"unexpected key 'model\.layers\.0\.self_attn\.o_proj\.bias'"):
        load(write_public(tmp_path / "ck", tiny_raw("dream"), t))


def test_shape_mismatch_is_an_error_naming_the_key(tmp_path):
    t = public_tensors("dream")
    t["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(32, 32)  # as if no GQA
    with pytest.raises(ValueError, match=r"shape mismatch for key 'model\.layers\.1\.self_attn\.k_proj\.weight'"):
        load(write_public(tmp_path / "ck", tiny_raw("dream"), t))


@pytest.mark.parametrize("arch,key,value", [("llada", "alibi", True),
                                            ("dream", "rope_scaling", {"type": "linear", "factor": 2.0})])
def test_unsupported_config_value_is_an_error_naming_the_key(arch, key, value, tmp_path):
    raw = {**tiny_raw(arch), key: value}
    with pytest.raises(ValueError, match=key):
        load(write_public(tmp_path / "ck", raw, public_tensors(arch)))


def test_missing_config_json_is_an_error_naming_it(tmp_path):
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"))
    os.remove(ck / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(ck)


def test_index_naming_a_missing_shard_is_an_error_naming_the_shard(tmp_path):
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"), shards=2)
    os.remove(ck / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load(ck)


def test_index_listing_a_tensor_its_shard_lacks_is_an_error(tmp_path):
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"), shards=2)
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.transformer.wte.weight"] = "model-00002-of-00002.safetensors" \
        if index["weight_map"]["model.transformer.wte.weight"].startswith("model-00001") \
        else "model-00001-of-00002.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model.transformer.wte.weight"):
        load(ck)


def test_malformed_index_is_an_error_naming_the_file(tmp_path):
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"), shards=2)
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["not", "a", "map"]}))
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        load(ck)


def test_missing_weights_is_an_error_naming_the_files(tmp_path):
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"))
    os.remove(ck / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(ck)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("shards", [1, 2])
def test_corrupt_safetensors_is_an_error_naming_the_file(damage, shards, tmp_path):
    """A cut-off download or a file that is not safetensors at all: ValueError naming it."""
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"), shards=shards)
    victim = ck / ("model.safetensors" if shards == 1 else "model-00002-of-00002.safetensors")
    data = victim.read_bytes()
    victim.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"<html>404</html>" * 8,
                        "empty": b""}[damage])
    with pytest.raises(ValueError, match=victim.name) as e:
        load(ck)
    assert "truncated or corrupt" in str(e.value)


def test_model_path_that_is_a_file_or_missing_is_an_error_saying_so(tmp_path):
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"))
    with pytest.raises(FileNotFoundError, match="is a file, not a checkpoint directory"):
        load(ck / "config.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint directory at .*nope"):
        load(tmp_path / "nope")


def test_bad_config_value_is_an_error_naming_the_file_and_the_key(tmp_path):
    raw = {**tiny_raw("llada"), "rope_theta": "big"}
    ck = write_public(tmp_path / "ck", raw, public_tensors("llada"))
    with pytest.raises(ValueError, match=r"config\.json: .*'rope_theta' must be"):
        load(ck)


@pytest.mark.parametrize("text", ["{\"model_type\": ", "[1, 2]", "\udcff"])
def test_config_json_that_is_not_a_json_object_is_an_error_naming_it(text, tmp_path):
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"))
    (ck / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match="config.json"):
        load(ck)


# --- atomic save -------------------------------------------------------------------------


def test_save_refuses_a_non_empty_directory_unless_overwrite(tmp_path):
    model = random_model(config_from_dict(tiny_raw("llada")), seed=6)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        save(model, target)
    assert (target / "keep.txt").read_text() == "user data"
    save(model, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    # nothing temporary is left beside the target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_into_an_empty_existing_directory_is_allowed(tmp_path):
    model = random_model(config_from_dict(tiny_raw("dream")), seed=7)
    (tmp_path / "empty").mkdir()
    assert torch.equal(load(save(model, tmp_path / "empty")).logits(X), model.logits(X))


def test_llada_8b_preset_has_the_public_index_names_and_size():
    """Built on meta (no memory): the names are exactly those of the real 8B index and the
    bfloat16 byte count equals its total_size, which pins the product of every shape."""
    from fairref.models import LLaDAConfig, build

    facts = json.loads((DATA / "llada-8b-instruct.index-facts.json").read_text())
    model = build(LLaDAConfig(), device="meta")
    sd = model.state_dict()
    names = set(facts["top_level"]) | {f"model.transformer.blocks.{i}.{leaf}"
                                       for i in range(32) for leaf in facts["per_block"]}
    assert len(names) == facts["n_tensors"] and set(sd) == names
    assert sum(t.numel() * 2 for t in sd.values()) == facts["total_size"]


# --- save: tokenizer, generation_config, permissions, atomicity ---------------------------


def _char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<|pad|>", "<|eos|>", "<|mask|>", "<|unk|>"]
                                        + list("0123456789+="))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return tok


@pytest.mark.parametrize("as_path", [False, True])
def test_save_with_tokenizer_and_generation_config_round_trips(as_path, tmp_path):
    """What load, load_tokenizer and `fairref generate` read comes back as it was given."""
    from fairref.models import load_tokenizer

    # the config's mask id is the tokenizer's <|mask|> (load_tokenizer checks they agree)
    raw = {**tiny_raw("llada"), "mask_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    model = random_model(config_from_dict(raw), seed=8)
    tok = _char_tokenizer()
    if as_path:
        tok.save(str(tmp_path / "tokenizer.json"))
        tok = tmp_path  # a directory holding tokenizer.json
    gen = {"steps": 4, "gen_length": 8, "add_bos": False, "prompt_length": None}
    out = save(model, tmp_path / "m", tokenizer=tok, generation_config=gen)
    assert torch.equal(load(out).logits(X), model.logits(X))
    assert json.loads((out / "generation_config.json").read_text()) == gen
    text = load_tokenizer(out)
    assert text.decode(text.encode("12+3=")) == "12+3="
    assert (text.mask_token_id, text.eos_token_id) == (2, 1)


def test_save_writes_ordinary_permissions(tmp_path):
    """Under umask 022 the directory is 0o755 and every file 0o644 (not mkdtemp's 0o700,
    which would hide a saved checkpoint from the other users of a shared machine)."""
    model = random_model(config_from_dict(tiny_raw("dream")), seed=9)
    old = os.umask(0o022)
    try:
        out = save(model, tmp_path / "m", max_shard_bytes=5000, tokenizer=_char_tokenizer(),
                   generation_config={"steps": 4})
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755
    files = list(out.iterdir())
    assert len(files) > 4 and all((f.stat().st_mode & 0o777) == 0o644 for f in files)


class _FailingTokenizer:
    """Looks like a tokenizers.Tokenizer; fails when written, after the weights are."""

    def to_str(self):
        return "{}"

    def save(self, path):
        raise OSError(28, "No space left on device", path)


def test_a_failing_save_leaves_nothing_behind_and_the_old_directory_intact(tmp_path):
    model = random_model(config_from_dict(tiny_raw("llada")), seed=10)
    with pytest.raises(OSError, match="No space left"):
        save(model, tmp_path / "new", tokenizer=_FailingTokenizer())
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("user data")
    with pytest.raises(OSError, match="No space left"):
        save(model, tmp_path / "old", tokenizer=_FailingTokenizer(), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(generation_config={"steps": float("nan")}), "generation_config"),
    (dict(generation_config=[("steps", 4)]), "generation_config"),
    (dict(tokenizer=42), "tokenizer"),
    (dict(tokenizer="no/such/tokenizer.json"), "tokenizer.json")])
def test_save_checks_its_extras_before_writing_anything(kwargs, match, tmp_path):
    model = random_model(config_from_dict(tiny_raw("llada")), seed=11)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        save(model, tmp_path / "m", **kwargs)
    assert list(tmp_path.iterdir()) == []


# --- bad input found before any tensor data is read ----------------------------------------


def test_index_naming_a_key_the_config_does_not_imply_is_an_error_naming_it(tmp_path):
    """A third block in the index of a 2-block config: the index file and the key are named,
    before any shard is opened (here the shard it names does not even exist)."""
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), public_tensors("llada"), shards=2)
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    extra = "model.transformer.blocks.2.q_proj.weight"
    index["weight_map"][extra] = "model-00003-of-00003.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"index\.json lists key "
                                         r"'model\.transformer\.blocks\.2\.q_proj\.weight'"):
        load(ck)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool])
def test_tensor_of_a_non_float_dtype_is_an_error_naming_the_key_and_dtype(dtype, tmp_path):
    t = public_tensors("dream")
    t["model.norm.weight"] = torch.ones(32, dtype=dtype)
    with pytest.raises(ValueError, match=r"key 'model\.norm\.weight' in model\.safetensors has "
                                         r"dtype (I32|I8|BOOL)"):
        load(write_public(tmp_path / "ck", tiny_raw("dream"), t))


class _ReadLog:
    """Stands in for ``safe_open``: records every tensor read and, at each read, the bytes of
    earlier reads that are still alive (held through weak references only)."""

    def __init__(self, real_open):
        self.real_open, self.reads, self.alive_at_read = real_open, [], []

    def __call__(self, *args, **kwargs):
        log = self

        class Handle:
            def __init__(self, inner):
                self.inner = inner

            def __enter__(self):
                self.f = self.inner.__enter__()
                return self

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_slice(self, name):
                return self.f.get_slice(name)

            def get_tensor(self, name):
                alive = [r() for r, _ in log.reads]
                log.alive_at_read.append(sum(t.numel() * t.element_size()
                                             for t in alive if t is not None))
                t = self.f.get_tensor(name)
                log.reads.append((weakref.ref(t), name))
                return t

        return Handle(self.real_open(*args, **kwargs))


@pytest.mark.parametrize("stored,wanted", [(torch.bfloat16, torch.float32),
                                           (torch.float32, torch.bfloat16)])
def test_load_reads_each_tensor_once_and_never_holds_two_stored_copies(stored, wanted, tmp_path,
                                                                      monkeypatch):
    """Peak memory is one model in the requested dtype: each tensor is read exactly once,
    and when the next one is read no earlier stored-dtype tensor is still alive (a loader
    that reads everything, then converts, holds all of them). Counted in tensors and bytes,
    not RSS, so the verdict does not depend on the machine."""
    import fairref.models.safetensors_io as st_io

    tensors = public_tensors("llada", dtype=stored)
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), tensors, shards=3)
    log = _ReadLog(st_io.safe_open)
    monkeypatch.setattr(st_io, "safe_open", log)
    model = load(ck, dtype=wanted)
    assert sorted(name for _, name in log.reads) == sorted(tensors)  # once each
    assert max(log.alive_at_read) == 0
    assert all(p.dtype == wanted and not p.is_meta for p in model.parameters())
    for name, t in model.state_dict().items():
        assert torch.equal(t, tensors[name].to(wanted))


def test_misshapen_tensor_is_reported_before_any_tensor_data_is_read(tmp_path, monkeypatch):
    import fairref.models.safetensors_io as st_io

    t = public_tensors("llada")
    t["model.transformer.ln_f.weight"] = torch.ones(31, dtype=torch.bfloat16)
    ck = write_public(tmp_path / "ck", tiny_raw("llada"), t, shards=2)
    log = _ReadLog(st_io.safe_open)
    monkeypatch.setattr(st_io, "safe_open", log)
    with pytest.raises(ValueError,
                       match=r"shape mismatch for key 'model\.transformer\.ln_f\.weight'"):
        load(ck)
    assert log.reads == []


# --- disk space --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_shard_bytes", [None, 4000])
def test_save_refuses_before_writing_when_free_disk_is_below_what_it_writes(max_shard_bytes,
                                                                           tmp_path, monkeypatch):
    """Free space one byte short of what save actually writes (measured by a first save)
    is refused with a clear error, and nothing, not even a temporary, is left behind."""
    import shutil

    model = random_model(config_from_dict(tiny_raw("dream")), seed=11)
    tok = _char_tokenizer()
    kw = dict(max_shard_bytes=max_shard_bytes, tokenizer=tok, generation_config={"steps": 4})
    first = save(model, tmp_path / "first", **kw)
    written = sum(f.stat().st_size for f in first.iterdir())
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=written - 1))
    with pytest.raises(ValueError, match=r"not enough free disk space to save to .*out.*GiB"):
        save(model, tmp_path / "sub" / "out", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]
