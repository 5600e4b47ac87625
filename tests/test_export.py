"""The compressed-tensors pack-quantized export (fairref/export.py; SPEC §1 "Packed storage", §7).

The oracle is the compressed-tensors library itself (the ``crosscheck`` extra, 0.20.1): its
``QuantizationConfig`` parses the exported config, its ``PackedQuantizationCompressor``
(looked up through the format the config declares, as its model loader does), its
model-free ``CompressedTensorsDequantizer`` and its model-loading path turn the exported
tensors back into weights, which must be *exactly* the dequantized weights Ŵ our
QuantLinears compute with; the model it loads must compute exactly our logits, and its
dynamic activation quantizer must equal ours bit for bit where the export claims it does.
What the format cannot express must be refused before anything is written.

Models: tiny random LLaDA and Dream (d = 32, 2 blocks; Dream has q/k/v biases and GQA).
Legend: B batch, L sequence, K input features, N output features.
"""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from fairref.cli import main
from fairref.diffusion import SamplerSettings
from fairref.export import export_compressed_tensors
from fairref.fair import FlatConfig, Method
from fairref.fair.pipeline import calibrate, prepare
from fairref.models import build, load, random_model
from fairref.models.quantized import quantized_linears
from fairref.quant.grid import QuantSpec, fake_quantize
from fairref.quant.linear import QuantLinear
from fairref.quant.rotation import RotationSpec
from test_cli_pipeline import FAST, _checkpoint, _jsonl, _one_error_line
from tiny import tiny_config

ct_q = pytest.importorskip("compressed_tensors.quantization")
ct_comp = pytest.importorskip("compressed_tensors.compressors")
ct_forward = pytest.importorskip("compressed_tensors.quantization.lifecycle.forward")
ct_helpers = pytest.importorskip("compressed_tensors.quantization.utils.helpers")
ct_deq = pytest.importorskip("compressed_tensors.entrypoints.convert.converters.ct_dequantizer")

pytestmark = pytest.mark.crosscheck

V, MASK, EOS, PAD = 24, 23, 22, 21
#: rtn without a rotation: the data-free method a compressed-tensors export can carry
RTN_PLAIN = Method("rtn-plain", "rtn", "none", rotation=None)


def _teacher(arch: str):
    return random_model(tiny_config(arch, V, MASK, EOS, PAD), seed=11).eval()


@pytest.fixture(scope="module")
def data():
    """Stage I on 4 prompts of each tiny teacher (the gptq method's plain inputs)."""
    ids = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(2))  # (B, P)
    return {arch: prepare(_teacher(arch), ids, SamplerSettings(steps=4, gen_length=8),
                          states_per_rollout=2) for arch in ("llada", "dream")}


def _quantized(arch, method, w_bits, a_bits, data):
    return calibrate(_teacher(arch), method, data[arch] if method != RTN_PLAIN else None,
                     w_bits=w_bits, a_bits=a_bits).model


def _decompress(path) -> dict[str, torch.Tensor]:
    """Every linear's weight as compressed-tensors decompresses it: the config parsed by the
    library, each scheme's declared format looked up in its compressor registry (as its
    model loader's ``decompress_module`` does), ``decompress`` on that module's tensors."""
    raw = json.loads((path / "config.json").read_text())["quantization_config"]
    qc = ct_q.QuantizationConfig.model_validate(raw)
    tensors = load_file(str(path / "model.safetensors"))
    out = {}
    for scheme in qc.config_groups.values():
        compressor = ct_comp.BaseCompressor.get_value_from_registry(scheme.format)
        names = compressor.compression_param_names(scheme)
        modules = {k.rpartition(".")[0] for k in tensors if k.endswith("." + names[0])}
        for m in sorted(modules):
            if "Linear" not in scheme.targets and m not in scheme.targets:
                continue
            state = {n: tensors[f"{m}.{n}"] for n in names}
            out[m] = compressor.decompress(state, scheme)["weight"]
    return out


