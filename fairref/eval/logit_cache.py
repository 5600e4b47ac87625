"""Logits looked up by state, so that one evaluation never runs a model twice on one state.

:func:`~fairref.eval.run.evaluate` runs the same model on the same states more than once:
the teacher rolls out on x_0 … x_{T−1} and is then run on exactly those states again by
every student's teacher-forced pass; a student is run teacher-forced on the teacher's
states and then rolls out on its own, and its own states equal the teacher's until its
first different commit (on the toys, a W4A4 student keeps the teacher's state on most
steps). :class:`LogitCache` wraps a model and keys every row it computes by its content
(the state's token ids and its padding mask): a row seen before is copied from the cache,
the others go through the model in one smaller batch.

A row's logits do not depend on the other rows of its batch (attention, the per-token
activation quantizer and the padding mask are all per row), so a cached row is the same
function of the same input. Whether it is the same *bits* depends on the matrix-multiply
kernel being batch-invariant: it is on the CPUs this project was measured on (every toy
model, FP and W4A4, at batch sizes 1–256, ``tests/eval/test_logit_cache.py`` shows how
to check), and where it is not the cached logits differ from a recomputation by float32
rounding. ``evaluate(..., reuse_logits=False)`` is the plain path without any cache.

The cache holds at most ``max_bytes`` of logits (float32 rows of L·V); when it is full,
new rows are computed and returned but not kept, so a large vocabulary degrades to the
plain path instead of running out of memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: default budget per cache: 8000 toy problems × 8 steps × 40 positions × 47 logits fit
DEFAULT_MAX_BYTES = 1 << 30


class LogitCache:
    """``model`` with its ``logits(x, attention_mask)`` remembered by state content.

    Everything else (``mask_token_id``, ``parameters()``, …) is the wrapped model's; the
    wrapped model is ``__wrapped__`` (what :func:`~fairref.diffusion.sampler_family`
    unwraps). ``hits`` and ``misses`` count rows.
    """

    def __init__(self, model, max_bytes: int = DEFAULT_MAX_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.__wrapped__ = model
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._rows: dict[bytes, Tensor] = {}

    def __getattr__(self, name: str):
        # only reached for names this object lacks: the wrapped model's attributes
        return getattr(self.__dict__["__wrapped__"], name)

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def _keys(x: Tensor, attention_mask: Tensor | None) -> list[bytes]:
        xs = x.to("cpu", torch.int64).numpy()  # (b, L)
        if attention_mask is None:
            return [b"n" + r.tobytes() for r in xs]
        ms = attention_mask.to("cpu", torch.bool).numpy()  # (b, L)
        return [b"m" + r.tobytes() + m.tobytes() for r, m in zip(xs, ms)]

    @torch.no_grad()
    def logits(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(b, L) states → (b, L, V) logits; rows seen before are not recomputed."""
        keys = self._keys(x, attention_mask)
        miss = [i for i, k in enumerate(keys) if k not in self._rows]
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        if len(miss) == len(keys):  # nothing cached: the plain forward, as it is
            z = self.__wrapped__.logits(x, attention_mask=attention_mask)
            self._store(keys, range(len(keys)), z)
            return z
        idx = torch.tensor(miss, dtype=torch.long, device=x.device)
        am = None if attention_mask is None else attention_mask[idx]
        z_miss = self.__wrapped__.logits(x[idx], attention_mask=am) if miss else None
        hit = [i for i in range(len(keys)) if keys[i] in self._rows]  # before storing misses
        like = self._rows[keys[hit[0]]]
        out = torch.empty((len(keys),) + tuple(like.shape), dtype=like.dtype, device=x.device)
        for i in hit:
            out[i] = self._rows[keys[i]]
        if miss:
            out[idx] = z_miss
            self._store([keys[i] for i in miss], range(len(miss)), z_miss)
        return out

    def _store(self, keys: list[bytes], rows, z: Tensor) -> None:
        per_row = z[0].numel() * z.element_size() if z.shape[0] else 0
        for k, r in zip(keys, rows):
            if k in self._rows:
                continue
            if self.bytes + per_row > self.max_bytes:
                return
            self._rows[k] = z[r].clone()
            self.bytes += per_row

    def clear(self) -> None:
        """Forget every row (the counters stay)."""
        self._rows.clear()
        self.bytes = 0
