"""``fairref calibrate``: Stage II with a named method, written as a SPEC §7 directory
(atomically, resumable between blocks) or exported to compressed-tensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairref.cli.common import (_add_run_options, _check_out, _device, _load_teacher,
                                _prompts, _settings, activation_bits, positive_int, weight_bits)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="Stage II: quantize a float model by a named method (SPEC §4, §7)",
        description=(
            "Quantize every linear inside the transformer blocks of --model at "
            "W<w-bits>A<a-bits> by one named method of SPEC §4.4 (rtn, gptq, quarot, "
            "flatquant, masked-uniform[-gptq], fair[-gptq] and the fair-* ablations), through fairref.fair.pipeline: Stage I on the calibration prompts (teacher "
            "rollouts, the prior, the teacher states of §4.1 and the plain inputs), then the "
            "§4.2 block loop. Writes a quantized checkpoint directory (§7) atomically. "
            "Prompts as for probe (toy default: the TRAIN split). Methods weighted by a "
            "prior (fair*) use --prior when given, else the prior Stage I computes from the "
            "same calibration prompts with the SPEC §3 defaults; --prior given to a method "
            "without prior weights is an error. Progress is saved after each block in "
            "OUT.partial/; --resume continues an interrupted run to the same bytes."),
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="float checkpoint directory (the teacher)")
    p.add_argument("--method", required=True, metavar="NAME",
                   help="calibration method of SPEC §4.4, e.g. fair, masked-uniform, gptq, "
                        "rtn (an unknown name lists them all)")
    p.add_argument("--prior", type=Path, metavar="PRIOR.json",
                   help="prior from `fairref probe` (fair* methods; default: computed here)")
    p.add_argument("--w-bits", type=weight_bits, default=4,
                   help="weight bits, 2..8 (default: %(default)s)")
    p.add_argument("--a-bits", type=activation_bits, default=4,
                   help="activation bits, 2..8, or 16 to keep activations in floating point "
                        "(default: %(default)s)")
    p.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                   help="SmoothQuant before the rtn / gptq solvers: fold ζ with migration "
                        "strength ALPHA in [0, 1] (0.5 is SmoothQuant's default) into each "
                        "norm and the linears it feeds (SPEC §4.4); off by default")
    p.add_argument("--out", type=Path, required=True, metavar="QDIR",
                   help="quantized checkpoint directory to write")
    p.add_argument("--format", choices=("fairref", "compressed-tensors"), default="fairref",
                   help="fairref: SPEC §7 (default); compressed-tensors: its pack-quantized "
                        "layout (fairref/export.py), for methods without a rotation or learned "
                        "transform (e.g. gptq); other methods are refused before calibrating")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run saved in QDIR.partial/ (same settings "
                        "required; the result is byte-identical to an uninterrupted run)")
    p.add_argument("--stream", action="store_true",
                   help="layer streaming: after Stage I, read one block at a time from "
                        "--model's shards and write each quantized block before the next "
                        "(resident: embedding, head, one block); same bytes as without")
    p.add_argument("--epochs", type=positive_int, default=15,
                   help="flat solver: epochs per block (default: %(default)s, SPEC §4.3d)")
    p.add_argument("--batch", type=positive_int, default=4,
                   help="flat solver: states per optimizer step (default: %(default)s)")
    p.add_argument("--states", type=positive_int, default=4, metavar="S",
                   help="calibration states per rollout, SPEC §4.1 (default: %(default)s)")
    p.add_argument("--rollouts", type=positive_int, default=1,
                   help="rollouts per prompt; more than one only with a random sampler (1)")
    _add_run_options(p, "overwrite an existing --out directory (and discard a saved partial "
                        "run unless --resume)")


def _inputs_hash(args, method, settings, ids, prior_file) -> str:
    """SHA-256 of everything that determines the checkpoint: the teacher's files, the
    prompts' ids, the sampler, method, bits, solver and prior settings, the seed."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha256()
    for f in sorted(args.model.iterdir()):
        if f.name in ("config.json", "model.safetensors.index.json") or f.suffix == ".safetensors":
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    h.update(ids.cpu().numpy().tobytes())
    if prior_file is not None:
        h.update(Path(prior_file).read_bytes())
    record = {"method": dataclasses.asdict(method), "w_bits": args.w_bits,
              "a_bits": args.a_bits, "epochs": args.epochs, "batch": args.batch,
              "states": args.states, "rollouts": args.rollouts, "seed": args.seed,
              "smooth": args.smooth,
              "sampler": dataclasses.asdict(settings), "shape": list(ids.shape)}
    h.update(json.dumps(record, sort_keys=True).encode())
    return h.hexdigest()


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _resume_blocks(partial: Path, inputs_hash: str, device) -> list:
    """The blocks an interrupted run saved in ``partial``, if its inputs were the same."""
    from fairref.files import read_json
    from fairref.models import load

    if not partial.is_dir():
        raise FileNotFoundError(f"--resume: no interrupted run at {partial}; run without "
                                "--resume to start one")
    qc = read_json(partial / "config.json", "partial checkpoint config").get(
        "quantization_config") or {}
    state = (qc.get("method") or {}).get("partial") or {}
    if state.get("inputs_hash") != inputs_hash:
        raise ValueError(f"--resume: {partial} was written with other settings or inputs "
                         "(model, prompts, method, bits, solver options, prior or seed differ); "
                         "rerun with the original flags, or pass --force without --resume to "
                         "start over")
    done = state.get("blocks_done")
    model = load(partial, device=device)
    if not isinstance(done, int) or not 0 < done <= len(model.blocks):
        raise ValueError(f"--resume: {partial}/config.json has no valid blocks_done "
                         f"({done!r}); pass --force without --resume to start over")
    return [model.blocks[l] for l in range(done)]


