"""The LLaDA sampler: semi-autoregressive blocks, low-confidence remasking (SPEC §2).

A faithful re-implementation of ``generate`` in ``ML-GSAI/LLaDA/generate.py``: the prompt
followed by G masks, cut into G/b blocks of length b that are filled left to right, each
block given steps/(G/b) steps. At each step, one forward pass; the candidate x̂ is the
argmax of the logits (temperature 0) or of Gumbel-perturbed logits in float64
(``exp(z) / (−log u)^temperature``, the public ``add_gumbel_noise``); the confidence is the
float64 softmax probability of x̂ (``low_confidence``) or a uniform draw (``random``);
positions after the current block and unmasked positions get −inf; ``torch.topk`` on each
row picks the k_t to commit, k_t from :func:`llada_transfer_counts`. Classifier-free
guidance runs the model on the prompt-masked sequence too and mixes
``z_u + (cfg + 1)(z_c − z_u)``.

Differences from the public file, none of which changes a token: the model is reached
through ``model.logits`` (SPEC §2), all random numbers come from ``generator``, no random
numbers are drawn at temperature 0 (as in the current public version), and a prompt may
not contain the mask id. Checked token-for-token against a plain transcription of the
public loop in ``tests/test_diffusion_faithful.py``.

Legend: B batch, P prompt length, G gen_length, L = P + G, V vocabulary,
S steps per block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fairref.diffusion.sampler import (
    TraceRecorder,
    check_positive_int,
    generator_seed,
    init_state,
)
from fairref.diffusion.schedule import llada_transfer_counts

REMASKING = ("low_confidence", "random")


def add_gumbel_noise(z: Tensor, temperature: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """Perturbed scores whose argmax samples softmax(z / temperature) (Gumbel-max).

    ``exp(z) / (−log u)^T`` with u ~ U[0, 1) in float64 (low-precision Gumbel noise hurts
    MDM generation, arXiv:2409.02908, hence float64 as in the public code). At
    temperature 0 the logits are returned unchanged and no random number is drawn.
    ``z``: (B, L, V) → (B, L, V).
    """
    if temperature == 0:
        return z
    z64 = z.to(torch.float64)
    u = torch.rand(z64.shape, dtype=torch.float64, generator=generator, device=z.device)
    return z64.exp() / (-torch.log(u)) ** temperature


@torch.no_grad()
def llada_generate(model, prompt_ids: Tensor, steps: int, gen_length: int, block_length: int,
                   temperature: float = 0.0, cfg_scale: float = 0.0,
                   remasking: str = "low_confidence", generator: torch.Generator | None = None,
                   record: bool = False, attention_mask: Tensor | None = None):
    """Generate ``gen_length`` tokens after ``prompt_ids`` (B, P) with the LLaDA loop.

    ``steps`` in total, split evenly over the ``gen_length // block_length`` blocks;
    ``temperature`` 0 is greedy; ``cfg_scale`` > 0 enables classifier-free guidance;
    ``remasking`` is ``"low_confidence"`` or ``"random"``; randomness (Gumbel noise at
    temperature > 0, ``random`` scores) is drawn only from ``generator`` (a generator of
    the prompt's device; None draws from torch's default one);
    ``attention_mask`` (B, P) marks real prompt tokens (left padding) and is passed on to
    ``model.logits`` extended over the generated region.

    Returns the final ids (B, P + G), or ``(ids, trace)`` when ``record`` is True.
    """
    for name, v in (("steps", steps), ("gen_length", gen_length), ("block_length", block_length)):
        check_positive_int(name, v)
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length={gen_length} must be a multiple of block_length="
                         f"{block_length}; choose a block_length that divides it")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks "
                         f"gen_length // block_length = {num_blocks}, so each block gets "
                         "the same number of steps")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if temperature < 0 or cfg_scale < 0:
        raise ValueError(f"temperature and cfg_scale must be >= 0, got {temperature}, {cfg_scale}")
    mask_id = int(model.mask_token_id)
    x, attn = init_state(prompt_ids, gen_length, mask_id, attention_mask)  # (B, L)
    B, L = x.shape
    P = L - gen_length
    prompt_index = x != mask_id  # (B, L): the unconditional pass masks all of these
    steps_per_block = steps // num_blocks

    def teacher_logits(x_t: Tensor) -> Tensor:
        """The logits the sampler acts on at state x_t: (B, L) → (B, L, V)."""
        if cfg_scale > 0:
            x_u = x_t.masked_fill(prompt_index, mask_id)  # prompt hidden: unconditional
            attn2 = None if attn is None else torch.cat([attn, attn])  # (2B, L)
            z_c, z_u = model.logits(torch.cat([x_t, x_u]), attention_mask=attn2).chunk(2)
            return z_u + (cfg_scale + 1) * (z_c - z_u)  # (B, L, V)
        return model.logits(x_t, attention_mask=attn)  # (B, L, V)

    rec = TraceRecorder(steps) if record else None
    for blk in range(num_blocks):
        lo, hi = P + blk * block_length, P + (blk + 1) * block_length  # the block [lo, hi)
        A = torch.zeros_like(x, dtype=torch.bool)
        A[:, lo:hi] = True  # (B, L): the active block
        k = llada_transfer_counts((x[:, lo:hi] == mask_id).sum(1), steps_per_block)  # (B, S)
        for i in range(steps_per_block):
            M = x == mask_id  # (B, L): M_t
            z = teacher_logits(x)  # (B, L, V)
            x_hat = torch.argmax(add_gumbel_noise(z, temperature, generator), dim=-1)  # (B, L)
            if remasking == "low_confidence":
                p = torch.softmax(z.to(torch.float64), dim=-1)  # (B, L, V) float64
                c = torch.gather(p, -1, x_hat.unsqueeze(-1)).squeeze(-1)  # (B, L)
            else:
                c = torch.rand((B, L), generator=generator, device=x.device)  # (B, L)
            # only masked positions up to the end of the block may be written; earlier
            # blocks are fully committed, so this is M_t ∩ A_t
            score = c.clone()
            score[:, hi:] = -torch.inf
            score = torch.where(M, score, -torch.inf)  # (B, L)
            x_hat = torch.where(M, x_hat, x)
            F = torch.zeros_like(M)  # (B, L): F_t
            for b in range(B):
                F[b, torch.topk(score[b], k=int(k[b, i])).indices] = True
            if rec is not None:
                rec.step(x, A, k[:, i], F, x_hat, z, c, mask_id)
            x = torch.where(F, x_hat, x)  # commit; a new tensor, the recorded x_t stays
    if rec is None:
        return x
    settings = {"sampler": "llada", "steps": steps, "gen_length": gen_length,
                "block_length": block_length, "temperature": temperature,
                "cfg_scale": cfg_scale, "remasking": remasking,
                "generator_seed": generator_seed(generator)}
    return x, rec.finish(x, P, mask_id, settings, attn, teacher_logits)
