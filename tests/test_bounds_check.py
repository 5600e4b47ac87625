"""SPEC §6 on real model pairs: every bound holds at every candidate slot of teacher states
when the student is an int4-quantized copy of the teacher (fairref.bounds_check)."""

import copy

import pytest
import torch

from fairref.bounds_check import bounds_on_trace
from fairref.diffusion import dream_generate, llada_generate
from fairref.fair import CalibConfig, quantize_model
from fairref.models import random_model
from tiny import tiny_config

V = 20
# float64 rounding of a KL built from O(10) logits: ~1e-15 absolute; 1e-12 leaves margin
# without hiding any real violation (the bounds' values here are ≥ 1e-6).
ATOL = 1e-12


def _pair(arch):
    cfg = tiny_config(arch, V, mask=V - 1, eos=V - 2, pad=V - 2, L_max=32)
    teacher = random_model(cfg, seed=0, std=0.3).eval()
    student = copy.deepcopy(teacher)
    quantize_model(student, config=CalibConfig(solver="rtn"))
    return teacher, student


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_every_bound_holds_on_every_slot_of_a_quantized_pair(arch):
    teacher, student = _pair(arch)
    prompts = torch.randint(0, V - 2, (6, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if arch == "llada":
            _, trace = llada_generate(teacher, prompts, 6, 12, 6, record=True)
        else:
            _, trace = dream_generate(teacher, prompts, 6, 12, record=True)
    r = bounds_on_trace(teacher, student, trace)
    n_slots = int((trace.masked & trace.active).sum())
    assert r["kl"].shape == (n_slots,)
    assert (r["kl"] > 0).all()  # int4 really perturbs every slot: the checks below bite
    assert (r["kl"] <= r["t1_l2"] + ATOL).all()  # T1
    assert (r["kl"] <= r["t1_range"] + ATOL).all()
    assert (r["kl"] <= r["t2_bound"] + ATOL).all()  # T2
    assert (r["t2_bound"] <= r["t2_bound_global"] + ATOL).all()
    f = r["flipped"].double()
    assert (f <= r["t4"] + ATOL).all() and (f <= r["t4_prime"] + ATOL).all()  # T4, T4′
    assert (r["t4_prime"] <= r["t4_prime_hidden"] + ATOL).all()  # T4′ lifted by T2
    assert (r["set_flipped"].double() <= r["set_bound"] + ATOL).all()  # T4s
    in_slots = trace.committed & trace.masked & trace.active  # F_t among the slots
    assert int(r["frontier"].sum()) == int(in_slots.sum())
