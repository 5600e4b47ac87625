"""``--device cuda`` (issue #12 part 4): probe, calibrate and eval on a GPU, and the one-line
error where there is none.

On a machine with CUDA the smoke tests run the three CLI commands on a shipped toy model
with everything on the GPU (models, prompt ids, masks, generators, the prior's weights),
and the real-model reproduction script on a tiny instruct directory; each checks that the
outputs exist and hold what the CPU run's outputs hold (the same keys, rates in [0, 1]).
Bit-equality with the CPU is not expected (other kernels). Without CUDA those tests are
skipped and the remaining ones check that asking for it is one ``error:`` line, exit 2,
before any work.

On any machine, :func:`test_gpu_paths_create_no_tensor_on_the_default_device` audits the
code that runs on the model's device: Stage I, every solver of Stage II and the
evaluation run on the CPU while a tensor factory called without ``device=`` (outside the
files whose tensors live on the CPU by design) makes a ``meta`` tensor instead, so the
first op that mixes it with real data fails. On a GPU such a tensor would sit on the CPU
beside CUDA inputs: the same failure.
"""

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fairref.cli import main
from fairref.toy import checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
TOY = ["--model", str(checkpoint_dir("llada")), "--n-per-task", "1"]


def _rates_in_unit_interval(results: dict) -> None:
    for name, m in results["models"].items():
        acc = m["accuracy"]["accuracy"]["value"]
        assert acc is None or 0 <= acc <= 1, name
        if name != "FP":
            for key in ("frontier_token_flip", "masked_kl"):
                assert m["teacher_forced"][key]["value"] >= 0, (name, key)
            assert 0 <= m["mismatch"]["post_commit_mismatch"]["value"] <= 1, name


@needs_cuda
@pytest.mark.slow
def test_probe_calibrate_eval_run_on_cuda(tmp_path):
    prior, out = tmp_path / "prior.json", tmp_path / "results.json"
    assert main(["probe", *TOY, "--out", str(prior), "--device", "cuda"]) == 0
    assert json.loads(prior.read_text())["gen_length"] > 0
    assert main(["calibrate", *TOY, "--method", "rtn", "--out", str(tmp_path / "rtn"),
                 "--device", "cuda"]) == 0
    assert main(["eval", *TOY, "--quantized", str(tmp_path / "rtn"), "--out", str(out),
                 "--device", "cuda", "--lag-problems", "1"]) == 0
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"FP", "rtn"}
    _rates_in_unit_interval(results)


@needs_cuda
@pytest.mark.slow
def test_calibrate_on_data_through_the_cli_on_cuda(tmp_path):
    """Every method but rtn calibrates on Stage I states (teacher states or plain inputs),
    which live on the CPU like the traces they come from; ``fairref calibrate`` hands them
    to the block loop as they are, so this needs ``pipeline.calibrate`` to move them to the
    teacher's device (``states.to(device)``; the prior's weights follow them). The
    reproduction script makes that move itself (``run_cache.load_calib_data(..., device)``)."""
    prior, out = tmp_path / "prior.json", tmp_path / "results.json"
    assert main(["probe", *TOY, "--out", str(prior), "--device", "cuda"]) == 0
    assert main(["calibrate", *TOY, "--method", "fair", "--prior", str(prior), "--epochs", "1",
                 "--out", str(tmp_path / "fair"), "--device", "cuda"]) == 0
    assert main(["calibrate", *TOY, "--method", "quarot", "--out", str(tmp_path / "quarot"),
                 "--device", "cuda"]) == 0
    assert main(["eval", *TOY, "--quantized", str(tmp_path / "fair"), "--quantized",
                 str(tmp_path / "quarot"), "--out", str(out), "--device", "cuda"]) == 0
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"FP", "fair", "quarot"}
    _rates_in_unit_interval(results)


@needs_cuda
@pytest.mark.slow
def test_reproduction_script_runs_on_cuda(tmp_path):
    from tiny import write_tiny_instruct

    spec = importlib.util.spec_from_file_location(
        "llada_dream_w4a4_cuda", ROOT / "paper_repro" / "llada_dream_w4a4.py")
    repro = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = repro
    spec.loader.exec_module(repro)
    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"{i} plus {i}?", "answer": f"#### {2 * i}"})
                              for i in range(6)) + "\n")
    for arch in ("llada", "dream"):
        model = write_tiny_instruct(tmp_path / arch, arch)
        extra = ["--block-length", "4"] if arch == "llada" else []
        assert repro.main(["--model", str(model), "--data", str(data), "--out",
                           str(tmp_path / f"out_{arch}"), "--device", "cuda", "--n-calib", "2",
                           "--n-eval", "3", "--epochs", "1", "--states", "2", "--gen-length",
                           "8", "--steps", "4", "--methods", "rtn", "quarot", "fair",
                           *extra]) == 0
        results = json.loads((tmp_path / f"out_{arch}" / "results.json").read_text())
        assert list(results["models"]) == ["FP", "rtn", "quarot", "fair"]


