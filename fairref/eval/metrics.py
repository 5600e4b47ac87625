"""The metrics of SPEC §5: reductions over the one teacher-forced loop, or over rollouts.

- :func:`teacher_forced_metrics` — one pass of the teacher-forced loop
  (:func:`~fairref.eval.teacher_forced.iter_trace_states`) over the teacher's recorded
  states gives the **frontier token flip rate** (pooled over (t, i ∈ F_t), also by the
  teacher's probability margin g = p₍₁₎ − p₍₂₎), the **frontier set flip rate** (steps
  with k_t > 0; n/a for rules that are random) and the **masked KL** (float64, nats, over
  M_t ∩ A_t).
- :func:`post_commit_mismatch` — on-policy: the teacher's and the student's own rollouts
  from the same prompts; the fraction of generation positions whose committed token
  differs, and the divergence step. :func:`amplification` divides it by the flip rate.
- :func:`~fairref.eval.stability.stability_lag` (its own file, re-exported here) —
  counterfactual on the teacher's trajectory: re-mask one committed position in a later
  state and ask a model whether it still writes y_i.
- :func:`task_accuracy` — exact match through each task's own checker.

Counting conventions (documented once, here):

- A *problem* is one rollout row of one trace (traces given as a list are concatenated,
  problem ids in order); per-problem numerators and denominators are kept so that
  :func:`~fairref.eval.stats.bootstrap_ci` can resample problems (SPEC §5).
- The teacher's token at (t, i ∈ F_t) is the teacher's argmax recomputed in the same batch
  as the student's; at temperature 0 it is the committed y_i (up to the rounding of a
  different batch composition), and a student identical to the teacher flips nothing.
- argmax ties go to the lowest token id (``torch.argmax``).
- The set rule is the sampler's own, in its own arithmetic (:func:`set_rule`: float64
  softmax for LLaDA, the logits' dtype for Dream) and with its own selection
  (``torch.topk``, :func:`sampler_top_k`). With float64 scores and lowest-position ties
  instead, the shipped toy Dream teacher failed to reproduce its own F_t at 22 of its
  steps (saturated float32 probabilities tie); with the sampler's arithmetic, at none.
  ``teacher_set_mismatch`` counts such steps, so a set flip is the student's doing.

Legend: T steps, B rollouts, L length, V vocabulary, b states in a batch, n slots,
N problems, K margin bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from fairref.diffusion.trace import Trace
from fairref.eval.stability import StabilityLag, stability_lag
from fairref.eval.stats import Survival, kaplan_meier, pooled_rate
from fairref.eval.teacher_forced import (
    DEFAULT_BATCH_SIZE,
    check_teacher_forced,
    iter_trace_states,
)

__all__ = ["MARGIN_EDGES", "SET_RULES", "Accuracy", "Mismatch", "SetRule", "StabilityLag",
           "TeacherForcedMetrics", "amplification", "kl_per_slot", "margin_bin",
           "post_commit_mismatch", "prob_margin", "rule_scores", "sampler_top_k", "set_rule",
           "stability_lag", "task_accuracy", "teacher_forced_metrics"]

#: SPEC §5 bins of the teacher's probability margin g: [0, .1), [.1, .25), [.25, .5), [.5, 1]
MARGIN_EDGES = (0.0, 0.1, 0.25, 0.5, 1.0)
#: the set-flip rules: the sampler's position score as a function of the logits
SET_RULES = ("top1_prob", "margin", "neg_entropy")


# ------------------------------------------------------------------------ pure primitives
@dataclass(frozen=True)
class SetRule:
    """A sampler's deterministic position score, in the sampler's own arithmetic."""

    score: str  # one of SET_RULES
    float64: bool  # True: softmax in float64 (LLaDA); False: in the logits' dtype (Dream)

    def __str__(self) -> str:
        return f"{self.score} ({'float64' if self.float64 else 'logits dtype'})"


def set_rule(settings: dict) -> SetRule | None:
    """The deterministic position score of a trace's sampler, or None when it has none.

    LLaDA ``low_confidence`` ranks by the float64 top-1 probability; Dream ``maskgit_plus``
    by the top-1 probability, ``topk_margin`` by top-1 − top-2, ``entropy`` by
    Σ p log(p + 1e-10), all with the softmax in the logits' dtype as ``sample_tokens`` does.
    None (set flip n/a): LLaDA ``random``, Dream ``origin``, ``alg_temp`` > 0, any
    temperature > 0 (the candidate and its score are sampled), and Dream with top-p/top-k
    filtering (the score is taken on the filtered distribution).
    """
    if settings.get("temperature", 0) > 0:
        return None
    if settings.get("sampler") == "llada":
        low = settings.get("remasking") == "low_confidence"
        return SetRule("top1_prob", float64=True) if low else None
    if settings.get("sampler") == "dream":
        if settings.get("alg_temp") or settings.get("top_k") is not None \
                or settings.get("top_p") not in (None, 1, 1.0):
            return None
        score = {"maskgit_plus": "top1_prob", "topk_margin": "margin",
                 "entropy": "neg_entropy"}.get(settings.get("alg"))
        return None if score is None else SetRule(score, float64=False)
    raise ValueError(f"trace settings name no known sampler (settings['sampler'] = "
                     f"{settings.get('sampler')!r}); record traces with llada_generate or "
                     "dream_generate")


def rule_scores(z: Tensor, rule: SetRule) -> Tensor:
    """The position score of ``rule`` for each row of logits. ``z``: (n, V) → (n,)."""
    p = torch.softmax(z.to(torch.float64) if rule.float64 else z, dim=-1)  # (n, V)
    if rule.score == "top1_prob":
        return p.amax(-1)
    if rule.score == "margin":
        p12 = torch.topk(p, 2, dim=-1).values  # (n, 2)
        return p12[..., 0] - p12[..., 1]
    if rule.score == "neg_entropy":
        return (p * torch.log(p + 1e-10)).sum(-1)
    raise ValueError(f"rule.score must be one of {SET_RULES}, got {rule.score!r}")


def sampler_top_k(score: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """The k most-scored candidates of each row, chosen as the samplers choose them.

    ``torch.topk`` on the row with −inf outside the candidates, exactly as the public
    loops select, so that the teacher's own scores reproduce F_t bit for bit, exact ties
    included (saturated probabilities of 1.0 are common; SPEC §2 leaves tie-breaking to
    torch there). ``score`` (b, L) float, ``candidates`` (b, L) bool, ``k`` (b,) int with
    0 ≤ k ≤ |candidates| → (b, L) bool with k[r] True in row r, all candidates.
    """
    s = torch.where(candidates, score, torch.full_like(score, -torch.inf))  # (b, L)
    sel = torch.zeros_like(candidates)  # (b, L)
    for r in range(s.shape[0]):  # k differs per row (LLaDA's schedule): one topk per row
        sel[r, torch.topk(s[r], int(k[r])).indices] = True
    return sel & candidates


def prob_margin(z: Tensor) -> Tensor:
    """g = p₍₁₎ − p₍₂₎ of softmax(z) in float64. ``z``: (n, V) → (n,)."""
    p12 = torch.topk(torch.softmax(z.to(torch.float64), -1), 2, dim=-1).values  # (n, 2)
    return p12[:, 0] - p12[:, 1]


def kl_per_slot(z_p: Tensor, z_q: Tensor) -> Tensor:
    """KL(softmax z_p ‖ softmax z_q) = Σ p (log_softmax z_p − log_softmax z_q) in float64,
    nats. ``z_p``, ``z_q``: (n, V) → (n,)."""
    lp = torch.log_softmax(z_p.to(torch.float64), -1)  # (n, V)
    lq = torch.log_softmax(z_q.to(torch.float64), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def margin_bin(g: Tensor) -> Tensor:
    """Index of g's SPEC §5 bin (left-closed; the last bin also holds g = 1). (n,) → (n,)."""
    inner = torch.tensor(MARGIN_EDGES[1:-1], dtype=torch.float64)  # (K − 1,)
    return torch.searchsorted(inner, g.to(torch.float64).contiguous(), right=True)


