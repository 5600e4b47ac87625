"""The position prior π of Stage I and the token weights it gives Stage II (SPEC §3.3, §3.4).

From the per-rollout statistics of ``probe.py`` (h_j, ρ_j):

    H_j = mean_r h_j,   R_j = 1 − mean_r ρ_j,
    u_j = λ · H_j / mean(H) + (1 − λ) · R_j / mean(R)     (a term of mean 0 → 1),
    π_j = clip(a · u_j, π_min, π_max),  a > 0 by bisection so that mean_j π_j = 1.

f(a) = mean clip(a·u) is continuous and non-decreasing, f(0) = π_min ≤ 1, and for a ≥ a_hi =
π_max / min_{u>0} u it is the largest mean reachable; a root exists iff f(a_hi) ≥ 1. When
none exists (many u_j = 0) π = u / mean(u), with a warning: the only case in which π may
leave [π_min, π_max]. A constant u gives π ≡ 1, set directly (no bisection, so it is exact).
The bisection halves [0, a_hi] until its ends are adjacent floats, so mean(π) = 1 up to the
float64 rounding of a·u and of the mean (bound stated in tests/test_fair_prior.py).

Token weights (§3.4), per hidden-state ROW of a calibration state x_t (S, L):
w = π_(i−P) · (1 + γ · 1[i ∈ B_t]) at generated positions i, π_prompt at prompt positions;
with ``logit_shift`` = 1 (Dream) row i carries the weight of position i + 1, the last row and
a row whose successor is padding get π_prompt; padded rows get 0.

Legend: G generation length, S calibration states, L = P + G.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fairref.diffusion.generate import SamplerSettings
from fairref.files import write_atomic, write_text_atomic
from fairref.fair.probe import PHI_KINDS, RELIABILITY_KINDS, ProbeResult, probe

FORMAT, VERSION = "fairref.prior", 1
#: the config fields that need a new probe to change (the rest re-derive π from H, R)
PROBE_FIELDS = ("beta", "phi", "m_min", "window", "reliability")


@dataclass(frozen=True)
class PriorConfig:
    """Stage I options (SPEC §3); each default is the SPEC's."""

    beta: float = 1.0  # §3.1: band = F_t + the next ⌈β·k_t⌉ candidates
    phi: str = "inverse_square"  # §3.1: φ(m) = 1/max(m, m_min)², or "one" (plain hits)
    m_min: float = 0.05  # §3.1: margin floor inside φ
    window: int = 4  # §3.2: W, the last steps before the commit that ρ averages
    reliability: str = "soft"  # §3.2: "soft" mean p_t(y) or "hard" fraction argmax = y
    lam: float = 0.5  # §3.3: λ, the weight of the frontier term in u
    pi_min: float = 0.25  # §3.3: lower clip of π
    pi_max: float = 4.0  # §3.3: upper clip of π
    pi_prompt: float = 1.0  # §3.3: weight of prompt positions
    gamma: float = 1.0  # §3.4: extra weight (1 + γ) of a position while in the band B_t

    def __post_init__(self) -> None:
        def finite(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"PriorConfig.{name} must be a finite number, got {v!r}")
        for name in ("beta", "m_min", "lam", "pi_min", "pi_max", "pi_prompt", "gamma"):
            finite(name)
        checks = [
            (self.beta > 0, "beta must be > 0"),
            (self.phi in PHI_KINDS, f"phi must be one of {PHI_KINDS}"),
            (self.m_min > 0, "m_min must be > 0"),
            (isinstance(self.window, int) and not isinstance(self.window, bool)
             and self.window >= 1, "window must be an int >= 1"),
            (self.reliability in RELIABILITY_KINDS,
             f"reliability must be one of {RELIABILITY_KINDS}"),
            (0 <= self.lam <= 1, "lam must lie in [0, 1]"),
            (0 < self.pi_min <= 1 <= self.pi_max, "need 0 < pi_min <= 1 <= pi_max"),
            (self.pi_prompt >= 0, "pi_prompt must be >= 0"),
            (self.gamma >= 0, "gamma must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"PriorConfig: {msg} (got {self})")


# ------------------------------------------------------------------------- §3.3 math


def mix_terms(H: Tensor, R: Tensor, lam: float) -> Tensor:
    """u = λ·H/mean(H) + (1−λ)·R/mean(R), a term of mean 0 replaced by 1: (G,) float64."""
    def normalized(v: Tensor) -> Tensor:
        mean = v.mean()
        return torch.ones_like(v) if mean == 0 else v / mean
    H, R = H.to(torch.float64), R.to(torch.float64)
    return lam * normalized(H) + (1 - lam) * normalized(R)


def unit_mean_clip(u: Tensor, pi_min: float, pi_max: float) -> tuple[Tensor, float | None]:
    """π = clip(a·u, π_min, π_max) with mean(π) = 1, and a (None when not bisected).

    ``u``: (G,) float64, finite, ≥ 0. Constant u → π ≡ 1 exactly; no root → u/mean(u) and
    a warning (module docstring)."""
    u = u.to(torch.float64)
    if u.dim() != 1 or u.numel() == 0:
        raise ValueError(f"u must be a non-empty (G,) vector, got shape {tuple(u.shape)}")
    if not torch.isfinite(u).all() or (u < 0).any():
        raise ValueError("u must be finite and >= 0")
    if (u == u[0]).all():
        return torch.ones_like(u), None

    def mean_pi(a: float) -> float:
        return float((a * u).clamp(pi_min, pi_max).mean())

    a_hi = pi_max / float(u[u > 0].min())  # every positive u_j is clipped at π_max here
    if mean_pi(a_hi) < 1:
        zeros = int((u == 0).sum())
        warnings.warn(f"prior: {zeros} of {u.numel()} positions have u = 0, so no clip "
                      f"scale reaches mean(pi) = 1 within [{pi_min}, {pi_max}]; using "
                      "pi = u / mean(u)", stacklevel=2)
        return u / u.mean(), None
    lo, hi = 0.0, a_hi  # invariant: mean_pi(lo) < 1 <= mean_pi(hi) (or lo = 0)
    while True:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:  # adjacent floats: the bracket cannot shrink further
            break
        if mean_pi(mid) < 1:
            lo = mid
        else:
            hi = mid
    a = min((lo, hi), key=lambda s: (abs(mean_pi(s) - 1), -s)) if lo > 0 else hi
    return (a * u).clamp(pi_min, pi_max), a


def estimate_prior(model, prompt_ids: Tensor, settings: SamplerSettings,
                   config: PriorConfig = PriorConfig(), *, rollouts: int = 1, seed: int = 0,
                   attention_mask: Tensor | None = None, batch_size: int | None = None
                   ) -> tuple["Prior", ProbeResult]:
    """Stage I end to end: probe the teacher with ``config``'s §3.1–3.2 options, then
    build the prior (§3.3). Returns the prior and the probe (its traces feed §4.1)."""
    result = probe(model, prompt_ids, settings, beta=config.beta, phi=config.phi,
                   m_min=config.m_min, window=config.window,
                   reliability_kind=config.reliability, rollouts=rollouts, seed=seed,
                   attention_mask=attention_mask, batch_size=batch_size)
    return Prior.from_probe(result, config), result


# ------------------------------------------------------------------------- §3.4 weights


def row_weights(pi: Tensor, band: Tensor, prompt_len: int, *, pi_prompt: float = 1.0,
                gamma: float = 1.0, logit_shift: int = 0,
                attention_mask: Tensor | None = None) -> Tensor:
    """Token weights per hidden-state row (SPEC §3.4): ``(S, L)`` float64 on ``band``'s
    device (computed on the CPU, where the prior lives, then moved).

    ``pi`` (G,), ``band`` (S, L) bool: B_t of each state's step; ``attention_mask`` (S, L)
    (True = real token) or None; ``logit_shift`` as ``model.logit_shift`` (0 or 1)."""
    S, L = band.shape
    P, G = prompt_len, pi.numel()
    if L != P + G:
        raise ValueError(f"band has L={L} positions but prompt_len + len(pi) = {P + G}")
    if logit_shift not in (0, 1):
        raise ValueError(f"logit_shift must be 0 or 1, got {logit_shift!r}")
    if not gamma >= 0 or not pi_prompt >= 0:
        raise ValueError(f"gamma and pi_prompt must be >= 0, got {gamma!r}, {pi_prompt!r}")
    real = (torch.ones(S, L, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(torch.bool).cpu())  # (S, L)
    if tuple(real.shape) != (S, L):
        raise ValueError(f"attention_mask must be {(S, L)}, got {tuple(real.shape)}")
    pos_w = torch.full((S, L), float(pi_prompt), dtype=torch.float64)  # (S, L) per position
    device, band, pi = band.device, band.cpu(), pi.cpu()
    pos_w[:, P:] = pi.to(torch.float64) * (1 + gamma * band[:, P:].to(torch.float64))
    if logit_shift == 1:
        # hidden row i predicts position i + 1: the last row predicts nothing, and a row
        # whose successor is padding predicts nothing real
        succ = torch.full((S, L), float(pi_prompt), dtype=torch.float64)  # (S, L)
        succ[:, :-1] = torch.where(real[:, 1:], pos_w[:, 1:], float(pi_prompt))
        pos_w = succ
    return torch.where(real, pos_w, 0.0).to(device)


# ------------------------------------------------------------------------- the prior


@dataclass(frozen=True, eq=False)
class Prior:
    """π over the G generation positions, its inputs and provenance (SPEC §3.3)."""

    pi: Tensor  # (G,) float64
    H: Tensor  # (G,) float64: mean fragility-weighted frontier hits
    R: Tensor  # (G,) float64: 1 − mean reliability
    hits: Tensor  # (G,) float64: mean plain band hits per rollout (NaN: not recorded)
    margin_mean: Tensor  # (G,) float64: mean logit margin while in the band (NaN: never)
    config: PriorConfig
    settings: SamplerSettings  # the sampler the rollouts used
    seeds: tuple  # generator seed per repeat (None: deterministic sampler)
    prompt_count: int  # calibration prompts probed
    scale: float | None = None  # the bisected a (None: π ≡ 1 or the u/mean(u) fallback)
    shuffle_seed: int | None = None  # set by shuffled()

    @classmethod
    def from_stats(cls, H: Tensor, R: Tensor, config: PriorConfig = PriorConfig(),
                   **meta) -> "Prior":
        """π from H and R (§3.3). ``meta``: the remaining fields (hits, margin_mean, ...)."""
        H, R = H.to(torch.float64), R.to(torch.float64)
        pi, a = unit_mean_clip(mix_terms(H, R, config.lam), config.pi_min, config.pi_max)
        G = H.numel()
        nan = torch.full((G,), math.nan, dtype=torch.float64)
        meta.setdefault("hits", nan)
        meta.setdefault("margin_mean", nan)
        meta.setdefault("settings", SamplerSettings())
        meta.setdefault("seeds", ())
        meta.setdefault("prompt_count", 0)
        return cls(pi=pi, H=H, R=R, config=config, scale=a, **meta)

    @classmethod
    def from_probe(cls, result: ProbeResult, config: PriorConfig = PriorConfig()) -> "Prior":
        """Average the per-rollout statistics of a probe (§3.3); its options must be
        ``config``'s §3.1–3.2 fields."""
        for name in PROBE_FIELDS:
            if result.options[name] != getattr(config, name):
                raise ValueError(f"the probe ran with {name}={result.options[name]!r} but "
                                 f"config has {getattr(config, name)!r}; probe again with "
                                 "the config's options")
        hits = result.hits.to(torch.float64)
        n_hits = hits.sum(0)  # (G,)
        margin_mean = torch.where(n_hits > 0, result.margin_sum.sum(0) / n_hits, math.nan)
        return cls.from_stats(result.h.mean(0), 1 - result.rho.mean(0), config,
                              hits=hits.mean(0), margin_mean=margin_mean,
                              settings=result.settings, seeds=tuple(result.seeds),
                              prompt_count=int(result.prompt_index.max()) + 1)

    # --- variants (SPEC §4.4 ablations and control) ---------------------------------------
    def replace(self, **changes) -> "Prior":
        """The prior with §3.3–3.4 options changed, π re-derived from the same H and R."""
        bad = [k for k in changes if k in PROBE_FIELDS]
        if bad:
            raise ValueError(f"{bad} change the probe statistics: run a new probe")
        config = dataclasses.replace(self.config, **changes)
        keep = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("pi", "H", "R", "config", "scale")}
        return Prior.from_stats(self.H, self.R, config, **keep)

    def frontier_only(self) -> "Prior":
        """Ablation λ = 1: π from the frontier hits alone (§4.4)."""
        return self.replace(lam=1.0)

    def reliability_only(self) -> "Prior":
        """Ablation λ = 0: π from the masked-stage reliability alone (§4.4)."""
        return self.replace(lam=0.0)

    def no_frontier_emphasis(self) -> "Prior":
        """Ablation γ = 0: no extra weight while a position is in the band (§4.4)."""
        return self.replace(gamma=0.0)

    def shuffled(self, seed: int = 0) -> "Prior":
        """The control of §4.4: π (with H, R and the summaries) permuted over positions by
        ``torch.randperm`` under a generator seeded ``seed``."""
        perm = torch.randperm(self.pi.numel(), generator=torch.Generator().manual_seed(seed))
        return dataclasses.replace(self, pi=self.pi[perm], H=self.H[perm], R=self.R[perm],
                                   hits=self.hits[perm], margin_mean=self.margin_mean[perm],
                                   shuffle_seed=seed)

    def token_weights(self, states, *, logit_shift: int, gamma: float | None = None) -> Tensor:
        """:func:`token_weights` with this prior."""
        return token_weights(self, states, logit_shift=logit_shift, gamma=gamma)

    # --- file I/O -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        def vec(v: Tensor) -> list:
            return [None if math.isnan(x) else x for x in v.tolist()]
        return {"format": FORMAT, "version": VERSION, "gen_length": self.pi.numel(),
                "config": dataclasses.asdict(self.config),
                "sampler": dataclasses.asdict(self.settings), "seeds": list(self.seeds),
                "prompt_count": self.prompt_count, "scale": self.scale,
                "shuffle_seed": self.shuffle_seed,
                **{k: vec(getattr(self, k)) for k in ("pi", "H", "R", "hits", "margin_mean")}}

    def save(self, path: str | Path) -> None:
        """Write one JSON file, atomically (a temporary file, then ``os.replace``)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        write_text_atomic(path, text)

    @classmethod
    def load(cls, path: str | Path) -> "Prior":
        """Read a file written by :meth:`save`; every key, type and length is checked."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no prior file at {path}")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e}); re-create it with Prior.save") from e
        return cls._from_dict(raw, str(path))

    @classmethod
    def _from_dict(cls, raw, where: str) -> "Prior":
        def fail(msg):
            raise ValueError(f"{where}: {msg}; re-create the file with Prior.save")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            fail(f"not a {FORMAT} file")
        if raw.get("version") != VERSION:
            fail(f"version {raw.get('version')!r}, this reader knows {VERSION}")
        keys = ("gen_length", "config", "sampler", "seeds", "prompt_count", "scale",
                "shuffle_seed", "pi", "H", "R", "hits", "margin_mean")
        missing = [k for k in keys if k not in raw]
        if missing:
            fail(f"missing keys {missing}")
        G = raw["gen_length"]
        if not isinstance(G, int) or G < 1:
            fail(f"gen_length must be an int >= 1, got {G!r}")
        vecs = {}
        for k in ("pi", "H", "R", "hits", "margin_mean"):
            v = raw[k]
            if not isinstance(v, list) or len(v) != G:
                fail(f"key {k!r} must be a list of gen_length={G} numbers")
            nullable = k in ("hits", "margin_mean")  # NaN (unknown / never) as null
            if not all((x is None and nullable) or (isinstance(x, (int, float))
                       and not isinstance(x, bool)) for x in v):
                fail(f"key {k!r} holds a non-number")
            vecs[k] = torch.tensor([math.nan if x is None else x for x in v],
                                   dtype=torch.float64)
        try:
            config = PriorConfig(**raw["config"])
            settings = SamplerSettings(**raw["sampler"])
        except (TypeError, ValueError) as e:
            fail(f"bad config or sampler: {e}")
        if not isinstance(raw["seeds"], list) or not isinstance(raw["prompt_count"], int):
            fail("seeds must be a list and prompt_count an int")
        return cls(config=config, settings=settings, seeds=tuple(raw["seeds"]),
                   prompt_count=raw["prompt_count"], scale=raw["scale"],
                   shuffle_seed=raw["shuffle_seed"], **vecs)

    # --- figure ---------------------------------------------------------------------------
    def plot(self, path: str | Path, title: str | None = None) -> None:
        """π, H/mean(H) and R/mean(R) over the generation positions j, saved to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        j = list(range(self.pi.numel()))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for v, label, style in ((self.pi, "π (prior)", "-o"),
                                (_unit_mean(self.H), "H / mean(H)  frontier hits", "--s"),
                                (_unit_mean(self.R), "R / mean(R)  1 − reliability", ":^")):
            ax.plot(j, v.tolist(), style, label=label, markersize=4)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("generation position j = i − P")
        ax.set_ylabel("relative weight (mean 1)")
        c = self.config
        ax.set_title(title or f"Stage I prior (λ={c.lam}, β={c.beta}, φ={c.phi}, "
                     f"W={c.window}, {self.prompt_count} prompts)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        try:
            write_atomic(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:] or "png"))
        finally:
            plt.close(fig)


def token_weights(prior: Prior, states, *, logit_shift: int, gamma: float | None = None
                  ) -> Tensor:
    """Stage II weights (SPEC §3.4) of calibration ``states`` (a ``states.CalibStates``: its
    band B_t, prompt length and attention mask) under ``prior``: ``(S, L)`` float64 per
    hidden-state row. ``logit_shift``: the model's (Dream 1); ``gamma`` None: the config's."""
    return row_weights(prior.pi, states.band, states.prompt_len,
                       pi_prompt=prior.config.pi_prompt,
                       gamma=prior.config.gamma if gamma is None else gamma,
                       logit_shift=logit_shift, attention_mask=states.attention_mask)


def _unit_mean(v: Tensor) -> Tensor:
    m = v.mean()
    return torch.ones_like(v) if m == 0 else v / m
