"""The Dream sampler: whole-region diffusion with confidence-ordered unmasking (SPEC §2).

A faithful re-implementation of ``_sample`` and ``sample_tokens`` in
``Dream-org/Dream-v0-Instruct-7B/generation_utils.py`` (also ``DreamLM/Dream``): the
prompt followed by ``max_new_tokens`` masks; float32 timesteps ``linspace(1, eps, T+1)``;
at step i (t, s = ts[i], ts[i+1]) one forward pass, then

- ``origin``: each masked position is written with probability 1 − s/t (all at the last
  step), the token drawn by ``sample_tokens``; no score, no k_t;
- otherwise ``sample_tokens`` gives a candidate and a score — ``maskgit_plus``: its
  probability, ``topk_margin``: top-1 − top-2 probability, ``entropy``: negative entropy —
  and the k = int(n̄·(1 − s/t)) best (n̄ = masked count averaged over the batch) are
  written, chosen by ``torch.topk`` or, with ``alg_temp`` > 0, drawn without replacement
  from softmax(score / alg_temp).

``sample_tokens`` divides by the temperature, applies top-p then top-k filtering, and at
temperature > 0 draws from the resulting categorical (falling back to the argmax exactly
where the public ``try/except`` around ``Categorical(probs).sample()`` does).

Differences from the public file, none of which changes a token: the model is reached
through ``model.logits`` (Dream's one-position shift is inside it, SPEC §2), random
numbers come only from ``generator``, the token hooks (identity by default) are left out,
and a prompt may not contain the mask id. Checked token-for-token against a plain
transcription of the public loop in ``tests/test_diffusion_faithful.py``.

Legend: B batch, P prompt length, G max_new_tokens, L = P + G, V vocabulary,
N masked positions of the whole batch (row-major).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from fairref.diffusion.sampler import (
    TraceRecorder,
    check_positive_int,
    generator_seed,
    init_state,
)
from fairref.diffusion.schedule import dream_timesteps, dream_transfer_count

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


def top_p_filter(z: Tensor, top_p: float) -> Tensor:
    """Keep the smallest prefix of tokens (by logit) whose probability reaches ``top_p``.

    A token is dropped when the cumulative probability *before* it already exceeds
    ``top_p``, so the top-1 token always stays. Dropped logits become the dtype's min.
    ``z``: (N, V) → (N, V).
    """
    z_sorted, order = torch.sort(z, descending=True)  # (N, V)
    cum = torch.cumsum(torch.softmax(z_sorted, dim=-1), dim=-1)  # (N, V)
    drop_sorted = cum > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # shift: keep the crossing token
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, order, drop_sorted)  # (N, V)
    return z.masked_fill(drop, torch.finfo(z.dtype).min)


def top_k_filter(z: Tensor, top_k: int) -> Tensor:
    """Drop tokens whose logit is below the k-th largest (ties at the k-th all stay).

    ``z``: (N, V) → (N, V)."""
    kth = torch.topk(z, min(top_k, z.shape[-1])).values[..., -1:]  # (N, 1)
    return z.masked_fill(z < kth, torch.finfo(z.dtype).min)


def _categorical_sample(probs: Tensor, generator: torch.Generator | None) -> Tensor | None:
    """``Categorical(probs=probs).sample()`` drawing from ``generator``; None where the
    public call would raise (invalid simplex under argument validation, or multinomial
    failure), so that the caller falls back to the argmax as the public ``except`` does.
    ``probs``: (N, V) → (N,)."""
    q = probs / probs.sum(-1, keepdim=True)  # Categorical renormalizes its argument
    # Distribution validates its arguments unless validation was switched off globally
    if Distribution._validate_args and not bool(constraints.simplex.check(q).all()):
        return None
    try:
        return torch.multinomial(q.reshape(-1, q.shape[-1]), 1, True,
                                 generator=generator).T.reshape(q.shape[:-1])
    except RuntimeError:
        return None


def sample_tokens(z: Tensor, temperature: float = 0.0, top_p: float | None = None,
                  top_k: int | None = None, margin_confidence: bool = False,
                  neg_entropy: bool = False,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Candidates and scores for masked positions, as Dream's ``sample_tokens``.

    ``z``: (N, V) logits → (score (N,), x̂ (N,)). The score is the probability of x̂
    (under the tempered, filtered distribution), or top-1 − top-2 probability
    (``margin_confidence``), or Σ p log(p + 1e-10) (``neg_entropy``).
    """
    if temperature > 0:
        z = z / temperature
    if top_p is not None and top_p < 1:
        z = top_p_filter(z, top_p)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    probs = torch.softmax(z, dim=-1)  # (N, V)
    x_hat = _categorical_sample(probs, generator) if temperature > 0 else None
    if x_hat is None:
        conf, x_hat = probs.max(dim=-1)
    else:
        conf = torch.gather(probs, -1, x_hat.unsqueeze(-1)).squeeze(-1)
    if margin_confidence:
        p_sorted = torch.sort(probs, dim=-1, descending=True).values  # (N, V)
        conf = p_sorted[:, 0] - p_sorted[:, 1]
    if neg_entropy:
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return conf, x_hat


