"""fairref.bounds_check.block_errors_on_trace: ‖Δh^ℓ‖² after every block at the candidate
slots, in bounds_on_trace's slot order (the per-block table of paper_repro/theory_bounds)."""

import copy

import pytest
import torch

from fairref.bounds_check import block_errors_on_trace, bounds_on_trace
from fairref.diffusion import dream_generate, llada_generate
from fairref.fair import CalibConfig, quantize_model
from fairref.models import random_model
from tiny import tiny_config

V = 20


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_last_block_error_is_bounds_check_dh2_slot_for_slot(arch):
    """Column N equals bounds_on_trace's ‖Δh‖² at every slot (same rows, same Dream shift),
    and an unquantized student gives exactly 0 at every block."""
    cfg = tiny_config(arch, V, mask=V - 1, eos=V - 2, pad=V - 2, L_max=32)
    teacher = random_model(cfg, seed=0, std=0.3).eval()
    student = copy.deepcopy(teacher)
    prompts = torch.randint(0, V - 2, (5, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if arch == "llada":
            _, trace = llada_generate(teacher, prompts, 6, 12, 6, record=True)
        else:
            _, trace = dream_generate(teacher, prompts, 6, 12, record=True)
    assert torch.equal(block_errors_on_trace(teacher, student, trace),
                       torch.zeros(int((trace.masked & trace.active).sum()), len(teacher.blocks),
                                   dtype=torch.float64))
    quantize_model(student, config=CalibConfig(solver="rtn"))
    # the same batches as bounds_on_trace: the float32 forward (and W4A4's activation
    # rounding) then sees identical inputs, so the two agree bit for bit
    D = block_errors_on_trace(teacher, student, trace)  # (n, N)
    r = bounds_on_trace(teacher, student, trace)
    assert D.shape == (r["dh2"].numel(), len(teacher.blocks))
    assert torch.equal(D[:, -1], r["dh2"])
    assert (D > 0).all()
