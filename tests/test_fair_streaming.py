"""Layer-streaming calibration (fairref/models/blocks.py through fairref/fair/calibrate.py).

The defining property: streaming is a different *block source*, not a different
calibrator, so calibrating block by block from the float shards to disk gives exactly
what calibrating in memory and calling ``save_quantized`` gives — the same files, byte for
byte, as ``save_quantized(shard_per_block=True)``, the same tensors as the single-file
layout, and, after ``load``, the same logits bit for bit. Also: only one block is
resident at a time, an interrupted streamed run resumes to the same bytes, a full disk is
refused before anything is written, and no dense K × K rotation is formed at K = 12288.
"""

import hashlib

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from fairref.diffusion import SamplerSettings
from fairref.fair import CalibConfig, FlatConfig, quantize_model
from fairref.fair.pipeline import calibrate, prepare
from fairref.models import LLaDAConfig, load, random_model, read_weights
from fairref.models.blocks import StreamingBlocks
from fairref.models.quantized import save_quantized
from fairref.quant.rotation import RotationSpec
from fairref.quant.transform import KroneckerTransform, kronecker_sizes
from tiny import write_tiny_instruct

SETTINGS = SamplerSettings(steps=4, gen_length=8)
FLAT = FlatConfig(epochs=1, batch=2)


@pytest.fixture(scope="module", params=["llada", "dream"])
def setup(request, tmp_path_factory):
    """A tiny real-layout directory (3 bfloat16 shards + index) and Stage I on it."""
    src = write_tiny_instruct(tmp_path_factory.mktemp(request.param) / "fp", request.param)
    teacher = load(src)
    prompts = torch.randint(0, 100, (4, 6), generator=torch.Generator().manual_seed(2))
    return src, teacher, prepare(teacher, prompts, SETTINGS, states_per_rollout=2)


def _files(d):
    """{file name: SHA-256} of a directory."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}


def _streamed(src, out, method, data, **kw):
    source = StreamingBlocks(src, out, **kw)
    result = calibrate(source, method, data, flat=FLAT)
    source.save(method=result.description(), source=src)
    return result


@pytest.mark.parametrize("method", ["fair", "fair-gptq", "rtn"])
def test_streaming_writes_the_bytes_of_in_memory_calibration(setup, tmp_path, method):
    """Streamed == in memory + save_quantized: file for file with one shard per block,
    tensor for tensor with the single-file layout, and bit-identical logits on reload."""
    src, teacher, data = setup
    ref = calibrate(teacher, method, data, flat=FLAT)
    save_quantized(ref.model, tmp_path / "mem", method=ref.description(), source=src,
                   shard_per_block=True)
    save_quantized(ref.model, tmp_path / "one", method=ref.description(), source=src)
    _streamed(src, tmp_path / "stream", method, data)
    assert _files(tmp_path / "stream") == _files(tmp_path / "mem")
    assert len(list((tmp_path / "stream").glob("model-*.safetensors"))) == len(teacher.blocks) + 1
    one, streamed = load_file(str(tmp_path / "one" / "model.safetensors")), read_weights(
        tmp_path / "stream")
    assert one.keys() == streamed.keys()
    assert all(one[k].dtype == streamed[k].dtype and torch.equal(one[k], streamed[k]) for k in one)
    x = data.masked.ids[:3]
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "stream").logits(x), ref.model.logits(x))
    assert not (tmp_path / "stream.partial").exists()  # the work directory is gone


def test_only_one_block_is_resident_while_streaming(setup, tmp_path):
    """At the end of every block exactly one block holds real (non-meta) tensors, and the
    head and embedding stay resident."""
    src, _, data = setup
    source = StreamingBlocks(src, tmp_path / "q")
    resident = []

    def count(l, model):
        resident.append(sum(any(t.device.type != "meta" for t in b.state_dict().values())
                            for b in model.blocks))
    calibrate(source, "fair-gptq", data, on_block=count)
    assert resident == [1] * len(source)
    assert all(any(t.device.type != "meta" for t in b.state_dict().values()) is False
               for b in source.model.blocks)  # the last one was dropped too
    assert all(t.device.type != "meta" for k, t in source.model.state_dict().items()
               if not k.startswith(source.prefix + "."))


def test_an_interrupted_streamed_run_resumes_to_the_same_bytes(setup, tmp_path):
    src, _, data = setup
    _streamed(src, tmp_path / "whole", "fair", data, run_key="k")

    class Stop(Exception):
        pass

    def stop_at_last(l, model):
        if l == len(model.blocks) - 1:
            raise Stop  # before block N−1 is written: blocks 0..N−2 are on disk

    source = StreamingBlocks(src, tmp_path / "cut", run_key="k")
    with pytest.raises(Stop):
        calibrate(source, "fair", data, flat=FLAT, on_block=stop_at_last)
    assert (tmp_path / "cut.partial" / "progress.json").is_file()
    assert not (tmp_path / "cut").exists()
    with pytest.raises(ValueError, match="another run"):
        StreamingBlocks(src, tmp_path / "cut", resume=True, run_key="other")
    with pytest.raises(FileExistsError, match="interrupted streamed run"):
        StreamingBlocks(src, tmp_path / "cut", run_key="k")
    resumed = StreamingBlocks(src, tmp_path / "cut", resume=True, run_key="k")
    assert resumed.n_done == len(resumed) - 1
    result = calibrate(resumed, "fair", data, flat=FLAT)
    resumed.save(method=result.description(), source=src)
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


def _short_disk(monkeypatch, free):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))


def test_too_little_disk_is_refused_before_anything_is_written(setup, tmp_path, monkeypatch):
    """save_quantized and the streaming writer check free space first: one clear
    ValueError, and neither the output nor a work directory appears."""
    src, teacher, _ = setup
    q = calibrate(teacher, "rtn").model
    _short_disk(monkeypatch, 1000)
    with pytest.raises(ValueError, match="not enough free disk space"):
        save_quantized(q, tmp_path / "q")
    with pytest.raises(ValueError, match="not enough free disk space"):
        StreamingBlocks(src, tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class _Largest(TorchDispatchMode):
    """Records the largest tensor any torch op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_no_dense_K_by_K_rotation_is_formed_at_K_12288():
    """LLaDA-8B's MLP width: the Hadamard rotation and the flat solver's Kronecker
    transform (96 × 128 factors) act on x and W without any K × K intermediate, in the
    transforms themselves and in a whole flat calibration of a block with that width."""
    K = 12288
    assert kronecker_sizes(K) == (96, 128)
    x = torch.randn(4, K, generator=torch.Generator().manual_seed(0))  # (T, K)
    W = torch.randn(8, K, generator=torch.Generator().manual_seed(1))  # (N, K)
    P_l, P_r = torch.eye(96), torch.eye(128)
    for T in (RotationSpec("hadamard", K), KroneckerTransform(P_l, P_r, P_l, P_r, None)):
        with _Largest() as seen:
            T.apply(x), T.apply_weight(W)
        assert seen.numel < K * K // 64
    cfg = LLaDAConfig(d_model=64, n_heads=4, n_kv_heads=4, n_layers=1, mlp_hidden_size=K,
                      vocab_size=32, embedding_size=32, mask_token_id=31, eos_token_id=30,
                      pad_token_id=30, max_sequence_length=16)
    model = random_model(cfg, seed=0)
    states = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(2))
    with _Largest() as seen:
        quantize_model(model, states, config=CalibConfig(solver="flat",
                                                         flat=FlatConfig(epochs=1, batch=2)))
    assert seen.numel < K * K // 64  # the largest is a (64, 12288) weight