def _given_prior(args, settings):
    """The --prior file, checked against the generation length it must cover."""
    from fairref.fair import Prior

    prior = Prior.load(args.prior)
    if prior.pi.numel() != settings.gen_length:
        raise ValueError(f"--prior {args.prior} covers {prior.pi.numel()} generation "
                         f"positions but {args.model} generates gen_length = "
                         f"{settings.gen_length}; probe this model again")
    return prior


def _write_calibrated(result, args, stream=None) -> None:
    """The quantized checkpoint of ``result`` at --out (atomic), with the prior it used."""
    import tempfile

    from fairref.models.quantized import save_quantized

    # the wall time stays out of the checkpoint: same inputs and seed → the same bytes
    desc = result.description()
    if args.format == "compressed-tensors":
        from fairref.export import compressed_tensors_config, export_compressed_tensors

        export_compressed_tensors(result.model, args.out, method=desc, source=args.model,
                                  overwrite=args.force)
        for note in compressed_tensors_config(result.model)[1]:
            print(f"note: {note}")  # also in the exported config.json (fairref_export.notes)
        return
    with tempfile.TemporaryDirectory() as tmp:
        prior_file = None
        if result.prior is not None:  # the prior as the method used it (ablation applied)
            prior_file = Path(tmp) / "prior.json"
            result.prior.save(prior_file)
        if stream is not None:  # the blocks are on disk already: finalise OUT
            stream.save(method=desc, prior_file=prior_file, source=args.model)
            return
        save_quantized(result.model, args.out, method=desc, prior_file=prior_file,
                       source=args.model, overwrite=args.force)