# ------------------------------------------------------------------------ results
@dataclass(frozen=True)
class TeacherForcedMetrics:
    """Per-problem counts of the three teacher-forced metrics (module docstring)."""

    token_flips: np.ndarray  # (N,) flipped frontier slots
    frontier_slots: np.ndarray  # (N,) Σ_t |F_t|
    set_flips: np.ndarray  # (N,) steps whose student set differs from F_t
    set_steps: np.ndarray  # (N,) steps with k_t > 0
    kl_sum: np.ndarray  # (N,) Σ KL over masked active slots
    kl_slots: np.ndarray  # (N,) number of masked active slots
    bin_flips: np.ndarray  # (K,) flips per margin bin (pooled over problems)
    bin_counts: np.ndarray  # (K,) frontier slots per margin bin
    rule: SetRule | None  # the set rule; None: set flip n/a
    teacher_set_mismatch: int  # steps where the rule on the teacher's own logits ≠ F_t

    @property
    def token_flip_rate(self) -> float | None:
        n = self.frontier_slots.sum()
        return float(self.token_flips.sum() / n) if n else None

    @property
    def set_flip_rate(self) -> float | None:
        n = self.set_steps.sum()
        return float(self.set_flips.sum() / n) if self.rule is not None and n else None

    @property
    def masked_kl(self) -> float | None:
        n = self.kl_slots.sum()
        return float(self.kl_sum.sum() / n) if n else None

    def to_dict(self, n_resamples: int = 1000, seed: int = 0) -> dict:
        """JSON-ready: each rate with its 95% bootstrap interval over problems."""
        bins = [{"lo": lo, "hi": hi, "count": int(c), "flips": int(f),
                 "rate": float(f / c) if c else None}
                for lo, hi, c, f in zip(MARGIN_EDGES[:-1], MARGIN_EDGES[1:],
                                        self.bin_counts, self.bin_flips)]
        set_flip = (pooled_rate(self.set_flips, self.set_steps, n_resamples, seed)
                    if self.rule is not None else "n/a")
        return {"n_problems": int(self.frontier_slots.size),
                "frontier_token_flip": pooled_rate(self.token_flips, self.frontier_slots,
                                             n_resamples, seed),
                "frontier_token_flip_by_margin": bins,
                "frontier_set_flip": set_flip,
                "set_rule": None if self.rule is None else str(self.rule),
                "teacher_set_mismatch": self.teacher_set_mismatch,
                "masked_kl": pooled_rate(self.kl_sum, self.kl_slots, n_resamples, seed)}