# --- (1) the library decompresses to exactly our Ŵ ------------------------------------------


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("method", [RTN_PLAIN, "gptq"], ids=["rtn", "gptq"])
@pytest.mark.parametrize("w_bits, a_bits", [(4, 16), (4, 4), (8, 8), (3, 16)])
def test_the_library_decompresses_exactly_our_dequantized_weights(arch, method, w_bits, a_bits,
                                                                  data, tmp_path):
    """compressed-tensors' own decompressor gives Ŵ bit for bit, for every quantized linear,
    and every other tensor is the model's own under its own name."""
    model = _quantized(arch, method, w_bits, a_bits, data)
    path = export_compressed_tensors(model, tmp_path / "ct")
    got = _decompress(path)
    qls = quantized_linears(model)
    assert set(got) == set(qls)
    for name, ql in qls.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], ql.W_hat), name
    tensors = load_file(str(path / "model.safetensors"))
    for k, v in model.state_dict().items():
        if not k.startswith(tuple(f"{n}." for n in qls)):
            assert torch.equal(tensors[k], v), k
    for name, ql in qls.items():
        if ql.bias is not None:
            assert torch.equal(tensors[f"{name}.bias"], ql.bias)


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("a_bits", [16, 4])
def test_the_library_loads_the_export_and_computes_our_logits(arch, a_bits, data, tmp_path):
    """The library's model-loading path (the one its Hugging Face integration runs:
    ``apply_quantization_config`` on the float architecture, ``compress_model``, the
    checkpoint's tensors loaded, ``decompress_model``) puts exactly Ŵ into every linear, and
    its quantized forward (dynamic per-token input quantization at W4A4) gives exactly our
    logits. At W4A4 the model's activation spec is SPEC §1's "full" scale, the one the
    format states exactly (calibration's default "restricted" scale is only noted)."""
    model = _quantized(arch, RTN_PLAIN, 4, a_bits, data)
    for ql in quantized_linears(model).values():
        if ql.a_spec is not None:
            ql.a_spec = dataclasses.replace(ql.a_spec, scale_mode="full")
    path = export_compressed_tensors(model, tmp_path / "ct")
    qc = ct_q.QuantizationConfig.model_validate(
        json.loads((path / "config.json").read_text())["quantization_config"])
    theirs = build(model.config)  # the float architecture, as a loader builds it
    ct_q.apply_quantization_config(theirs, qc)
    compressor = ct_comp.ModelCompressor(quantization_config=qc)
    compressor.compress_model(theirs)
    missing, unexpected = theirs.load_state_dict(load_file(str(path / "model.safetensors")),
                                                 strict=False)
    assert missing == [] and unexpected == []
    compressor.decompress_model(theirs)
    for name, ql in quantized_linears(model).items():
        assert torch.equal(theirs.get_submodule(name).weight.data, ql.W_hat), name
    ids = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(0))  # (B, L)
    with torch.no_grad():
        assert torch.equal(theirs.logits(ids), model.logits(ids))


@pytest.mark.parametrize("w_bits", [4, 8])
def test_the_model_free_dequantizer_reads_a_weight_only_export(w_bits, data, tmp_path):
    """compressed-tensors' CompressedTensorsDequantizer (its checkpoint converter: config
    and safetensors in, float tensors out) turns the directory into a float checkpoint whose
    linears are exactly Ŵ and whose other tensors are ours, under the float names."""
    model = _quantized("llada", "gptq", w_bits, 16, data)
    path = export_compressed_tensors(model, tmp_path / "ct")
    deq = ct_deq.CompressedTensorsDequantizer(str(path), dtype=torch.float32)
    out = deq.process(load_file(str(path / "model.safetensors")))
    state = model.state_dict()
    qls = quantized_linears(model)
    float_names = {k for k in state if not k.startswith(tuple(f"{n}." for n in qls))}
    assert set(out) == float_names | {f"{n}.weight" for n in qls}
    for name, ql in qls.items():
        assert torch.equal(out[f"{name}.weight"], ql.W_hat), name


