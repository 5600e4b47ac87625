"""Stage II solver (d): learnable "flat" block calibration (SPEC §4.3(d)).

After FlatQuant (arXiv 2410.09426; ``FlatCalibration``). Each of the four input
sites of a block (the shared input of q, k, v; of o; of gate, up; of down) gets a learnable
Kronecker transform P = P_l ⊗ P_r (``fairref.quant.transform``), a smoothing ζ (initialized
by SmoothQuant, α = ½, from the site's inputs) and an activation clip sigmoid(η_a); each
linear a per-output-channel weight clip sigmoid(η_w), η = 4 at the start. The block runs
with every linear computing

    Q_a((x ⊘ ζ) P; sigmoid(η_a)) · Q_w(W diag(ζ) P⁻ᵀ; sigmoid(η_w))ᵀ + b,

where Q is the §1 fake quantizer with a straight-through estimator on ``round`` only
(``fake_quantize_ste``: amax, clamp, ⊘ and ⊗ are differentiated). At the q/k/v and gate/up
sites ζ is folded into the RMSNorm that feeds them (weight g ⊘ ζ) already during training,
so the training forward *is* the exported forward, bit for bit. All sites are trained
jointly on the weighted loss Σ_{n∈batch} w_n ‖Y_n − Block_Q(X_n)‖² / (|batch| · w̄) with
AdamW (weight decay 0), a per-batch cosine schedule and batches in a seeded order.
Afterwards ``export`` replaces each linear by a quantized linear that reads its input
through a ``KroneckerTransform`` (weights by RTN with the learned clips, or by GPTQ) and
writes a JSON-able description for the checkpoint.

Legend: B states, L length, d hidden, K a site's input features, N output channels,
n_l × n_r the Kronecker factors, G = K/g weight groups.
Written from SPEC §4.3 and the FlatQuant paper; not diffed against FlatQuant's code (the
differences of that code are listed in SPEC §4.3d). Checked by tests/test_fair_solvers.py:
the STE quantizer's forward equals ``grid.fake_quantize`` bit for bit, and the exported
block equals the trained fake-quant block bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairref.models.layers import RMSNorm, rms_norm
from fairref.quant.gptq import gptq_quantize
from fairref.quant.grid import QuantSpec, fake_quantize, quantize
from fairref.quant.hessian import HessianAccumulator
from fairref.quant.linear import QuantLinear
from fairref.quant.rotation import RotationKind
from fairref.quant.smooth import (activation_absmax, fold_into_norm, fold_into_weight,
                                  smooth_factors)
from fairref.quant.transform import (KroneckerTransform, direct_inv_t, factor, factor_init,
                                     factor_inv_t, kron_apply, kronecker_sizes, skew)

# --- the differentiable fake quantizer ---------------------------------------------------------


class _RoundSTE(torch.autograd.Function):
    """round half to even forward; ∂round/∂u := 1 backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:
        return torch.round(u)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def fake_quantize_ste(x: Tensor, spec: QuantSpec, clip: Tensor) -> Tensor:
    """§1 symmetric fake quantization of x with a tensor clip ratio, differentiable (SPEC §4.3d).

    The forward value equals ``grid.fake_quantize(x, spec, clip=clip)`` bit for bit (same
    float32 operations in the same order); only ∂round/∂u is replaced by 1. Granularity
    'token' (clip a scalar), 'channel' (clip (N, 1) or scalar) or 'group' (clip (N, 1)).
    """
    if not spec.symmetric:
        raise ValueError("the flat solver trains symmetric grids only (SPEC §1 integer path); "
                         "use symmetric=True")
    if spec.granularity == "group":
        xg = x.reshape(*x.shape[:-1], x.shape[-1] // spec.group_size, spec.group_size)  # (N, G, g)
        c = clip.unsqueeze(-1) if clip.ndim else clip  # (N, 1, 1): one ratio per channel
    elif spec.granularity in ("token", "channel"):
        xg, c = x, clip  # (..., K): the last axis shares one scale
    else:
        raise ValueError(f"fake_quantize_ste supports granularity 'token', 'channel' or "
                         f"'group', got {spec.granularity!r}")
    amax = xg.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    s = (c * amax) / torch.tensor(spec.scale_divisor, dtype=torch.float32)
    s = torch.where(s == 0, torch.ones_like(s), s)  # all-zero row/token: s = 1, q = 0
    q = torch.clamp(_RoundSTE.apply(xg / s), spec.qmin, spec.qmax)  # true division
    return (q * s).reshape(x.shape)


# --- (d) flat: settings, the learnable site, the training linear -------------------------------


@dataclass(frozen=True)
class FlatConfig:
    """Settings of solver (d) (SPEC §4.3d). Defaults as in the SPEC."""

    epochs: int = 15  # passes over the calibration states
    batch: int = 4  # calibration states (sequences) per optimizer step
    lr: float = 5e-3  # AdamW learning rate of A_U, A_V, θ and ζ
    lr_clip: float = 5e-2  # AdamW learning rate of the clip logits η
    lr_min_ratio: float = 1e-3  # the cosine schedule ends at lr_min_ratio · lr
    eta_init: float = 4.0  # η at the start: clip = sigmoid(4) ≈ 0.982, as FlatQuant
    alpha: float = 0.5  # SmoothQuant migration strength of the ζ init (FlatQuant's code: 0.3)
    smooth: bool = True  # learn ζ; False keeps ζ ≡ 1 (no smoothing)
    inverse: Literal["cayley", "direct"] = "cayley"  # factor parametrization (SPEC §4.3d)
    weight_solver: Literal["rtn", "gptq"] = "rtn"  # final weights: RTN with learned clips, or (a)
    fp_inputs: bool = False  # FlatQuant's option: train on full-precision-path inputs
    keep_best: bool = True  # evaluate L_ℓ after each epoch and keep the best (init included)
    seed: int = 0  # seed of the batch order

    def __post_init__(self) -> None:
        for name in ("epochs", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"FlatConfig.{name} must be a {'non-negative' if name == 'epochs' else 'positive'} "
                                 f"int, got {v!r}")
        for name in ("lr", "lr_clip", "lr_min_ratio"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"FlatConfig.{name} must be a finite number > 0, got {v!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"FlatConfig.alpha must be in [0, 1], got {self.alpha!r}")
        if self.inverse not in ("cayley", "direct"):
            raise ValueError(f"FlatConfig.inverse must be 'cayley' or 'direct', got {self.inverse!r}")
        if self.weight_solver not in ("rtn", "gptq"):
            raise ValueError(f"FlatConfig.weight_solver must be 'rtn' or 'gptq', got {self.weight_solver!r}")


class _Site(nn.Module):
    """The learnable parameters of one input site: P's factors, ζ and the activation clip."""

    def __init__(self, K: int, zeta: Tensor | None, rotation: RotationKind | None, seed: int,
                 cfg: FlatConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.K, self.direct = K, cfg.inverse == "direct"
        self.n_l, self.n_r = kronecker_sizes(K)
        for side, n in (("l", self.n_l), ("r", self.n_r)):
            B = factor_init(n, rotation, seed).to(device)  # (n, n) §1 rotation, or I
            if self.direct:  # FlatQuant's "direct inverse": the factor itself is learned
                setattr(self, f"M_{side}", nn.Parameter(B.clone()))
            else:
                self.register_buffer(f"B_{side}", B)
                setattr(self, f"A_U_{side}", nn.Parameter(torch.zeros(n, n, device=device)))
                setattr(self, f"A_V_{side}", nn.Parameter(torch.zeros(n, n, device=device)))
                setattr(self, f"theta_{side}", nn.Parameter(torch.zeros(n, device=device)))
        self.zeta = None if zeta is None else nn.Parameter(zeta.clone())  # (K,)
        self.eta_a = nn.Parameter(torch.tensor(cfg.eta_init, dtype=torch.float32,
                                               device=device))
        #: within one block forward the site's linears share one evaluation of the factors
        #: (``FlatCalibration._run`` opens and clears it); None: compute on every call
        self.cache: list | None = None

    def factors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(P_l, P_r, P_l⁻ᵀ, P_r⁻ᵀ) as the current float32 values."""
        if self.cache:
            return self.cache[0]
        out = []
        for side in ("l", "r"):
            if self.direct:
                M = getattr(self, f"M_{side}")
                out.append((M, direct_inv_t(M)))
            else:
                args = (getattr(self, f"B_{side}"), skew(getattr(self, f"A_U_{side}")),
                        getattr(self, f"theta_{side}"), skew(getattr(self, f"A_V_{side}")))
                out.append((factor(*args), factor_inv_t(*args)))
        (P_l, P_l_it), (P_r, P_r_it) = out
        if self.cache is not None:
            self.cache.append((P_l, P_r, P_l_it, P_r_it))
        return P_l, P_r, P_l_it, P_r_it


class _FlatLinear(nn.Module):
    """A linear during training: Q_a((x ⊘ ζ) P) · Q_w(W diag(ζ) P⁻ᵀ)ᵀ + b with STE rounding."""

    def __init__(self, lin: nn.Linear, site: _Site, folded: bool, w_spec: QuantSpec,
                 a_spec: QuantSpec | None, eta_init: float) -> None:
        super().__init__()
        self.register_buffer("W", lin.weight.detach().to(torch.float32).clone())  # (N, K)
        self.register_buffer("bias", None if lin.bias is None else lin.bias.detach().to(torch.float32).clone())
        self.site = [site]  # a list, so the shared site is not registered as a child
        self.folded, self.w_spec, self.a_spec = folded, w_spec, a_spec
        self.eta_w = nn.Parameter(torch.full((lin.out_features, 1), float(eta_init),
                                             device=lin.weight.device))  # (N, 1)

    def forward(self, x: Tensor) -> Tensor:
        site = self.site[0]
        P_l, P_r, P_l_it, P_r_it = site.factors()
        x, W = x.to(torch.float32), self.W
        if site.zeta is not None:
            W = fold_into_weight(W, site.zeta)  # W diag(ζ)
            if not self.folded:
                x = x / site.zeta  # ζ applied at run time (o, down)
        xt = kron_apply(x, P_l, P_r)  # (..., K) (x ⊘ ζ) P
        if self.a_spec is not None:
            xt = fake_quantize_ste(xt, self.a_spec, torch.sigmoid(site.eta_a))
        W_hat = fake_quantize_ste(kron_apply(W, P_l_it, P_r_it), self.w_spec,
                                  torch.sigmoid(self.eta_w))  # (N, K)
        return F.linear(xt, W_hat, self.bias)


class _FoldedNorm(nn.Module):
    """An RMSNorm whose weight is g ⊘ ζ, ζ learnable: the folded forward during training."""

    def __init__(self, norm: RMSNorm, site: _Site) -> None:
        super().__init__()
        self.norm, self.site = norm, [site]

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, fold_into_norm(self.norm.weight.detach(), self.site[0].zeta), self.norm.eps)


# --- (d) flat: one block ------------------------------------------------------------------------


def _replace(block: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(block.get_submodule(parent_name) if parent_name else block, attr, new)


class FlatCalibration:
    """Solver (d) on one block: install the learnable sites, ``train()``, ``export()`` (SPEC §4.3d).

    ``block`` is modified in place. ``groups`` are the linear groups of SPEC §4.2 (one site
    each, ``model.linear_groups()``); ``run(h, mask)`` runs *this* block (with whatever
    modules it holds now) on h (b, L, d) with the matching (b, L) attention mask or None.
    X (B, L, d) are the block's calibration inputs, Y (B, L, d) its full-precision targets,
    w (B, L) the token weights (None: w ≡ 1; padding rows must already be 0).
    ``rotation`` chooses B of each factor (§1 rotation of the factor's size, or I for None).

    ζ initialization: SmoothQuant (α = ``config.alpha``) from each site's inputs when the
    still full-precision block reads X, over the rows of positive weight, and the site's
    concatenated weights. A site is fed by an RMSNorm when all its linears read that norm's
    output tensor itself; ζ is then folded into the norm (training and export alike).
    """

    def __init__(self, block: nn.Module, groups: Sequence[Sequence[str]],
                 run: Callable[[Tensor, Tensor | None], Tensor], X: Tensor, Y: Tensor,
                 w: Tensor | None, attention_mask: Tensor | None, w_spec: QuantSpec,
                 a_spec: QuantSpec | None, rotation: RotationKind | None = "hadamard",
                 rotation_seed: int = 0, config: FlatConfig = FlatConfig()) -> None:
        if X.ndim != 3 or Y.shape != X.shape:
            raise ValueError(f"X and Y must both be (B, L, d) block inputs/targets, got "
                             f"{tuple(X.shape)} and {tuple(Y.shape)}")
        for name, t in (("w", w), ("attention_mask", attention_mask)):
            if t is not None and tuple(t.shape) != tuple(X.shape[:2]):
                raise ValueError(f"{name} must have shape (B, L) = {tuple(X.shape[:2])}, got {tuple(t.shape)}")
        if w is not None and (not torch.isfinite(w).all() or (w < 0).any()):
            raise ValueError("w must be finite and non-negative")
        if not w_spec.symmetric or w_spec.granularity not in ("channel", "group"):
            raise ValueError(f"the flat solver needs a symmetric per-channel or per-group w_spec, "
                             f"got symmetric={w_spec.symmetric}, granularity={w_spec.granularity!r}")
        if a_spec is not None and (not a_spec.symmetric or a_spec.granularity != "token"):
            raise ValueError(f"the flat solver needs a symmetric per-token a_spec (or None), got "
                             f"symmetric={a_spec.symmetric}, granularity={a_spec.granularity!r}")
        odd = sorted({str(p.dtype).replace("torch.", "") for p in block.parameters()
                      if p.is_floating_point() and p.dtype != torch.float32})
        if odd:
            raise ValueError(f"the flat solver trains float32 blocks; this block holds "
                             f"{', '.join(odd)} weights: load the model in float32 (the "
                             "CLI's default) or use a GPTQ or RTN method")
        self.block, self.groups, self.run = block, [list(g) for g in groups], run
        self.X, self.Y, self.mask = X.to(torch.float32), Y.to(torch.float32), attention_mask
        self.w = None if w is None else w.to(torch.float64)  # (B, L) raw weights
        w64 = (torch.ones(X.shape[:2], dtype=torch.float64, device=X.device) if w is None
               else self.w)
        w_bar = float(w64.mean())  # w̄ over all calibration rows
        if not w_bar > 0:
            raise ValueError("w is zero on every row: there is nothing to calibrate on")
        # w / w̄ in float64, rounded once: w = c·1 gives exactly 1.0 for any c > 0, and w · 2^k
        # gives exactly the same values, so such rescalings train bit-identically.
        self.w_hat = (w64 / w_bar).to(torch.float32)  # (B, L)
        self.w_spec, self.a_spec, self.config = w_spec, a_spec, config
        self.history: list[float] = []  # L_ℓ at init and after each epoch (keep_best)
        self.best_epoch = 0
        self._frozen = [p for p in block.parameters() if p.requires_grad]
        for p in self._frozen:  # the model's own weights are constants here
            p.requires_grad_(False)
        norm_names, absmax = self._inspect()
        self.norm_names = norm_names  # per site: the RMSNorm ζ folds into, or None
        self.sites: list[_Site] = []
        self.linears: dict[str, _FlatLinear] = {}
        for gi, group in enumerate(self.groups):
            lins = [block.get_submodule(n) for n in group]
            zeta = None
            if config.smooth:
                Wcat = torch.cat([l.weight.detach().to(torch.float32) for l in lins])  # (ΣN, K)
                zeta = smooth_factors(absmax[gi], Wcat, config.alpha)  # (K,)
            site = _Site(lins[0].in_features, zeta, rotation, rotation_seed, config,
                         self.X.device)  # trained beside X
            self.sites.append(site)
            folded = zeta is not None and norm_names[gi] is not None
            for n, lin in zip(group, lins):
                fl = _FlatLinear(lin, site, folded, w_spec, a_spec, config.eta_init)
                self.linears[n] = fl
                _replace(block, n, fl)
            if folded:
                _replace(block, norm_names[gi], _FoldedNorm(block.get_submodule(norm_names[gi]), site))

    @torch.no_grad()
    def _inspect(self) -> tuple[list[str | None], list[Tensor]]:
        """One full-precision pass on X: the norm feeding each site and each site's max|X_j|."""
        norm_out: dict[str, Tensor] = {}
        inputs: dict[str, Tensor] = {}
        hooks = []
        for name, m in self.block.named_modules():
            if isinstance(m, RMSNorm):
                hooks.append(m.register_forward_hook(
                    lambda _m, _a, out, name=name: norm_out.__setitem__(name, out)))
        for name in (n for g in self.groups for n in g):
            hooks.append(self.block.get_submodule(name).register_forward_pre_hook(
                lambda _m, a, name=name: inputs.__setitem__(name, a[0])))
        try:
            self.run(self.X, self.mask)
        finally:
            for h in hooks:
                h.remove()
        names, absmax = [], []
        for group in self.groups:
            x = inputs[group[0]]  # (B, L, K)
            shared = all(inputs[n] is x for n in group)
            names.append(next((n for n, o in norm_out.items() if o is x), None) if shared else None)
            absmax.append(activation_absmax(x, self.w))  # (K,) over rows with w > 0
        return names, absmax

    def _run(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """The block on h, each site's factors evaluated once for all its linears."""
        for site in self.sites:
            site.cache = []
        try:
            return self.run(h, mask)
        finally:
            for site in self.sites:
                site.cache = None

    def _params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(A, θ, ζ, direct factors) and (clip logits η)."""
        main, clip = [], []
        for site in self.sites:
            for name, p in site.named_parameters():
                (clip if name == "eta_a" else main).append(p)
        clip += [fl.eta_w for fl in self.linears.values()]
        return main, clip

    @torch.no_grad()
    def loss(self) -> float:
        """L_ℓ = Σ_n w_n ‖Y_n − Block_Q(X_n)‖² / Σ_n w_n on all of X (SPEC §4.2).

        Computed in float64 with the normalized weights w / w̄ of the training loss, so that
        rescaling w (by any constant on w ≡ c, by powers of two otherwise) selects the same
        best epoch bit for bit.
        """
        err = (self.Y - self._run(self.X, self.mask).float()).square().sum(-1)  # (B, L)
        w = self.w_hat.to(torch.float64)
        return float((w * err.to(torch.float64)).sum() / w.sum())

    def batch_loss(self, idx: Tensor) -> Tensor:
        """Σ_{n∈batch} w_n ‖Y_n − Block_Q(X_n)‖² / (|batch| · w̄) for the states ``idx``.

        |batch| counts the rows (states × L) of the batch and w̄ is the mean weight over all
        calibration rows, so over an epoch of equal batches the losses average to L_ℓ; there
        is no self-normalization, so a batch of light rows weighs less (SPEC §4.3d).
        """
        Yq = self._run(self.X[idx], None if self.mask is None else self.mask[idx])
        e = (self.Y[idx] - Yq).square().sum(-1)  # (b, L) ‖Y_n − Block_Q(X_n)‖²
        return (self.w_hat[idx] * e).sum() / e.numel()

    def train(self) -> list[float]:
        """Train all sites jointly (SPEC §4.3d); returns L_ℓ at init and after each epoch.

        With ``keep_best`` the parameters of the epoch with the lowest L_ℓ (the
        initialization included) are restored at the end, so training never ends worse
        than its start.
        """
        cfg = self.config
        main, clip = self._params()
        opt = torch.optim.AdamW([{"params": main, "lr": cfg.lr}, {"params": clip, "lr": cfg.lr_clip}],
                                weight_decay=0.0)
        B = self.X.shape[0]
        steps = cfg.epochs * math.ceil(B / cfg.batch)
        r = cfg.lr_min_ratio
        # cosine from lr to r·lr over all steps, the same factor for both groups
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: r + (1 - r) * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))))
        gen = torch.Generator().manual_seed(cfg.seed)
        params = main + clip
        best, best_state = math.inf, None
        if cfg.keep_best:
            best = self.loss()
            best_state = [p.detach().clone() for p in params]
            self.history.append(best)
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(B, generator=gen)  # (B,) the seeded batch order
            for i in range(0, B, cfg.batch):
                idx = order[i:i + cfg.batch]
                with torch.enable_grad():
                    loss = self.batch_loss(idx)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                sched.step()
            if cfg.keep_best:
                L = self.loss()
                self.history.append(L)
                if L < best:
                    best, self.best_epoch = L, epoch
                    best_state = [p.detach().clone() for p in params]
        if best_state is not None:
            with torch.no_grad():
                for p, v in zip(params, best_state):
                    p.copy_(v)
        return self.history

    @torch.no_grad()
    def export(self, gptq: dict | None = None) -> dict:
        """Replace the training modules by exported ones; return the JSON-able description.

        Per site, in the order of ``groups``: ζ is folded into the feeding RMSNorm (g ⊘ ζ)
        or kept in the transform (x ⊘ ζ at run time); each linear becomes
        a ``QuantLinear`` holding the site's ``KroneckerTransform`` with Ŵ = RTN of
        W diag(ζ) P⁻ᵀ at the learned clips, or GPTQ (``weight_solver="gptq"``, keyword
        arguments ``gptq`` for ``gptq_quantize``) on the inputs the exported earlier sites
        produce. The activation clip becomes the QuantLinear's ``a_spec.clip``.
        """
        cfg, sites_desc = self.config, []
        for site, group, norm_name in zip(self.sites, self.groups, self.norm_names):
            P_l, P_r, P_l_it, P_r_it = site.factors()
            zeta = None if site.zeta is None else site.zeta.detach().clone()
            folded = zeta is not None and norm_name is not None
            T = KroneckerTransform(P_l, P_r, P_l_it, P_r_it, None if folded else zeta)
            c_a = float(torch.sigmoid(site.eta_a))
            a_spec = None if self.a_spec is None else dataclasses.replace(self.a_spec, clip=c_a)
            xs = self._capture(group) if cfg.weight_solver == "gptq" else {}
            desc = {"linears": group, "K": site.K, "n_l": site.n_l, "n_r": site.n_r,
                    "P_l": T.P_l.tolist(), "P_r": T.P_r.tolist(),
                    "zeta": None if zeta is None else zeta.tolist(),
                    "zeta_folded_into": norm_name if folded else None,
                    "act_clip": None if a_spec is None else c_a, "weight_clip": {}}
            if folded:
                fn = self.block.get_submodule(norm_name)
                norm = fn.norm
                norm.weight.copy_(fold_into_norm(norm.weight.detach(), zeta))  # g ⊘ ζ
                _replace(self.block, norm_name, norm)
                desc["norm_weight"] = norm.weight.detach().tolist()
            for name in group:
                fl = self.linears[name]
                W = fold_into_weight(fl.W, zeta) if folded else fl.W  # (N, K)
                Wt = T.apply_weight(W)  # (N, K) W diag(ζ) P⁻ᵀ
                c_w = torch.sigmoid(fl.eta_w).detach()  # (N, 1)
                if cfg.weight_solver == "rtn":
                    q, s, z = quantize(Wt, self.w_spec, clip=c_w, name=f"{name}.weight")
                else:
                    xt = T.apply(xs[name])  # (B, L, K) as the exported linear sees it
                    if a_spec is not None:
                        xt = fake_quantize(xt, a_spec, name=f"{name} input")
                    H = HessianAccumulator(site.K).add(xt, None if self.w is None else self.w.reshape(-1)).H
                    res = gptq_quantize(Wt, H, self.w_spec, clip=c_w, **(gptq or {}))
                    q, s, z = res.q, res.scale, res.zero
                ql = QuantLinear.from_quantized(q, s, z, self.w_spec, a_spec, bias=fl.bias,
                                                transform=T)
                _replace(self.block, name, ql)
                desc["weight_clip"][name] = c_w.reshape(-1).tolist()
            sites_desc.append(desc)
        for p in self._frozen:
            p.requires_grad_(True)
        return {"solver": "flat", "settings": dataclasses.asdict(cfg),
                "loss_history": list(self.history), "best_epoch": self.best_epoch,
                "sites": sites_desc}

    def _capture(self, group: list[str]) -> dict[str, Tensor]:
        """The raw inputs of the group's linears when the block (partly exported) reads X."""
        seen: dict[str, Tensor] = {}
        hooks = [self.block.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, n=n: seen.__setitem__(n, a[0].detach())) for n in group]
        try:
            self.run(self.X, self.mask)
        finally:
            for h in hooks:
                h.remove()
        return seen


def flat_block(block: nn.Module, groups: Sequence[Sequence[str]],
               run: Callable[[Tensor, Tensor | None], Tensor], X: Tensor, Y: Tensor,
               w: Tensor | None, attention_mask: Tensor | None, w_spec: QuantSpec,
               a_spec: QuantSpec | None, rotation: RotationKind | None = "hadamard",
               rotation_seed: int = 0, config: FlatConfig = FlatConfig(),
               gptq: dict | None = None) -> dict:
    """Solver (d) on one block, in place: install, train, export; returns the description."""
    cal = FlatCalibration(block, groups, run, X, Y, w, attention_mask, w_spec, a_spec,
                          rotation, rotation_seed, config)
    cal.train()
    desc = cal.export(gptq)
    desc["rotation"] = {"kind": rotation, "seed": rotation_seed}
    return desc