# ------------------------------------------------------------------------ teacher-forced
def teacher_forced_metrics(teacher, student, traces: Trace | Sequence[Trace],
                           batch_size: int = DEFAULT_BATCH_SIZE) -> TeacherForcedMetrics:
    """Frontier token flips, frontier set flips and masked KL in one pass (SPEC §5).

    Both models run on every recorded state x_t of the teacher's ``traces``
    (:func:`~fairref.eval.teacher_forced.iter_trace_states`); per batch only the slots
    each metric needs are kept. All traces must come from the same sampler rule.
    """
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    if not traces:
        raise ValueError("traces is empty: pass at least one teacher trace")
    rules = set()
    for tr in traces:
        check_teacher_forced(tr)
        rules.add(set_rule(tr.settings))
    if len(rules) > 1:
        raise ValueError(f"traces mix sampler rules {sorted(map(str, rules))}; evaluate each "
                         "setting separately")
    rule = rules.pop()
    offset = np.cumsum([0] + [tr.x.shape[1] for tr in traces])  # problem id of row 0
    N, K = int(offset[-1]), len(MARGIN_EDGES) - 1
    c = {name: np.zeros(N) for name in ("token_flips", "frontier_slots", "set_flips",
                                        "set_steps", "kl_sum", "kl_slots")}
    bin_flips, bin_counts = np.zeros(K, dtype=np.int64), np.zeros(K, dtype=np.int64)
    teacher_mismatch = 0

    def add(name: str, problem: Tensor, values: Tensor) -> None:
        np.add.at(c[name], problem.numpy(), values.to("cpu", torch.float64).numpy())

    # every reduction below reads only the slots it needs, (n, V) rows, never a float64
    # copy of the whole (b, L, V) batch
    for sb in iter_trace_states(teacher, student, traces, batch_size):
        z_T, z_S = sb.teacher.z, sb.student.z  # (b, L, V) each
        F, C = sb.committed, sb.masked & sb.active  # (b, L): F_t and M_t ∩ A_t
        problem = (int(offset[sb.trace]) + sb.row)[:, None].expand(F.shape)  # (b, L) CPU
        F_cpu, C_cpu = F.cpu(), C.cpu()
        # frontier token flips at (t, i ∈ F_t): the student's argmax vs the teacher's
        flipped = (z_S[F].argmax(-1) != z_T[F].argmax(-1)).cpu()  # (n,)
        add("token_flips", problem[F_cpu], flipped)
        add("frontier_slots", problem[F_cpu], torch.ones_like(flipped))
        k_bin = margin_bin(prob_margin(z_T[F]).cpu())  # (n,)
        bin_counts += np.bincount(k_bin.numpy(), minlength=K)
        bin_flips += np.bincount(k_bin[flipped].numpy(), minlength=K)
        # masked KL over M_t ∩ A_t
        add("kl_sum", problem[C_cpu], kl_per_slot(z_T[C], z_S[C]))
        add("kl_slots", problem[C_cpu], torch.ones(int(C_cpu.sum())))
        # frontier set flips: the same rule and k_t on the student's logits
        if rule is not None:
            k = torch.minimum(sb.k, C.sum(-1)).clamp(min=0)  # (b,) Dream's k is batch-averaged
            ok = (k > 0).cpu()  # (b,) steps with a commit count
            s_S, s_T = rule_scores(z_S[C], rule), rule_scores(z_T[C], rule)  # (n,) each
            score_S = torch.full(F.shape, -torch.inf, dtype=s_S.dtype, device=F.device)
            score_T = torch.full(F.shape, -torch.inf, dtype=s_T.dtype, device=F.device)
            score_S[C], score_T[C] = s_S, s_T  # (b, L) each; −inf outside the candidates
            set_flip = (sampler_top_k(score_S, C, k) != F).any(-1).cpu()  # (b,)
            own_flip = (sampler_top_k(score_T, C, k) != F).any(-1).cpu()
            add("set_flips", problem[:, 0][ok], set_flip[ok])
            add("set_steps", problem[:, 0][ok], torch.ones(int(ok.sum())))
            teacher_mismatch += int((own_flip & ok).sum())
    return TeacherForcedMetrics(**c, bin_flips=bin_flips, bin_counts=bin_counts, rule=rule,
                                teacher_set_mismatch=teacher_mismatch)