def _run_calibrate(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from fairref.fair import FlatConfig, get_method
    from fairref.fair.pipeline import calibrate, prepare
    from fairref.models.quantized import save_quantized
    from fairref.progress import progress_bar

    torch.manual_seed(args.seed)
    method = get_method(args.method)
    if args.prior is not None and not method.needs_prior:
        raise ValueError(f"--prior: method {method.name!r} does not weight tokens by a prior "
                         "(only the fair* methods do); drop --prior")
    _check_out(args.out, args.force)
    if args.format == "compressed-tensors" and (method.rotation or method.solver == "flat"):
        from fairref.export import transform_refusal

        raise ValueError(f"--format compressed-tensors: method {method.name!r} cannot be exported: "
                         + transform_refusal("kronecker" if method.solver == "flat"
                                             else method.rotation))
    if args.stream and args.format == "compressed-tensors":
        raise ValueError("--stream writes fairref's own format block by block, and "
                         "--format compressed-tensors needs the whole quantized model: drop "
                         "--stream, or drop --format")
    partial = _partial_dir(args.out)
    if partial.exists() and not args.resume and not args.force:
        raise FileExistsError(f"{partial} holds an interrupted run of this output; pass "
                              "--resume to continue it, or --force to start over")
    flat = FlatConfig(epochs=args.epochs, batch=args.batch)  # checks the values
    device = _device(args.device)
    teacher = _load_teacher(args.model, device)
    settings = _settings(args.model, teacher)
    prior = None if args.prior is None else _given_prior(args, settings)
    ps, ids, attn = _prompts(args, "train", device)
    inputs_hash = _inputs_hash(args, method, settings, ids, args.prior)
    resume_blocks = (_resume_blocks(partial, inputs_hash, device)
                     if args.resume and not args.stream else [])
    if partial.exists() and not args.resume:
        shutil.rmtree(partial)  # --force: start over
    if args.smooth is not None and method.solver == "flat":
        raise ValueError(f"--smooth: method {method.name!r} uses the flat solver, which learns "
                         "its own smoothing; use --smooth with rtn, gptq, quarot or *-gptq")
    if args.smooth is not None and not 0.0 <= args.smooth <= 1.0:
        raise ValueError(f"--smooth {args.smooth}: the migration strength must be in [0, 1]")
    data = None
    if method.needs_data or args.smooth is not None:
        with torch.no_grad():
            data = prepare(teacher, ids, settings, states_per_rollout=args.states,
                           rollouts=args.rollouts, seed=args.seed, attention_mask=attn)
    n_blocks = len(teacher.blocks)
    if args.stream:  # Stage I is done: drop the teacher, stream blocks through OUT.partial
        from fairref.models.blocks import StreamingBlocks
        from fairref.quant import QuantSpec

        teacher = StreamingBlocks(args.model, args.out, device=device, resume=args.resume,
                                  run_key=inputs_hash, overwrite=args.force,
                                  w_spec=QuantSpec(bits=args.w_bits), work_dir=partial)
    bar = progress_bar(range(n_blocks), desc=f"calibrate {method.name}", unit="block")

    def on_block(l: int, model) -> None:
        bar.update(1)
        # the partial run already holds resumed blocks; the last block's result is the
        # checkpoint itself
        if len(resume_blocks) <= l < n_blocks - 1 and not args.stream:
            save_quantized(model, partial, overwrite=True, method={"partial": {
                "blocks_done": l + 1, "inputs_hash": inputs_hash, "method": method.name}})

    try:
        result = calibrate(teacher, method, data, prior=prior, w_bits=args.w_bits,
                           a_bits=args.a_bits, flat=flat, seed=args.seed,
                           resume_blocks=resume_blocks, on_block=on_block,
                           smooth_alpha=args.smooth)
    except ValueError:
        # a deterministic failure (NaN/Inf in calibration, ...): resuming would repeat it, so
        # no partial run is left behind; an interruption or an OSError keeps it for --resume
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    _write_calibrated(result, args, teacher if args.stream else None)
    shutil.rmtree(partial, ignore_errors=True)
    took = result.seconds + (data.seconds if data is not None else 0.0)
    done = teacher.n_done if args.stream else len(resume_blocks)
    resumed = f", resumed after block {done}" if done else ""
    print(f"{method.name} at W{args.w_bits}A{args.a_bits} on {ids.shape[0]} prompts "
          f"({ps.source}){resumed}: {took:.1f} s")
    if result.report.block_loss:
        print("block loss L_ℓ: " + ", ".join(f"{x:.4g}" for x in result.report.block_loss))
    print(f"quantized checkpoint written to {args.out}")
    return 0


# --- eval -----------------------------------------------------------------------------------