@needs_cuda
@pytest.mark.slow
def test_main_table_script_runs_its_pieces_on_cuda(tmp_path):
    """As a user runs it (its spawned workers re-import the script as __main__)."""
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "paper_repro" / "fair_vs_baselines.py"),
                           "--device", "cuda", "--quick", "--n-eval", "4", "--regimes",
                           "llada_semi_ar", "--workers", "2", "--tag", "cuda", "--out",
                           str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "fair_vs_baselines_cuda.json").read_text())
    assert r["missing"] == [] and r["regimes"]["llada_semi_ar"]["devices"]["w4a4"] == ["cuda"]
    assert "Computed on cuda." in (tmp_path / "fair_vs_baselines_cuda.md").read_text()


@no_cuda
@pytest.mark.parametrize("command", ["probe", "calibrate", "eval"])
def test_device_cuda_without_cuda_is_one_error_line(tmp_path, capsys, command):
    out = tmp_path / ("q" if command == "calibrate" else "out.json")
    extra = ["--method", "rtn"] if command == "calibrate" else []
    assert main([command, *TOY, *extra, "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda"), err
    assert "CUDA is not available" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("name", ["tpu", "cuda:x"])
def test_device_that_is_not_cpu_or_cuda_is_one_error_line(tmp_path, capsys, name):
    assert main(["probe", *TOY, "--out", str(tmp_path / "p.json"), "--device", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device"), err


#: factories that take a device; called without one they allocate on the default device
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.eye,
             torch.tensor, torch.rand, torch.randn, torch.randint, torch.linspace}
#: where tensors live on the CPU by design (traces, priors, statistics, file I/O; the
#: solver's batch order from a seeded CPU generator), or are built there and moved in one
#: step; every other factory call on the GPU path must say where its tensor goes
CPU_BY_DESIGN = ("diffusion/trace.py", "diffusion/sampler.py", "fair/probe.py",
                 "fair/states.py", "fair/prior.py", "eval/metrics.py", "eval/stats.py",
                 "eval/compare.py", "eval/stability.py", "eval/teacher_forced.py",
                 "quant/rotation.py", "quant/transform.py", "quant/int4.py",
                 "models/checkpoint.py", "models/quantized.py",
                 "diffusion/dream_sampler.py")  # its (B,) k_t rows go straight to the trace


class _DefaultDeviceIsMeta(TorchFunctionMode):
    """Factory calls from fairref without ``device=`` (outside CPU_BY_DESIGN) make meta
    tensors; 0-dim ones are left alone (a 0-dim CPU tensor mixes with any device)."""

    def __init__(self):
        super().__init__()
        self.sites: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and not _zero_dim(func, args):
            frame = inspect.currentframe().f_back
            file = frame.f_code.co_filename.replace("\\", "/")
            if "/fairref/" in file:
                where = file.split("/fairref/")[-1]
                if not where.startswith(CPU_BY_DESIGN):
                    self.sites.add(f"{where}:{frame.f_lineno}")
                    kwargs = dict(kwargs, device="meta")
        return func(*args, **kwargs)


def _zero_dim(func, args) -> bool:
    if func is torch.tensor:
        return bool(args) and isinstance(args[0], (int, float, bool))
    return bool(args) and args[0] in ((), [])


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_gpu_paths_create_no_tensor_on_the_default_device(tmp_path, arch):
    from fairref.diffusion import SamplerSettings
    from fairref.eval.run import evaluate
    from fairref.fair import FlatConfig
    from fairref.fair.pipeline import calibrate, prepare
    from fairref.models import load
    from tiny import write_tiny_instruct

    model = load(write_tiny_instruct(tmp_path / arch, arch))
    ids = torch.randint(0, 100, (3, 5))  # (B, P)
    settings = (SamplerSettings(steps=4, gen_length=4) if arch == "llada" else
                SamplerSettings(steps=4, gen_length=4, alg="entropy", temperature=0.1,
                                top_p=0.9))  # a random sampler: generators are exercised
    with _DefaultDeviceIsMeta():
        data = prepare(model, ids, settings, states_per_rollout=2)
        students = {m: calibrate(model, m, data, flat=FlatConfig(epochs=1)).model
                    for m in ("rtn", "quarot", "masked-uniform", "fair", "fair-gptq")}
        result = evaluate(model, students, ids, settings, lag_problems=1)
    assert set(result.models) == {"FP", *students}
