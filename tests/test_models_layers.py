"""The shared pieces of SPEC §2: RoPE, RMSNorm, the key padding mask, and meta-device loading.

Legend: L sequence length, hd head size."""

import json
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from fairref.models import load, random_model
from fairref.models.config import config_from_dict
from fairref.models.layers import apply_rope, key_padding_mask, rms_norm, rope_cos_sin

DATA = Path(__file__).parent / "models"


@given(seed=st.integers(0, 2**31 - 1), hd=st.sampled_from([2, 4, 8, 16]),
       theta=st.sampled_from([10.0, 10000.0, 500000.0, 1e6]), shift=st.integers(1, 20))
def test_rope_scores_depend_only_on_relative_position(seed, hd, theta, shift):
    """⟨R_p q, R_s k⟩ = ⟨R_{p+c} q, R_{s+c} k⟩: the property RoPE exists for. float64;
    the angles differ by rounding only (|p·ω| ≤ 40), so 1e-9 bounds the mismatch."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, 1, hd, generator=g, dtype=torch.float64), \
        torch.randn(1, 1, 1, hd, generator=g, dtype=torch.float64)
    L = 21 + shift
    cos, sin = rope_cos_sin(L, hd, theta, "cpu", torch.float64)
    rq = apply_rope(q.expand(1, 1, L, hd), cos, sin, in_float32=True)[0, 0]  # (L, hd)
    rk = apply_rope(k.expand(1, 1, L, hd), cos, sin, in_float32=True)[0, 0]  # (L, hd)
    p, s = 3, 17
    torch.testing.assert_close(rq[p] @ rk[s], rq[p + shift] @ rk[s + shift], rtol=0, atol=1e-9)
    # and a rotation preserves the norm
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(L), rtol=1e-12, atol=0)


def test_rope_position_zero_is_the_identity():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    cos, sin = rope_cos_sin(5, 8, 1e6, "cpu", torch.float64)
    assert torch.equal(apply_rope(x, cos, sin, in_float32=True)[:, :, 0], x[:, :, 0])


def test_bfloat16_rope_precision_follows_each_public_model():
    """LLaDA (rope_full_precision) rotates in float32 and rounds once; Dream rounds cos/sin
    to bf16 and rotates in bf16. Both are checked against those two recipes written out."""
    x = torch.randn(1, 2, 64, 16).to(torch.bfloat16)
    cos, sin = rope_cos_sin(64, 16, 500000.0, "cpu")
    half = lambda t: torch.cat([-t[..., 8:], t[..., :8]], -1)  # noqa: E731
    llada = (x.float() * cos + half(x.float()) * sin).to(torch.bfloat16)
    cb, sb = cos.to(torch.bfloat16), sin.to(torch.bfloat16)
    dream = x * cb + half(x) * sb
    assert torch.equal(apply_rope(x, cos, sin, in_float32=True), llada)
    assert torch.equal(apply_rope(x, cos, sin, in_float32=False), dream)
    assert not torch.equal(llada, dream)  # the distinction is real at this size


def test_rms_norm_rounds_to_bfloat16_before_the_weight():
    """Both public RMSNorms: normalise in float32, cast to the input dtype, then × weight."""
    x = torch.randn(4, 64).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(64)).to(torch.bfloat16)
    x32 = x.float()
    ref = w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(rms_norm(x, w, 1e-6), ref)


def test_all_true_padding_mask_is_the_unmasked_path():
    assert key_padding_mask(torch.ones(2, 5, dtype=torch.bool), 2, 5) is None
    m = torch.tensor([[True, True, False]])
    assert key_padding_mask(m, 1, 3).shape == (1, 1, 1, 3)


def test_load_never_initialises_real_tensors(tmp_path, monkeypatch):
    """load() builds on the meta device: every Linear/Embedding init it triggers touches
    meta tensors only, so an 8B model is never randomly initialised in memory first."""
    raw = {**json.loads((DATA / "llada-8b-instruct.config.json").read_text()),
           "d_model": 16, "n_heads": 2, "n_kv_heads": 2, "n_layers": 1, "mlp_hidden_size": 24,
           "vocab_size": 20, "embedding_size": 20, "mask_token_id": 19}
    model = random_model(config_from_dict(raw), seed=0)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    devices = []
    for cls in (nn.Linear, nn.Embedding):
        orig = cls.reset_parameters
        monkeypatch.setattr(cls, "reset_parameters",
                            lambda self, _o=orig: (devices.append(self.weight.device.type), _o(self)))
    loaded = load(tmp_path)
    assert devices and set(devices) == {"meta"}
    assert all(p.device.type == "cpu" for p in loaded.parameters())
