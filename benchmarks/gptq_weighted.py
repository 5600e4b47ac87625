"""What token weights cost in GPTQ: weighted vs unweighted calibration of one layer (SPEC §4.3a).

Times (Hessian accumulation + gptq_quantize) on a 4096×4096 layer with 2048 calibration
tokens, once with per-token weights w (FAIR-Calib) and once with w ≡ 1 (plain GPTQ). The
Hessian is streamed through ``HessianAccumulator`` in batches of 256 tokens, as a calibration
loop would. The weights add only a (T, K) row scaling before the Xᵀ X product, so the
expected ratio is ≈ 1.

Runs with torch.set_num_threads(2). On a shared 2-core machine wall times swing several-fold
when other jobs run (2-thread barriers then wait on descheduled threads), so the two parts
are timed separately and interleaved (weighted, unweighted, weighted, …): the Hessian part
(~1–3 s) many times, the solve (5–15 s) 7 times; each part's median is taken and
R = (med H_w + med solve_w) / (med H_u + med solve_u). Last line:
``weighted_vs_unweighted_ratio R``.
Legend: N output channels, K input features, T tokens.
"""

from __future__ import annotations

import statistics
import time

import torch

from fairref.quant import HessianAccumulator, QuantSpec, gptq_quantize


def accumulate(X: torch.Tensor, w: torch.Tensor | None, batch: int = 256) -> tuple[torch.Tensor, float]:
    """H streamed from batches of X (T, K) with weights w (T,) or None → (H, seconds)."""
    t0 = time.perf_counter()
    acc = HessianAccumulator(X.shape[1])
    for i in range(0, X.shape[0], batch):
        acc.add(X[i:i + batch], None if w is None else w[i:i + batch])
    H = acc.H  # (K, K)
    return H, time.perf_counter() - t0


def solve(W: torch.Tensor, H: torch.Tensor) -> float:
    """Seconds for one GPTQ solve: W4, per channel, blocksize 128, percdamp 0.01."""
    t0 = time.perf_counter()
    gptq_quantize(W, H, QuantSpec())
    return time.perf_counter() - t0


def main(N: int = 4096, K: int = 4096, T: int = 2048, hessian_repeats: int = 7,
         solve_repeats: int = 7, threads: int = 2) -> float:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(N, K, generator=g)  # (N, K)
    X = torch.randn(T, K, generator=g)  # (T, K)
    w = torch.rand(T, generator=g) * 2  # (T,) token weights in [0, 2)
    h_w, h_u, s_w, s_u = [], [], [], []
    for r in range(hessian_repeats):
        H_w, t = accumulate(X, w)
        h_w.append(t)
        H_u, t = accumulate(X, None)
        h_u.append(t)
        print(f"hessian repeat {r}: weighted {h_w[-1]:.2f} s, unweighted {h_u[-1]:.2f} s", flush=True)
    for r in range(solve_repeats):
        s_w.append(solve(W, H_w))
        s_u.append(solve(W, H_u))
        print(f"solve repeat {r}: weighted H {s_w[-1]:.2f} s, unweighted H {s_u[-1]:.2f} s", flush=True)
    med = statistics.median
    tw, tu = med(h_w) + med(s_w), med(h_u) + med(s_u)
    print(f"layer {N}x{K}, {T} tokens, {threads} threads: hessian median weighted {med(h_w):.2f} s / "
          f"unweighted {med(h_u):.2f} s; solve median {med(s_w):.2f} s / {med(s_u):.2f} s")
    print(f"hessian_ratio {med(h_w) / med(h_u):.3f}  solve_ratio {med(s_w) / med(s_u):.3f}  "
          f"min_based_ratio {(min(h_w) + min(s_w)) / (min(h_u) + min(s_u)):.3f}")
    ratio = tw / tu
    print(f"weighted_vs_unweighted_ratio {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