def test_cli_calibrate_stream_writes_what_the_in_memory_run_writes_and_resumes(
        tmp_path, monkeypatch, capsys):
    """`fairref calibrate --stream`: the same config.json and tensors as without it; killed
    in block 2 of 3, `--stream --resume` recalibrates from the written blocks to the same
    files as an uninterrupted streamed run."""
    import fairref.fair.pipeline as pipeline_module
    from test_cli_pipeline import _calibrate, _checkpoint, _jsonl

    ckpt = _checkpoint(tmp_path / "m"), _jsonl(tmp_path / "p.jsonl")
    mem, a, c = tmp_path / "mem", tmp_path / "a", tmp_path / "c"
    assert _calibrate(ckpt, mem, "--method", "fair-gptq") == 0
    assert _calibrate(ckpt, a, "--method", "fair-gptq", "--stream") == 0
    assert (a / "config.json").read_bytes() == (mem / "config.json").read_bytes()
    one, streamed = load_file(str(mem / "model.safetensors")), read_weights(a)
    assert one.keys() == streamed.keys() and all(torch.equal(one[k], streamed[k]) for k in one)

    original = pipeline_module.quantize_model

    def killed_in_block_2(*args, on_block=None, **kw):
        def hook(l, model):
            on_block(l, model)
            if l == 1:
                raise KeyboardInterrupt  # block 2 final but not yet written
        return original(*args, on_block=hook, **kw)

    monkeypatch.setattr(pipeline_module, "quantize_model", killed_in_block_2)
    assert _calibrate(ckpt, c, "--method", "fair-gptq", "--stream") == 130
    assert not c.exists() and (tmp_path / "c.partial" / "progress.json").is_file()
    monkeypatch.setattr(pipeline_module, "quantize_model", original)
    capsys.readouterr()
    assert _calibrate(ckpt, c, "--method", "fair-gptq", "--stream", "--resume") == 0
    assert "resumed after block 1" in capsys.readouterr().out
    assert _files(c) == _files(a)
    assert not (tmp_path / "c.partial").exists()
