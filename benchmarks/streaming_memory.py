"""Peak memory and time of layer-streaming calibration at LLaDA-8B width (issue #12).

Writes a real-layout float checkpoint directory of random LLaDA-8B-width blocks (d = 4096,
32 heads, SwiGLU 12288, bfloat16 like the public shards, one shard per block plus one for
the rest) with a SMALL vocabulary (``--vocab``, default 1024, so the resident embedding
and head are 2 × 16 MiB instead of 2 × 2 GiB: this measures the blocks), then calibrates
its first 2 and then all 4 blocks with a streaming block source
(``fairref.models.blocks.StreamingBlocks``: one block resident, each final block written
out) by the Stage II configurations of ``fair`` (flat solver) and ``fair-gptq`` at W4A4,
each run in a fresh subprocess whose own ``resource.getrusage`` ``ru_maxrss`` is its
peak RSS.

Calibration data: no Stage I here (random blocks have no meaningful rollouts): ``--states``
random token sequences of ``--length`` tokens with random token weights in [¼, 4] stand in
for the teacher states and the prior's weights; the block loop, the solvers and the
writer are the real ones (``quantize_model(..., blocks=StreamingBlocks(...))``). The flat
solver runs ``--epochs`` epochs at batch ``--batch`` (few steps, so this takes minutes; the
memory of a step does not depend on their number).

Printed: the settings, per run the per-block seconds and peak RSS, per method the
extrapolated 32-block time (mean block time × 32) and 32-block peak (the 4-block peak plus
the 2→4-block growth per block × 28, none if it shrank: flat if streaming holds), and last
``peak_rss_ratio_4_vs_2_blocks R`` (the larger of the two methods; target ≤ 1.15).
``torch.set_num_threads(2)`` in every child.

Measured on the shared 2-core machine it was made on (load average 4–6 from other jobs,
so times are pessimistic; RSS is not affected), default settings, ``--methods fair``:
per block 147, 130 s (2 blocks) and 137, 138, 127, 89 s (4 blocks), peak RSS 8.56 GiB
and 8.57 GiB, extrapolated 32 blocks 65.6 min and 8.75 GiB,
``peak_rss_ratio_4_vs_2_blocks 1.001``; ``--methods fair-gptq``: per block 248, 110 s and
109, 101, 125, 280 s, peak RSS 7.94 and 7.89 GiB (ratio 0.994), extrapolated 32 blocks
82 min and 7.89 GiB. The flat solver's step is weight-bound at this
width (the fake-quantized weights through the Kronecker transform, forward and backward,
about a minute per step here), and GPTQ's Cholesky factorisations of the 12288 × 12288
Hessian of the down projection take about two minutes: the full default run does not fit
15 minutes on two loaded cores. The two methods were run separately (``--methods
fair``, then ``--methods fair-gptq``), each taking 10–17 minutes.

Usage: ``python benchmarks/streaming_memory.py [--dir D] [--states S] [--length L]
[--epochs E] [--batch B] [--vocab V] [--methods fair,fair-gptq]`` (``--dir`` keeps the files; default a temporary
directory, about 2 GiB of float shards and 0.5 GiB of output).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

N_BLOCKS = 4
WIDTH = dict(d_model=4096, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288)


def write_float_dir(root: Path, vocab: int) -> tuple[Path, Path]:
    """Random LLaDA-8B-width checkpoints with 4 and 2 blocks (the 2-block one links the
    first two block shards of the 4-block one)."""
    from safetensors.torch import save_file

    from fairref.models import LLaDAConfig, build
    from fairref.models.quantized import blocks_prefix
    from fairref.models.safetensors_io import shard_file, write_index

    cfg = LLaDAConfig(**WIDTH, n_layers=N_BLOCKS, vocab_size=vocab, embedding_size=vocab,
                      mask_token_id=vocab - 1, eos_token_id=vocab - 2, pad_token_id=vocab - 2)
    meta = build(cfg, device="meta")
    prefix = blocks_prefix(meta)
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    gen = torch.Generator().manual_seed(0)

    def draw(name: str) -> torch.Tensor:
        x = torch.randn(shapes[name], generator=gen) * 0.02
        return (1.0 + x if "norm" in name or "ln_f" in name else x).to(torch.bfloat16)

    four, two = root / "fp4", root / "fp2"
    four.mkdir(parents=True)
    two.mkdir()
    groups = [[k for k in shapes if k.startswith(f"{prefix}.{l}.")] for l in range(N_BLOCKS)]
    groups.append([k for k in shapes if not k.startswith(f"{prefix}.")])
    for n, d in ((N_BLOCKS, four), (2, two)):
        keep = groups[:n] + groups[-1:]
        wmap = {k: shard_file(i + 1, n + 1) for i, g in enumerate(keep) for k in g}
        write_index(d, wmap, sum(torch.Size(shapes[k]).numel() * 2 for k in wmap))
        d.joinpath("config.json").write_text(json.dumps(
            {**cfg.to_dict(), "n_layers": n}, indent=2) + "\n")
    for i, g in enumerate(groups):  # one group in memory at a time
        name = shard_file(i + 1, N_BLOCKS + 1)
        save_file({k: draw(k) for k in g}, str(four / name), metadata={"format": "pt"})
        if i < 2 or i == N_BLOCKS:
            (two / shard_file(min(i, 2) + 1, 3)).symlink_to(four / name)
    return four, two


def child(src: str, method: str, out: str, states: int, length: int, epochs: int,
          batch: int) -> None:
    """One streamed calibration; prints one JSON line (seconds per block, peak RSS)."""
    torch.set_num_threads(2)
    from fairref.fair import FlatConfig, get_method, quantize_model
    from fairref.fair.pipeline import calib_config
    from fairref.models.blocks import StreamingBlocks

    t0 = time.perf_counter()
    source = StreamingBlocks(src, out, overwrite=True)
    V = source.model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V - 2, (states, length), generator=gen)  # (B, L)
    w = 0.25 + 3.75 * torch.rand(states, length, generator=gen, dtype=torch.float64)  # (B, L)
    cfg = calib_config(get_method(method), flat=FlatConfig(epochs=epochs, batch=batch))
    stamps = [time.perf_counter()]
    quantize_model(source.model, ids, w, None, cfg, blocks=source,
                   on_block=lambda l, m: stamps.append(time.perf_counter()))
    source.save(method={"name": method, "benchmark": "streaming_memory"})
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"block_s": [b - a for a, b in zip(stamps, stamps[1:])],
                      "total_s": time.perf_counter() - t0, "peak_rss_bytes": peak_kib * 1024}))


def run_child(src: Path, method: str, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(src), method, str(out), "--states",
           str(args.states), "--length", str(args.length), "--epochs", str(args.epochs),
           "--batch", str(args.batch)]
    env = {**os.environ, "FAIRREF_PROGRESS": "0"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"child {method} on {src} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--states", type=int, default=4, help="calibration sequences (4)")
    p.add_argument("--length", type=int, default=64, help="tokens per sequence (64)")
    p.add_argument("--epochs", type=int, default=1, help="flat solver epochs (1)")
    p.add_argument("--batch", type=int, default=4, help="flat solver batch (4: one step)")
    p.add_argument("--methods", default="fair,fair-gptq",
                   help="comma-separated methods to run (default: fair,fair-gptq)")
    p.add_argument("--vocab", type=int, default=1024, help="embedding rows (1024)")
    p.add_argument("--child", nargs=3, metavar=("SRC", "METHOD", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args.states, args.length, args.epochs, args.batch)
        return
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        four, two = write_float_dir(root, args.vocab)
        print(f"LLaDA-8B-width blocks: d = {WIDTH['d_model']}, {WIDTH['n_heads']} heads, MLP "
              f"{WIDTH['mlp_hidden_size']}, bfloat16 shards, vocab {args.vocab} (small on "
              f"purpose); written in {time.perf_counter() - t0:.1f} s")
        print(f"calibration: {args.states} states x {args.length} tokens, random weights in "
              f"[1/4, 4]; W4A4, Hadamard; flat solver {args.epochs} epoch(s) at batch "
              f"{args.batch}; torch.set_num_threads(2); each run in a fresh subprocess")
        ratios = []
        for method in args.methods.split(","):
            runs = {}
            for n, src in ((2, two), (N_BLOCKS, four)):
                r = runs[n] = run_child(src, method, root / f"q_{method}_{n}", args)
                print(f"{method:9s} {n} blocks: per block "
                      + ", ".join(f"{s:.1f}" for s in r["block_s"])
                      + f" s; total {r['total_s']:.1f} s; peak RSS "
                      f"{r['peak_rss_bytes'] / 2**30:.2f} GiB")
            per_block = sum(runs[N_BLOCKS]["block_s"]) / N_BLOCKS
            p2, p4 = runs[2]["peak_rss_bytes"], runs[N_BLOCKS]["peak_rss_bytes"]
            # growth per block; none (or a dip, noise) means the peak stays the 4-block one
            p32 = p4 + max(p4 - p2, 0) / (N_BLOCKS - 2) * (32 - N_BLOCKS)
            print(f"{method:9s} extrapolated to 32 blocks: {per_block * 32 / 60:.1f} min "
                  f"({per_block:.1f} s/block), peak RSS {p32 / 2**30:.2f} GiB; "
                  f"ratio 4 vs 2 blocks {p4 / p2:.3f}")
            ratios.append(p4 / p2)
    print(f"peak_rss_ratio_4_vs_2_blocks {max(ratios):.3f}")


if __name__ == "__main__":
    main()