@pytest.mark.parametrize("spec", [
    QuantSpec(bits=4, granularity="group", group_size=8),
    QuantSpec(bits=4, symmetric=False),
    QuantSpec(bits=3, symmetric=False, granularity="group", group_size=4),
    QuantSpec(bits=8, granularity="tensor"),
    QuantSpec(bits=2, scale_mode="full", clip=0.9),
], ids=["group", "asym", "asym-group-3bit", "tensor", "2bit-clip"])
@pytest.mark.parametrize("K", [24, 40])
def test_every_weight_grid_decompresses_exactly(spec, K, tmp_path):
    """Per group, per tensor and asymmetric weights (zero points packed along N), at widths
    whose rows do not fill whole int32 words (K·b not a multiple of 32)."""
    torch.manual_seed(K)
    lin = torch.nn.Linear(K, 12, bias=True)
    lin.weight.data[3] = 0.0  # an all-zero row: s = 1, q = 0
    ql = QuantLinear.from_linear(lin, spec, None)
    model = torch.nn.Sequential()
    model.add_module("proj", ql)
    model.config = SimpleNamespace(model_type="toy")
    got = _decompress(export_compressed_tensors(model, tmp_path / "ct"))
    assert torch.equal(got["proj"], ql.W_hat)


def test_linears_of_different_schemes_get_a_group_each(tmp_path):
    """Two weight grids in one model: one config group per scheme, each naming its modules
    (``targets`` cannot be the class ``Linear`` then), and both decompress exactly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("a", QuantLinear.from_linear(torch.nn.Linear(16, 8), QuantSpec(bits=4),
                                                  None))
    model.add_module("b", QuantLinear.from_linear(torch.nn.Linear(8, 8), QuantSpec(bits=8),
                                                  None))
    model.config = SimpleNamespace(model_type="toy")
    path = export_compressed_tensors(model, tmp_path / "ct")
    qc = ct_q.QuantizationConfig.model_validate(
        json.loads((path / "config.json").read_text())["quantization_config"])
    assert sorted((g.targets, g.weights.num_bits) for g in qc.config_groups.values()) == \
        [(["a"], 4), (["b"], 8)]
    got = _decompress(path)
    assert torch.equal(got["a"], model.a.W_hat) and torch.equal(got["b"], model.b.W_hat)


# --- (2) the config is a compressed-tensors QuantizationConfig ------------------------------


def test_the_config_parses_with_the_scheme_of_the_quantized_model(data, tmp_path):
    model = _quantized("dream", "gptq", 4, 4, data)
    path = export_compressed_tensors(model, tmp_path / "ct", method={"name": "gptq"})
    config = json.loads((path / "config.json").read_text())
    qc = ct_q.QuantizationConfig.model_validate(config["quantization_config"])
    assert qc.format == "pack-quantized" and qc.quant_method == "compressed-tensors"
    (scheme,) = qc.config_groups.values()
    assert scheme.format == "pack-quantized" and scheme.targets == ["Linear"]
    w, a = scheme.weights, scheme.input_activations
    assert (w.num_bits, w.type, w.symmetric, w.strategy, w.dynamic) == (4, "int", True,
                                                                       "channel", False)
    assert (a.num_bits, a.symmetric, a.strategy, a.dynamic) == (4, True, "token", True)
    float_linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(qc.ignore) == float_linears == {"lm_head"}
    # the config is otherwise the model's own, and the difference in activation rounding
    # (calibration uses SPEC §1's "restricted" scale) is stated
    assert {k: v for k, v in config.items()
            if k not in ("quantization_config", "fairref_export")} == model.config.to_dict()
    assert any("amax / 7 " in n and "amax / 7.5" in n for n in config["fairref_export"]["notes"])
    assert config["fairref_export"]["method"] == {"name": "gptq"}


# --- activations: where the export claims exactness, the library's quantizer is ours ---------


def _ct_dynamic(x, bits, strategy="token"):
    args = ct_q.QuantizationArgs(num_bits=bits, symmetric=True, strategy=strategy, dynamic=True)
    s, z = ct_helpers.compute_dynamic_scales_and_zp(x, args, module=None)
    return ct_forward.fake_quantize(x, s, z, args)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_dynamic_activation_quantizer_is_ours_in_full_mode(bits):
    """compressed-tensors' dynamic per-token quantizer of a (B, L, K) input equals SPEC §1's
    "full" scale at clip 1 bit for bit, including ties at .5, a zero token and an outlier."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 5, 16, generator=g) * 3  # (B, L, K)
    x[0, 0] = (torch.arange(16) - 7.5) / 2  # exact ties of x / s
    x[0, 1] = 0.0
    x[1, 2, 3] = 1e4
    ours = fake_quantize(x, QuantSpec(bits=bits, granularity="token", scale_mode="full"))
    assert torch.equal(_ct_dynamic(x, bits), ours)


