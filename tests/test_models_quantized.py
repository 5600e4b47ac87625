"""Quantized checkpoint directories (fairref/models/quantized.py; SPEC §7).

The defining property: ``load(save_quantized(m))`` computes exactly what ``m`` computes
(every stored number is one the forward uses), for every kind of input transform —
a rotation spec, a learned Kronecker transform with ζ, none — and for asymmetric and
8-bit weights; a directory whose files disagree with its quantization_config is refused
with an error naming the tensor.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fairref.fair import CalibConfig, FlatConfig, quantize_model
from fairref.models import load, random_model
from fairref.models.quantized import save_quantized
from fairref.quant import QuantSpec
from tiny import tiny_config

V, MASK, EOS, PAD = 24, 23, 22, 21


def _model(arch):
    return random_model(tiny_config(arch, V, MASK, EOS, PAD), seed=3)


def _same_logits(a, b):
    x = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.logits(x), b.logits(x))


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("cfg", [
    CalibConfig(solver="rtn"),
    CalibConfig(solver="rtn", rotation=None, w_spec=QuantSpec(bits=8), a_spec=None),
    CalibConfig(solver="rtn", w_spec=QuantSpec(bits=4, symmetric=False)),
    CalibConfig(solver="rtn", rotation="random", rotation_seed=5,
                w_spec=QuantSpec(bits=4, granularity="group", group_size=16)),
])
def test_reloaded_rtn_checkpoints_compute_bit_identical_logits(tmp_path, arch, cfg):
    m = _model(arch)
    quantize_model(m, config=cfg)
    save_quantized(m, tmp_path / "q", method={"name": "test"})
    assert _same_logits(m, load(tmp_path / "q"))


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_reloaded_flat_checkpoint_is_bit_identical(tmp_path, arch):
    """The learned transforms (P_l, P_r, their inverse-transposes, ζ at o/down) and the
    folded norms travel through the checkpoint exactly."""
    m = _model(arch)
    states = torch.randint(0, V - 3, (4, 12), generator=torch.Generator().manual_seed(1))
    quantize_model(m, states, config=CalibConfig(solver="flat", flat=FlatConfig(epochs=1, batch=2)))
    save_quantized(m, tmp_path / "q")
    q = load(tmp_path / "q")
    assert _same_logits(m, q)
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    kinds = {d["transform"]["type"] for d in cfg["modules"].values()}
    assert kinds == {"kronecker"}


def test_an_existing_directory_is_refused_without_overwrite(tmp_path):
    m = _model("llada")
    quantize_model(m, config=CalibConfig(solver="rtn"))
    save_quantized(m, tmp_path / "q")
    with pytest.raises((ValueError, FileExistsError), match="exists"):
        save_quantized(m, tmp_path / "q")
    save_quantized(m, tmp_path / "q", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name != "q"]  # no temporaries left


def test_a_float_model_cannot_be_saved_as_quantized(tmp_path):
    with pytest.raises(ValueError, match="no QuantLinear"):
        save_quantized(_model("llada"), tmp_path / "q")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("damage, match", [
    ("drop_scale", "missing tensor .*weight_scale"),
    ("wrong_dtype", "expected torch.uint8"),
    ("extra", "unexpected tensors"),
    ("bits", "expected torch.int8"),
])
def test_files_that_disagree_with_the_quantization_config_are_refused(tmp_path, damage, match):
    m = _model("llada")
    quantize_model(m, config=CalibConfig(solver="rtn"))
    d = save_quantized(m, tmp_path / "q")
    f = d / "model.safetensors"
    t = load_file(str(f))
    name = next(k for k in t if k.endswith("q_proj.weight_packed"))
    if damage == "drop_scale":
        del t[name.replace("weight_packed", "weight_scale")]
    elif damage == "wrong_dtype":
        t[name] = t[name].to(torch.int16)
    elif damage == "extra":
        t["model.surprise"] = torch.zeros(2)
    if damage == "bits":  # the config claims 8-bit weights, the file has packed nibbles
        cfg = json.loads((d / "config.json").read_text())
        mod = next(k for k in cfg["quantization_config"]["modules"] if k.endswith("q_proj"))
        cfg["quantization_config"]["modules"][mod]["weights"]["bits"] = 8
        (d / "config.json").write_text(json.dumps(cfg))
    else:
        save_file(t, str(f))
    with pytest.raises(ValueError, match=match):
        load(d)


@pytest.mark.parametrize("damage, match", [
    ("drop_scale", "missing tensor .*weight_scale"),
    ("extra", "unexpected tensors"),
    ("bits", "expected torch.int8"),
])
def test_sharded_files_that_disagree_with_the_quantization_config_are_refused(tmp_path, damage,
                                                                               match):
    """The one-shard-per-block layout (what layer streaming writes) is read through its
    index, and checked against the quantization_config exactly like model.safetensors."""
    m = _model("llada")
    quantize_model(m, config=CalibConfig(solver="rtn"))
    d = save_quantized(m, tmp_path / "q", shard_per_block=True)
    assert _same_logits(m, load(d))  # intact, it reloads bit for bit
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = next(k for k in index["weight_map"] if k.endswith("blocks.1.q_proj.weight_packed"))
    shard = d / index["weight_map"][name]
    t = load_file(str(shard))
    if damage == "drop_scale":
        gone = name.replace("weight_packed", "weight_scale")
        del t[gone], index["weight_map"][gone]
    elif damage == "extra":
        t["model.surprise"] = torch.zeros(2)
        index["weight_map"]["model.surprise"] = shard.name
    else:  # the config claims 8-bit weights, the shard has packed nibbles
        cfg = json.loads((d / "config.json").read_text())
        cfg["quantization_config"]["modules"][name[:-len(".weight_packed")]]["weights"]["bits"] = 8
        (d / "config.json").write_text(json.dumps(cfg))
    save_file(t, str(shard))
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=match):
        load(d)