# ------------------------------------------------------------------------ on-policy
@dataclass(frozen=True)
class Mismatch:
    """Post-commit mismatch and divergence step per problem (SPEC §5)."""

    mismatched: np.ndarray  # (N,) counted positions whose committed tokens differ
    counted: np.ndarray  # (N,) generation positions counted
    divergence_step: np.ndarray  # (N,) first t with x_{t+1} differing; T when censored
    diverged: np.ndarray  # (N,) bool: False = censored at T
    T: int

    @property
    def rate(self) -> float | None:
        n = self.counted.sum()
        return float(self.mismatched.sum() / n) if n else None

    def survival(self) -> Survival:
        """Kaplan–Meier of the divergence step (censored at T)."""
        return kaplan_meier(self.divergence_step, self.diverged)

    def to_dict(self, n_resamples: int = 1000, seed: int = 0) -> dict:
        return {"n_problems": int(self.counted.size), "T": self.T,
                "post_commit_mismatch": pooled_rate(self.mismatched, self.counted,
                                                    n_resamples, seed),
                "diverged": int(self.diverged.sum()),
                "divergence_step_km": self.survival().to_dict()}


def post_commit_mismatch(teacher_trace: Trace, student_trace: Trace,
                         eos_token_id: int | None = None,
                         include_after_eos: bool = False) -> Mismatch:
    """Compare the teacher's and the student's own rollouts from the same prompts (SPEC §5).

    Counted positions: the generation region, without the positions after the teacher's
    first EOS in its final tokens (the EOS itself counts) unless ``include_after_eos``.
    The divergence step is the first t whose x_{t+1} (x_T = the final tokens) differs on a
    counted position; a pair that never differs is censored at T.
    """
    a, b = teacher_trace, student_trace
    if a.x.shape != b.x.shape or a.prompt_len != b.prompt_len:
        raise ValueError(f"the two rollouts differ in shape: teacher (T, B, L) = "
                         f"{tuple(a.x.shape)}, P = {a.prompt_len}; student "
                         f"{tuple(b.x.shape)}, P = {b.prompt_len}; run both with the same "
                         "prompts and sampler settings")
    if not torch.equal(a.x[0], b.x[0]):
        raise ValueError("the two rollouts start from different prompts (x_0 differs)")
    if eos_token_id is None and not include_after_eos:
        raise ValueError("post_commit_mismatch needs eos_token_id to exclude the positions "
                         "after the teacher's EOS; pass it, or include_after_eos=True")
    T, B, L = a.x.shape
    P = a.prompt_len
    counted = torch.zeros(B, L, dtype=torch.bool)
    counted[:, P:] = True  # (B, L): the generation region
    if not include_after_eos:
        is_eos = (a.y == eos_token_id) & counted  # (B, L)
        after = (torch.cumsum(is_eos.to(torch.int64), -1) - is_eos.to(torch.int64)) > 0
        counted &= ~after  # positions strictly after the first EOS leave
    x_next_a = torch.cat([a.x[1:], a.y[None]])  # (T, B, L): x_{t+1}
    x_next_b = torch.cat([b.x[1:], b.y[None]])
    differs = ((x_next_a != x_next_b) & counted).any(-1)  # (T, B)
    diverged = differs.any(0)  # (B,)
    first = torch.where(diverged, differs.to(torch.int64).argmax(0), T)  # (B,)
    return Mismatch(mismatched=((a.y != b.y) & counted).sum(-1).numpy().astype(np.float64),
                    counted=counted.sum(-1).numpy().astype(np.float64),
                    divergence_step=first.numpy(), diverged=diverged.numpy(), T=T)