def test_the_restricted_activation_scale_is_not_the_library_one():
    """Why the export notes a difference: x = (7, 1) has amax / 7 = 1 (exact values) but the
    library's s = 7 / 7.5 moves both."""
    x = torch.tensor([[[7.0, 1.0]]])  # (B, L, K)
    ours = fake_quantize(x, QuantSpec(bits=4, granularity="token"))
    assert torch.equal(ours, x)
    assert not torch.equal(_ct_dynamic(x, 4), ours)


def test_an_exact_activation_spec_is_exported_without_a_note(tmp_path):
    lin = torch.nn.Linear(16, 8)
    model = torch.nn.Sequential()
    model.add_module("proj", QuantLinear.from_linear(
        lin, QuantSpec(bits=4), QuantSpec(bits=4, granularity="token", scale_mode="full")))
    model.config = SimpleNamespace(model_type="toy")
    config = json.loads((export_compressed_tensors(model, tmp_path / "ct") / "config.json")
                        .read_text())
    assert "bit for bit" in config["fairref_export"]["notes"][0]


# --- (3) what the format cannot express is refused, naming the module and the reason --------


class _Scale:
    """A transform of another kind (x ↦ 2x, W ↦ W/2): refused for its kind, whatever it is."""

    in_features = 16

    def apply(self, x):
        return 2 * x

    def apply_weight(self, W):
        return W / 2

    def to_dict(self):
        return {"type": "scale"}


def _one_linear(transform=None, a_spec=None, K=16):
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("proj", QuantLinear.from_linear(torch.nn.Linear(K, 8), QuantSpec(bits=4),
                                                     a_spec, transform=transform))
    model.config = SimpleNamespace(model_type="toy")
    return model


@pytest.mark.parametrize("model, words", [
    (lambda: _one_linear(RotationSpec("hadamard", 16)), ["proj", "Hadamard", "--method gptq"]),
    (lambda: _one_linear(RotationSpec("random", 16, seed=3)), ["proj", "random orthogonal"]),
    (lambda: _one_linear(a_spec=QuantSpec(bits=4, granularity="token", clip=0.9)),
     ["proj", "clip ratio c = 0.9"]),
    (lambda: _one_linear(a_spec=QuantSpec(bits=4, granularity="token", symmetric=False)),
     ["proj", "asymmetrically"]),
    (lambda: _one_linear(a_spec=QuantSpec(bits=4, granularity="group", group_size=4)),
     ["proj", "per group"]),
    (lambda: _one_linear(_Scale()), ["proj", "input transform"]),
], ids=["hadamard", "random", "act-clip", "act-asym", "act-group", "other-transform"])
def test_what_the_format_cannot_express_is_refused_and_nothing_written(model, words, tmp_path):
    with pytest.raises(ValueError) as e:
        export_compressed_tensors(model(), tmp_path / "ct")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert not (tmp_path / "ct").exists() and list(tmp_path.iterdir()) == []


