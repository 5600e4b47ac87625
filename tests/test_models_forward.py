"""Forward pass of LLaDA and Dream (SPEC §2): oracle parity, bidirectionality, padding, the
Dream shift, block-wise composition, GQA, and quantizer-swappable linears.

Legend: B batch, L sequence length, d hidden size, V vocabulary rows, hd head size."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fairref.models import DreamModel, LLaDAModel, MaskedDiffusionLM, config_from_dict, random_model
from tiny import tiny_raw

def tiny_config(arch: str, **over):
    return config_from_dict({**tiny_raw(arch), **over})


def tiny_model(arch: str, dtype=torch.float64, seed=0, std=0.3, **over):
    # std 0.3 (not 0.02) so attention is far from uniform and every term of the block
    # contributes visibly to the logits; otherwise an oracle mismatch could hide in noise
    return random_model(tiny_config(arch, **over), seed=seed, dtype=dtype, std=std).eval()


def ids(B=2, L=9, V=40, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


# --- independent oracle: float64, explicit loops, written from the SPEC text ------------


def _rms(x, w, eps):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _rope(x, theta):
    """x (L, hd): rotate pair (j, j + hd/2) at position p by p * theta^(-2j/hd)."""
    L, hd = x.shape
    out = x.clone()
    for p in range(L):
        for j in range(hd // 2):
            a = p * theta ** (-2.0 * j / hd)
            c, s = math.cos(a), math.sin(a)
            x1, x2 = x[p, j], x[p, j + hd // 2]
            out[p, j], out[p, j + hd // 2] = x1 * c - x2 * s, x2 * c + x1 * s
    return out


def _attend(xn, W, cfg, key_ok):
    """Multi-head bidirectional attention for one sequence xn (L, d), explicit softmax."""
    H, Hk, hd, theta = cfg["H"], cfg["Hk"], cfg["hd"], cfg["theta"]
    q = xn @ W["q"].T + W.get("qb", 0)
    k = xn @ W["k"].T + W.get("kb", 0)
    v = xn @ W["v"].T + W.get("vb", 0)
    heads = []
    for h in range(H):
        g = h // (H // Hk)  # the kv head serving query head h
        qh = _rope(q[:, h * hd:(h + 1) * hd], theta)
        kh = _rope(k[:, g * hd:(g + 1) * hd], theta)
        vh = v[:, g * hd:(g + 1) * hd]
        s = torch.einsum("id,jd->ij", qh, kh) / math.sqrt(hd)  # (L, L), no causal mask
        s = s.masked_fill(~key_ok[None, :], float("-inf"))
        p = torch.exp(s - s.max(-1, keepdim=True).values)
        heads.append((p / p.sum(-1, keepdim=True)) @ vh)
    return torch.cat(heads, -1) @ W["o"].T


def oracle_logits(model, x, key_ok=None):
    """Logits (B, L, V) recomputed from the state dict alone."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    c = model.config
    if isinstance(model, LLaDAModel):
        pre, n = "model.transformer.", c.n_layers
        cfg = dict(H=c.n_heads, Hk=c.kv_heads, hd=c.head_dim, theta=c.rope_theta)
        names = dict(emb=pre + "wte.weight", blk=pre + "blocks.{}.", n1="attn_norm", n2="ff_norm",
                     q="q_proj", k="k_proj", v="v_proj", o="attn_out", gate="ff_proj",
                     up="up_proj", down="ff_out", fn=pre + "ln_f.weight", head=pre + "ff_out.weight")
    else:
        n = c.num_hidden_layers
        cfg = dict(H=c.num_attention_heads, Hk=c.num_key_value_heads, hd=c.head_dim, theta=c.rope_theta)
        names = dict(emb="model.embed_tokens.weight", blk="model.layers.{}.", n1="input_layernorm",
                     n2="post_attention_layernorm", q="self_attn.q_proj", k="self_attn.k_proj",
                     v="self_attn.v_proj", o="self_attn.o_proj", gate="mlp.gate_proj",
                     up="mlp.up_proj", down="mlp.down_proj", fn="model.norm.weight",
                     head="lm_head.weight")
    eps = c.rms_norm_eps
    out = []
    for b in range(x.shape[0]):
        ok = torch.ones(x.shape[1], dtype=torch.bool) if key_ok is None else key_ok[b]
        h = sd[names["emb"]][x[b]]  # (L, d)
        for i in range(n):
            P = names["blk"].format(i)
            W = {t: sd[P + names[t] + ".weight"] for t in ("q", "k", "v", "o")}
            W.update({t + "b": sd[P + names[t] + ".bias"] for t in ("q", "k", "v")
                      if P + names[t] + ".bias" in sd})
            h = h + _attend(_rms(h, sd[P + names["n1"] + ".weight"], eps), W, cfg, ok)
            m = _rms(h, sd[P + names["n2"] + ".weight"], eps)
            g, u = m @ sd[P + names["gate"] + ".weight"].T, m @ sd[P + names["up"] + ".weight"].T
            h = h + (g * torch.sigmoid(g) * u) @ sd[P + names["down"] + ".weight"].T
        z = _rms(h, sd[names["fn"]], eps) @ sd[names["head"]].T  # (L, V), row i from state i
        if isinstance(model, DreamModel):  # Dream: position i is predicted by state i-1
            z = torch.cat([z[:1], z[:-1]])
        out.append(z)
    return torch.stack(out)


