"""The SPEC §6 bounds evaluated on a real teacher/student pair over recorded teacher states.

:mod:`fairref.bounds` states each theorem on tensors; this module feeds it what a
quantized diffusion LM actually produces. For every teacher state x_t of a trace
(SPEC §2) both models run on the *same* x_t (teacher-forced, as the frontier metrics of
SPEC §5 are); the final hidden states h (teacher) and h + Δh (student) go through the
teacher's final RMSNorm and head, which quantization leaves in floating point (SPEC §1),
so z = W·RMSNorm_g(h) and z + δ = W·RMSNorm_g(h + Δh) exactly as T2 assumes.

Returned per candidate slot (i ∈ M_t ∩ A_t of every state), all float64:
KL, the T1 bounds and second-order term, the T2 bound and constant, the flip indicator
with its T4 / T4′ terms (on logits and lifted to hidden states), the frontier flag
i ∈ F_t; and per step (k_t > 0) the T4s set-flip indicator and bound.

Also per candidate slot (additive to the list above): the two sides of the T1″ certificate
with its V = Var_p(δ), r₊, r₋ and the stable KL, the reverse KL(q ‖ p), and the Fisher form
½ Var_p(J Δh) (J the Jacobian of the logits in the final hidden state: T2's quadratic
term). :func:`block_errors_on_trace` gives ‖Δh^ℓ‖² after every block ℓ at the same slots
(the per-slot terms of the Stage II objective L_ℓ, SPEC §4.2).

Position mapping: logits at position i come from hidden row i − logit_shift (Dream
predicts i from i − 1), so every quantity is indexed by the position it predicts.

Legend: T steps, B rollouts, L length, S = T·B states, d hidden, V vocabulary,
n candidate slots in total.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fairref.bounds import flip_bounds, hidden_lift_bound, kl_logit_bound, rms_norm, set_flip_bound, spectral_norm
from fairref.bounds import fisher_form, kl_certificate, kl_divergence
from fairref.diffusion.trace import Trace
from fairref.eval.teacher_forced import iter_trace_states


@torch.no_grad()
def bounds_on_trace(teacher, student, trace: Trace, batch_size: int = 256,
                    confidence: str = "top1_prob", keep_logits: bool = False) -> dict[str, Tensor]:
    """Evaluate T1, T2, T4, T4′ per candidate slot and T4s per step on ``trace``'s states.

    ``teacher`` and ``student`` share the architecture and the (full-precision) final norm
    and head; ``confidence`` is the sampler's score for T4s (``"top1_prob"`` for LLaDA
    ``low_confidence`` and Dream ``maskgit_plus``). ``keep_logits=True`` also returns the
    slots' teacher logits ``z`` and perturbations ``delta`` (n, V), for checking other KL
    computations against T1″.
    """
    norm, head = teacher.final_norm_and_head()
    W, g, eps = head.weight.detach(), norm.weight.detach(), float(norm.eps)
    W_norm = spectral_norm(W)
    slots: dict[str, list[Tensor]] = {}
    steps: dict[str, list[Tensor]] = {}

    def put(store, **kv):
        for key, v in kv.items():
            store.setdefault(key, []).append(v.detach().cpu())

    # the one teacher-forced loop: final hidden states of both models on the same x_t,
    # rows aligned to the positions they predict (Dream predicts i from i − 1)
    for sb in iter_trace_states(teacher, student, trace, batch_size, logits=False,
                                hidden=True):
        h = sb.teacher.h.to(torch.float64)  # (b, L, d)
        dh = sb.student.h.to(torch.float64) - h  # (b, L, d)
        z = rms_norm(h, g, eps) @ W.T.to(torch.float64)  # (b, L, V) teacher logits
        delta = rms_norm(h + dh, g, eps) @ W.T.to(torch.float64) - z  # (b, L, V)
        c = sb.masked & sb.active  # (b, L): M_t ∩ A_t, the candidate slots
        t1 = kl_logit_bound(z[c], delta[c])  # per slot (n_b,)
        t2 = hidden_lift_bound(h[c], dh[c], W, g, eps, W_norm=W_norm)
        fl = flip_bounds(z[c], delta[c])
        lifted = torch.where(fl.m > 0, 2 * t2.L**2 * (dh[c] ** 2).sum(-1) / fl.m**2,
                             torch.ones_like(fl.m)).clamp(max=1.0)
        put(slots, kl=t1.measured, t1_l2=t1.bound_l2, t1_range=t1.bound_range,
            second_order=t1.second_order, t2_bound=t2.bound, t2_L=t2.L,
            t2_bound_global=t2.bound_global, flipped=fl.flipped, g=fl.g, m=fl.m, t4=fl.t4,
            t4_prime=fl.t4_prime, t4_via_t1=fl.t4_via_t1, t4_prime_hidden=lifted, frontier=sb.committed[c],
            dh2=(dh[c] ** 2).sum(-1))
        cert = kl_certificate(z[c], delta[c])  # T1″: lower ≤ KL ≤ upper
        put(slots, t1pp_lower=cert.lower, t1pp_upper=cert.upper, t1pp_kl=cert.kl,
            var_p=cert.var, r_plus=cert.r_plus, r_minus=cert.r_minus,
            kl_reverse=kl_divergence(z[c] + delta[c], z[c]),
            fisher=fisher_form(h[c], dh[c], W, g, eps))
        if keep_logits:
            put(slots, z=z[c], delta=delta[c])
        # T4s per state: confidences over the L slots, −inf outside M_t ∩ A_t
        p_t = torch.softmax(z, -1)  # (b, L, V)
        p_s = torch.softmax(z + delta, -1)
        conf_t = torch.where(c, p_t.amax(-1), torch.full_like(p_t[..., 0], float("-inf")))
        conf_s = torch.where(c, p_s.amax(-1), torch.full_like(p_s[..., 0], float("-inf")))
        kl_full = torch.zeros_like(conf_t)  # (b, L) zero outside the candidate slots
        kl_full[c] = t1.measured.clamp(min=0.0)
        # k_t, capped at the candidates left: Dream's count is batch-averaged, so a row whose
        # model wrote the mask token itself (untrained models only) can have fewer
        kb = torch.minimum(sb.k, c.sum(-1))
        ok = kb > 0  # steps with a commit count (Dream `origin` has none: k = −1)
        if ok.any():
            r = set_flip_bound(conf_t[ok], kl_full[ok], kb[ok], conf_student=conf_s[ok],
                               confidence=confidence)
            put(steps, set_flipped=r.flipped, set_bound=r.bound, set_bound_max=r.bound_max,
                gap=r.gap)
    out = {key: torch.cat(v) for key, v in slots.items()}
    out.update({key: torch.cat(v) for key, v in steps.items()})
    return out


@torch.no_grad()
def block_errors_on_trace(teacher, student, trace: Trace, batch_size: int = 256) -> Tensor:
    """‖Δh^ℓ‖² after every block ℓ at the candidate slots of ``trace``: (n, N), rows in the
    slot order of :func:`bounds_on_trace`, from the hidden row that predicts each slot
    (Dream: i − 1). Both models run on the same teacher states x_t."""
    T, B, L = trace.x.shape
    x = trace.x.reshape(T * B, L)  # (S, L)
    cand = (trace.masked & trace.active).reshape(T * B, L)  # (S, L) M_t ∩ A_t
    am = None if trace.attention_mask is None else trace.attention_mask.repeat(T, 1)
    out = []
    for s0 in range(0, T * B, batch_size):
        sl = slice(s0, s0 + batch_size)
        mask_b = None if am is None else am[sl]
        hs = [torch.stack(m.forward_hidden(x[sl], mask_b)[1:]).to(torch.float64)
              for m in (teacher, student)]  # (N, b, L, d) each: block outputs 1..N
        dhs = hs[1] - hs[0]
        if teacher.logit_shift:
            dhs = torch.cat([dhs[:, :, :1], dhs[:, :, :-1]], dim=2)  # row i predicts i
        out.append((dhs[:, cand[sl]] ** 2).sum(-1).T)  # (n_b, N)
    return torch.cat(out)