def amplification(mismatch_rate: float | None, token_flip_rate: float | None) -> float | None:
    """Post-commit mismatch / frontier token flip rate (SPEC §5); None (n/a) when the flip
    rate is 0 or either is undefined."""
    if mismatch_rate is None or not token_flip_rate:
        return None
    return mismatch_rate / token_flip_rate


# ------------------------------------------------------------------------ task accuracy
@dataclass(frozen=True)
class Accuracy:
    """Exact-match correctness per problem (SPEC §5)."""

    correct: np.ndarray  # (N,) bool

    @property
    def rate(self) -> float | None:
        return float(self.correct.mean()) if self.correct.size else None

    def to_dict(self, n_resamples: int = 1000, seed: int = 0) -> dict:
        ones = np.ones(self.correct.size)
        return {"n_problems": int(self.correct.size),
                "accuracy": pooled_rate(self.correct.astype(np.float64), ones,
                                        n_resamples, seed)}


def task_accuracy(problems: Sequence, completions: Sequence[str],
                  check: Callable[[object, str], bool]) -> Accuracy:
    """``check(problem, completion)`` — the task's own parser and exact match — per problem."""
    if len(problems) != len(completions):
        raise ValueError(f"got {len(problems)} problems but {len(completions)} completions; "
                         "pass one completion per problem, in order")
    return Accuracy(correct=np.array([bool(check(p, c)) for p, c in zip(problems, completions)],
                                     dtype=bool))
