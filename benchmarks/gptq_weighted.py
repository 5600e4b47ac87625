"""What token weights cost in GPTQ: weighted vs unweighted calibration of one layer (SPEC §4.3a).

Times (Hessian accumulation + gptq_quantize) on a 4096×4096 layer with 2048 calibration tokens,
once with per-token weights w (FAIR-Calib) and once with w ≡ 1 (plain GPTQ), alternating the
two so machine load drifts hit both equally, and prints the ratio of the medians. The
weights add only a (T, K) row scaling before the Xᵀ X product, so the expected ratio is ≈ 1.

Runs with torch.set_num_threads(2) (the whole test machine). Last line:
``weighted_vs_unweighted_ratio R``.
Legend: N output channels, K input features, T tokens.
"""

from __future__ import annotations

import statistics
import time

import torch

from fairref.quant import QuantSpec, gptq_quantize, hessian


def calibrate(W: torch.Tensor, X: torch.Tensor, w: torch.Tensor | None) -> float:
    """Seconds for H = hessian(X, w) followed by one GPTQ solve of W against it."""
    t0 = time.perf_counter()
    H = hessian(X, w)  # (K, K)
    gptq_quantize(W, H, QuantSpec())  # W4, per channel, blocksize 128, percdamp 0.01
    return time.perf_counter() - t0


def main(N: int = 4096, K: int = 4096, T: int = 2048, repeats: int = 3, threads: int = 2) -> float:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(N, K, generator=g)  # (N, K)
    X = torch.randn(T, K, generator=g)  # (T, K)
    w = torch.rand(T, generator=g) * 2  # (T,) token weights in [0, 2)
    weighted, unweighted = [], []
    for r in range(repeats):
        weighted.append(calibrate(W, X, w))
        unweighted.append(calibrate(W, X, None))
        print(f"repeat {r}: weighted {weighted[-1]:.2f} s, unweighted {unweighted[-1]:.2f} s", flush=True)
    tw, tu = statistics.median(weighted), statistics.median(unweighted)
    print(f"layer {N}x{K}, {T} tokens, {threads} threads, median of {repeats}: "
          f"weighted {tw:.2f} s, unweighted {tu:.2f} s")
    ratio = tw / tu
    print(f"weighted_vs_unweighted_ratio {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