@torch.no_grad()
def dream_generate(model, prompt_ids: Tensor, steps: int, max_new_tokens: int,
                   alg: str = "maskgit_plus", alg_temp: float | None = None, eps: float = 1e-3,
                   temperature: float = 0.0, top_p: float | None = None,
                   top_k: int | None = None, generator: torch.Generator | None = None,
                   record: bool = False, attention_mask: Tensor | None = None):
    """Generate ``max_new_tokens`` tokens after ``prompt_ids`` (B, P) with the Dream loop.

    ``alg`` in ``ALGS``; ``alg_temp`` > 0 samples the positions to write instead of taking
    the top k; ``eps`` is the last timestep; ``temperature``/``top_p``/``top_k`` shape the
    token distribution; randomness comes only from ``generator`` (of the prompt's device;
    None draws from torch's default one); ``attention_mask``
    (B, P) marks real prompt tokens and is passed on to ``model.logits``, extended.

    Returns the final ids (B, P + G), or ``(ids, trace)`` when ``record`` is True.
    """
    check_positive_int("steps", steps)
    check_positive_int("max_new_tokens", max_new_tokens)
    if alg not in ALGS:
        raise ValueError(f"alg must be one of {ALGS}, got {alg!r}")
    if temperature < 0 or (alg_temp is not None and alg_temp < 0):
        raise ValueError(f"temperature and alg_temp must be >= 0, got {temperature}, {alg_temp}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p}")
    if top_k is not None:
        check_positive_int("top_k", top_k)
    mask_id = int(model.mask_token_id)
    x, attn = init_state(prompt_ids, max_new_tokens, mask_id, attention_mask)  # (B, L)
    B, L = x.shape
    P = L - max_new_tokens
    ts = dream_timesteps(steps, eps, x.device)  # (T + 1,) float32
    A = torch.zeros_like(x, dtype=torch.bool)
    A[:, P:] = True  # (B, L): the whole generation region is active
    rec = TraceRecorder(steps) if record else None
    for i in range(steps):
        M = x == mask_id  # (B, L): M_t
        z = model.logits(x, attention_mask=attn)  # (B, L, V), already shifted
        z_M = z[M]  # (N, V), row-major over (B, L) as the public code
        t, s, last = ts[i], ts[i + 1], i == steps - 1
        x_hat = torch.full_like(x, mask_id)  # (B, L): candidates at masked positions
        if alg == "origin":
            p_transfer = 1 - s / t if not last else 1
            chosen = torch.rand(z_M.shape[0], generator=generator, device=x.device) < p_transfer
            x0 = torch.full((z_M.shape[0],), mask_id, dtype=torch.int64, device=x.device)
            _, x0[chosen] = sample_tokens(z_M[chosen], temperature, top_p, top_k,
                                          generator=generator)
            x_hat[M] = x0
            F = torch.zeros_like(M)  # (B, L): F_t, the positions written this step
            F[M] = chosen
            k_t, conf = torch.full((B,), -1), None  # origin has neither k_t nor a score
        else:
            conf_M, x0 = sample_tokens(z_M, temperature, top_p, top_k,
                                       margin_confidence=alg == "topk_margin",
                                       neg_entropy=alg == "entropy", generator=generator)
            k = dream_transfer_count(M.sum() / B, t, s, last)
            score = torch.full(x.shape, -torch.inf, dtype=z.dtype, device=x.device)  # (B, L)
            score[M] = conf_M
            x_hat[M] = x0
            F = torch.zeros_like(M)  # (B, L): F_t
            if k > 0:
                if alg_temp is None or alg_temp == 0:
                    idx = torch.topk(score, k).indices  # (B, k)
                else:
                    w = torch.softmax(score / alg_temp, dim=-1)  # (B, L)
                    idx = torch.multinomial(w, num_samples=k, generator=generator)  # (B, k)
                F.scatter_(1, idx, True)
            k_t, conf = torch.full((B,), k), score
        x_next = torch.where(F, x_hat, x)  # commit; the recorded x_t stays intact
        if rec is not None:
            if alg == "origin":  # the trace's candidate where nothing was drawn: the argmax
                x_hat[M] = torch.where(chosen, x0, z_M.argmax(-1))
            rec.step(x, A, k_t, F, x_hat, z, conf, mask_id)
        x = x_next
    if rec is None:
        return x
    settings = {"sampler": "dream", "steps": steps, "max_new_tokens": max_new_tokens,
                "alg": alg, "alg_temp": alg_temp, "eps": eps, "temperature": temperature,
                "top_p": top_p, "top_k": top_k, "generator_seed": generator_seed(generator)}
    return x, rec.finish(x, P, mask_id, settings, attn,
                         lambda x_t: model.logits(x_t, attention_mask=attn))
