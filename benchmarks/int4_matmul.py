"""Speed of the int4 reference matmul against a float32 linear (SPEC §1, "Int4 reference matmul").

Times ``int4_matmul`` (the integer path with its precondition checks and the pinned
float32 epilogue; operands already quantized, per-channel scales) against ``F.linear`` in
float32 on the same shapes, in the same run, with ``torch.set_num_threads(2)``. Reports the
median of several repeats after a warm-up. Target: ratio ≤ 2.

Usage: python benchmarks/int4_matmul.py [--T 2048] [--K 4096] [--N 4096] [--repeats 5]
Last line: ``int4_vs_fp32_linear_ratio R``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fairref.quant.int4 import int4_matmul


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, BLAS thread pool)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--K", type=int, default=4096)
    p.add_argument("--N", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    T, K, N = args.T, args.K, args.N
    a_q = torch.randint(-8, 8, (T, K), generator=g, dtype=torch.int8)  # (T, K)
    w_q = torch.randint(-8, 8, (N, K), generator=g, dtype=torch.int8)  # (N, K)
    s_a = torch.rand(T, 1, generator=g) + 0.5  # (T, 1)
    s_w = torch.rand(N, 1, generator=g) + 0.5  # (N, 1)
    x = torch.randn(T, K, generator=g)  # (T, K) float32
    W = torch.randn(N, K, generator=g)  # (N, K) float32
    with torch.no_grad():
        t_int = median_time(lambda: int4_matmul(a_q, s_a, w_q, s_w), args.repeats)
        t_f32 = median_time(lambda: F.linear(x, W), args.repeats)
    print(f"threads {torch.get_num_threads()}, T={T} K={K} N={N}, median of {args.repeats}")
    print(f"int4_matmul  {t_int * 1e3:9.1f} ms")
    print(f"F.linear f32 {t_f32 * 1e3:9.1f} ms")
    print(f"int4_vs_fp32_linear_ratio {t_int / t_f32:.3f}")


if __name__ == "__main__":
    main()