ARCHS = ["llada", "dream"]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_slow_float64_oracle(arch):
    """Same math as the oracle written from SPEC §2. Tolerance: both sides run in float64
    over ~10^3 operations per logit, so disagreement from summation order is ~1e-13; 1e-9
    is far below any real bug (a wrong sign, scale or layout moves logits by >1e-2)."""
    model = tiny_model(arch)
    x = ids()
    z = model.logits(x)
    ref = oracle_logits(model, x)
    assert z.shape == ref.shape
    assert ref.abs().max() > 1e-2  # the comparison is not vacuous
    torch.testing.assert_close(z, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_oracle_with_padding_mask(arch):
    model = tiny_model(arch)
    x = ids(L=8)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 5:] = False
    torch.testing.assert_close(model.logits(x, mask), oracle_logits(model, x, mask), rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_float32_model_is_close_to_float64_oracle(arch):
    """The production dtype: float32 rounding (~6e-8 relative per op, logits ~O(1), a
    few hundred accumulations) stays below 1e-4."""
    model = tiny_model(arch, dtype=torch.float32)
    x = ids()
    torch.testing.assert_close(model.logits(x).double(), oracle_logits(model, x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_changing_a_later_token_changes_earlier_logits(arch):
    """Bidirectional attention: position 0 sees the last token (a causal model would not)."""
    model = tiny_model(arch)
    x = ids(B=1, L=8)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 40
    diff = (model.logits(x) - model.logits(y))[0, :-1].abs().amax(-1)  # (L-1,)
    # Dream's position 0 and 1 both read state 0, which still sees the last token
    assert bool((diff > 1e-6).all())


@pytest.mark.parametrize("arch", ARCHS)
def test_appending_padding_leaves_real_token_logits_unchanged(arch):
    """Padded keys get −inf, so real rows cannot see what is appended. float64: the only
    difference is summing exact zeros, tolerance 1e-12."""
    model = tiny_model(arch)
    x = ids(B=2, L=7)
    pad = torch.full((2, 5), 3, dtype=torch.long)
    mask = torch.cat([torch.ones(2, 7, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)], 1)
    z_pad = model.logits(torch.cat([x, pad], 1), mask)[:, :7]
    torch.testing.assert_close(z_pad, model.logits(x), rtol=0, atol=1e-12)
    # and the padding really is visible without the mask (the test can fail)
    assert (model.logits(torch.cat([x, pad], 1))[:, :7] - model.logits(x)).abs().max() > 1e-6


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_run_block_embed_head_compose_to_logits_exactly(arch, with_mask):
    model = tiny_model(arch, dtype=torch.float32)
    x = ids(L=10)
    mask = None
    if with_mask:
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[1, 6:] = False
    h = model.embed(x)
    states = [h]
    for i in range(len(model.blocks)):
        h = model.run_block(i, h, mask)
        states.append(h)
    from fairref.models import shift_head_logits
    assert torch.equal(model.logits(x, mask), shift_head_logits(model.head(h), model.logit_shift))
    hidden = model.forward_hidden(x, mask)
    assert len(hidden) == len(model.blocks) + 1
    assert all(torch.equal(a, b) for a, b in zip(hidden, states))


def test_dream_logits_row_i_is_head_row_i_minus_1():
    """Dream's state i predicts token i+1; logits() must shift (SPEC §2). Fails without it."""
    model = tiny_model("dream")
    x = ids()
    z = model.head(model.forward_hidden(x)[-1])  # (B, L, V) unshifted
    logits = model.logits(x)
    assert model.logit_shift == 1
    assert torch.equal(logits[:, 1:], z[:, :-1])
    assert torch.equal(logits[:, 0], z[:, 0])  # position 0 reuses row 0, as the public loop
    assert not torch.allclose(logits, z)


def test_llada_logits_are_unshifted():
    model = tiny_model("llada")
    x = ids()
    assert model.logit_shift == 0
    assert torch.equal(model.logits(x), model.head(model.forward_hidden(x)[-1]))


def test_gqa_equals_explicitly_repeated_kv_heads():
    """Dream with Hk < H equals the same model with each kv head copied for its query group
    (kv head g serves query heads g*r .. g*r+r-1)."""
    gqa = tiny_model("dream")  # H=4, Hk=2
    full = random_model(dataclasses.replace(gqa.config, num_key_value_heads=4), seed=9,
                        dtype=torch.float64)
    r, hd = 2, gqa.config.head_dim
    sd = dict(gqa.state_dict())
    for name, t in list(sd.items()):
        if ".k_proj." in name or ".v_proj." in name:
            heads = t.reshape(2, hd, *t.shape[1:])  # (Hk, hd, ...)
            sd[name] = heads.repeat_interleave(r, dim=0).reshape(4 * hd, *t.shape[1:])
    full.load_state_dict(sd)
    x = ids()
    torch.testing.assert_close(full.logits(x), gqa.logits(x), rtol=0, atol=1e-12)
    # GQA on LLaDA too (the 8B model has none, but the config allows it)
    llada = tiny_model("llada", n_kv_heads=2)
    torch.testing.assert_close(llada.logits(x), oracle_logits(llada, x), rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_linear_groups_reach_every_linear_of_a_block(arch):
    """Each name is an nn.Linear via get_submodule, and the groups cover all of them."""
    model = tiny_model(arch)
    assert isinstance(model, MaskedDiffusionLM)
    names = [n for g in model.linear_groups() for n in g]
    assert len(model.linear_groups()) == 4
    for block in model.blocks:
        assert all(isinstance(block.get_submodule(n), nn.Linear) for n in names)
        assert sorted(names) == sorted(n for n, m in block.named_modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_sites_name_the_norm_that_feeds_each_linear(arch):
    """Folding ζ into a site (norm weight g ⊘ ζ, each fed linear's W diag ζ) leaves the
    block's output unchanged — the identity SmoothQuant relies on (SPEC §4.4). With ζ a
    power of two per channel both scalings are exact in float, so the output must be
    bit-identical; a site naming the wrong norm or missing a linear breaks it."""
    model = tiny_model(arch)
    x = ids()
    h = model.embed(x)  # (B, L, d)
    before = model.run_block(0, h)
    block = model.blocks[0]
    sites = model.norm_sites()
    fed = {n for _, lins in sites for n in lins}
    grouped = [n for g in model.linear_groups() for n in g]
    assert fed <= set(grouped) and len(sites) == 2
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm, lins in sites:
            g = block.get_submodule(norm).weight
            zeta = torch.pow(2.0, torch.randint(-3, 4, g.shape, generator=gen)).to(g.dtype)
            g.div_(zeta)
            for n in lins:
                block.get_submodule(n).weight.mul_(zeta)  # W diag ζ: column j times ζ_j
    assert torch.equal(model.run_block(0, h), before)
    with torch.no_grad():  # the check can fail: scale one fed linear only
        block.get_submodule(sites[0][1][0]).weight.mul_(2.0)
    assert not torch.equal(model.run_block(0, h), before)


class _Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("arch", ARCHS)
def test_swapped_linear_is_the_one_the_forward_calls(arch):
    """A quantizer replaces a linear by name; the forward must then call the replacement."""
    model = tiny_model(arch)
    x = ids()
    before = model.logits(x)
    wrappers = []
    for block in model.blocks:
        for name in (n for g in model.linear_groups() for n in g):
            parent, _, leaf = name.rpartition(".")
            owner = block.get_submodule(parent) if parent else block
            w = _Counting(getattr(owner, leaf))
            setattr(owner, leaf, w)
            wrappers.append(w)
    assert torch.equal(model.logits(x), before)
    assert all(w.calls == 1 for w in wrappers)


@pytest.mark.parametrize("bad,match", [
    (torch.ones(2, 5, dtype=torch.bool), "shape"),
    (torch.ones(2, 9, dtype=torch.long), "bool"),
    (torch.tensor([[True] * 9, [False] * 9]), "no real token"),
])
def test_malformed_attention_mask_is_an_error(bad, match):
    model = tiny_model("llada")
    with pytest.raises(ValueError, match=match):
        model.logits(ids(), bad)


@given(arch=st.sampled_from(ARCHS), L=st.integers(1, 8), n_pad=st.integers(1, 6),
       B=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_any_appended_padding_is_invisible_to_real_tokens(arch, L, n_pad, B, seed):
    """Property form of the padding test, down to a single real token (L=1) and padding
    longer than the sequence; padded ids include the mask id. float64, tolerance 1e-12."""
    model = _MODELS[arch]
    x = ids(B=B, L=L, seed=seed)
    pad = ids(B=B, L=n_pad, seed=seed + 1)
    pad[:, 0] = model.mask_token_id % 40
    mask = torch.cat([torch.ones(B, L, dtype=torch.bool), torch.zeros(B, n_pad, dtype=torch.bool)], 1)
    z_pad = model.logits(torch.cat([x, pad], 1), mask)[:, :L]
    torch.testing.assert_close(z_pad, model.logits(x), rtol=0, atol=1e-12)


_MODELS = {a: tiny_model(a) for a in ARCHS}