def test_a_flat_calibrated_model_is_refused(data, tmp_path):
    """The flat solver's learned Kronecker transform (here without a rotation under it)."""
    flat = Method("flat-plain", "flat", "plain", rotation=None)
    model = calibrate(_teacher("llada"), flat, data["llada"], flat=FlatConfig(epochs=1)).model
    with pytest.raises(ValueError, match=r"learned transform .*--method gptq"):
        export_compressed_tensors(model, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()



# --- (4) the command line -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_cli")
    return _checkpoint(d / "m"), _jsonl(d / "prompts.jsonl")


def _calibrate(ckpt, out, *extra):
    model, prompts = ckpt
    return main(["calibrate", "--model", str(model), "--prompts", str(prompts), "--out",
                 str(out), *FAST, *extra])


def test_calibrate_exports_what_the_fairref_checkpoint_of_the_same_run_holds(ckpt, tmp_path,
                                                                             capsys):
    """`--format compressed-tensors` and the default SPEC §7 format, same run: the library's
    decompression of the one is exactly the Ŵ of the other, reloaded; the config is the
    source's own plus the quantization_config; tokenizer and sampler settings come along;
    the calibration's "restricted" activation scale is noted on stdout."""
    a, b = tmp_path / "ct", tmp_path / "ours"
    assert _calibrate(ckpt, a, "--method", "gptq", "--format", "compressed-tensors") == 0
    assert "note: input activations" in capsys.readouterr().out
    assert _calibrate(ckpt, b, "--method", "gptq") == 0
    ours = quantized_linears(load(b))
    got = _decompress(a)
    assert set(got) == set(ours)
    for name, ql in ours.items():
        assert torch.equal(got[name], ql.W_hat), name
    model_dir = ckpt[0]
    config = json.loads((a / "config.json").read_text())
    source = json.loads((model_dir / "config.json").read_text())
    assert {k: v for k, v in config.items()
            if k not in ("quantization_config", "fairref_export")} == source
    assert config["fairref_export"]["method"]["name"] == "gptq"
    for f in ("tokenizer.json", "generation_config.json"):
        assert (a / f).read_bytes() == (model_dir / f).read_bytes()


@pytest.mark.parametrize("method, words", [
    ("rtn", ["'rtn'", "Hadamard", "--method gptq"]),
    ("quarot", ["'quarot'", "Hadamard"]),
    ("flatquant", ["'flatquant'", "learned transform"]),
    ("fair", ["'fair'", "learned transform", "--format fairref"]),
])
def test_a_method_the_format_cannot_carry_is_refused_before_calibrating(
        method, words, ckpt, tmp_path, capsys, monkeypatch):
    """One `error:` line saying why and what to use instead, exit 2, nothing written, and no
    calibration run first (the refusal does not wait for the result)."""
    import fairref.fair.pipeline as pipeline_module

    def never(*a, **k):
        raise AssertionError("calibration ran before the refusal")

    monkeypatch.setattr(pipeline_module, "prepare", never)
    monkeypatch.setattr(pipeline_module, "calibrate", never)
    assert _calibrate(ckpt, tmp_path / "q", "--method", method,
                      "--format", "compressed-tensors") == 2
    _one_error_line(capsys, "--format compressed-tensors", *words)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_needs_force(ckpt, tmp_path, capsys):
    out = tmp_path / "ct"
    out.mkdir()
    (out / "keep").write_text("x")
    assert _calibrate(ckpt, out, "--method", "gptq", "--format", "compressed-tensors") == 2
    _one_error_line(capsys, str(out), "--force")
    assert [p.name for p in out.iterdir()] == ["keep"]
    assert _calibrate(ckpt, out, "--method", "gptq", "--format", "compressed-tensors",
                      "--force", "--a-bits", "16") == 0
    assert "note:" not in capsys.readouterr().out  # weight-only: nothing inexact to note
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                     "model.safetensors", "tokenizer.json"]


def test_a_failed_write_leaves_nothing_behind(ckpt, tmp_path, monkeypatch, capsys):
    """A disk error while writing the tensors: an `error:` line, and neither the output nor
    a temporary directory is left (only the calibrate command's saved blocks, kept after an
    OSError for --resume)."""
    import fairref.export as export_module

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "save_file", full_disk)
    assert _calibrate(ckpt, tmp_path / "ct", "--method", "gptq",
                      "--format", "compressed-tensors") == 2
    _one_error_line(capsys, "No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["ct.partial"]


def test_an_unknown_format_is_a_usage_error(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _calibrate(ckpt, tmp_path / "q", "--method", "gptq", "--format", "gguf")
    assert e.value.code == 2
    _one_error_line(capsys, "--format", "compressed-tensors")


def test_streaming_into_the_export_format_is_refused(ckpt, tmp_path, capsys, monkeypatch):
    """--stream writes blocks in fairref's own layout as it goes; the export needs the whole
    model, so the pair is refused up front with one line naming both flags."""
    import fairref.fair.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "prepare", lambda *a, **k: 1 / 0)
    assert _calibrate(ckpt, tmp_path / "q", "--method", "gptq", "--stream",
                      "--format", "compressed-tensors") == 2
    _one_error_line(capsys, "--stream", "--format compressed-tensors")
    assert list(tmp_path.iterdir()) == []
