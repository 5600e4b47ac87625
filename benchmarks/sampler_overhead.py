"""How much time the LLaDA sampler spends outside the model (SPEC §2 samplers).

Runs ``llada_generate`` on a small random LLaDA (d = 256, 4 layers, vocabulary 40; the
``fairref.models`` architecture, or a stand-in module of the same sizes if that package
is unavailable), gen length 64, batch 8, and times every ``model.logits`` call inside the
run. The sampler's own time is the run's wall time minus the forward time; the last line
prints its ratio to the forward time (target ≤ 0.10). One intra-op thread, so that the
number does not depend on how busy the machine's other cores are.

Usage: ``python benchmarks/sampler_overhead.py [--record]`` (``--record`` also measures a
recorded run, whose trace bookkeeping is reported separately, not in the last line).
"""

from __future__ import annotations

import argparse
import time

import torch

from fairref.diffusion import llada_generate

D, LAYERS, VOCAB, MASK = 256, 4, 40, 39  # model size: d, blocks, V, mask id
B, P, G, BLOCK, STEPS = 8, 16, 64, 32, 64  # batch, prompt, gen length, block, steps
REPEATS = 3  # runs per measurement; the median is reported


def build_model():
    """The fairref LLaDA architecture at toy size, or a same-size stand-in."""
    try:
        from fairref.models import LLaDAConfig, random_model
        cfg = LLaDAConfig(d_model=D, n_heads=4, n_kv_heads=4, n_layers=LAYERS,
                          mlp_hidden_size=4 * D, vocab_size=VOCAB, embedding_size=VOCAB,
                          mask_token_id=MASK, eos_token_id=0, pad_token_id=0,
                          max_sequence_length=256, extra={})
        return random_model(cfg, seed=0).eval(), "fairref.models.LLaDAModel"
    except ImportError:
        layer = torch.nn.TransformerEncoderLayer(D, 4, 4 * D, batch_first=True)
        net = torch.nn.Sequential(torch.nn.Embedding(VOCAB, D),
                                  torch.nn.TransformerEncoder(layer, LAYERS),
                                  torch.nn.Linear(D, VOCAB)).eval()

        class StandIn:
            mask_token_id, logit_shift = MASK, 0

            def logits(self, input_ids, attention_mask=None):
                return net(input_ids)

        return StandIn(), "stand-in nn.TransformerEncoder"


class TimedModel:
    """Forwards to ``model.logits`` and accumulates the time spent inside it."""

    def __init__(self, model):
        self.model, self.mask_token_id, self.logit_shift = model, model.mask_token_id, 0
        self.forward_s, self.calls = 0.0, 0

    def logits(self, input_ids, attention_mask=None):
        t0 = time.perf_counter()
        z = self.model.logits(input_ids, attention_mask)
        self.forward_s += time.perf_counter() - t0
        self.calls += 1
        return z


def measure(model, prompt, record: bool) -> tuple[float, float, int]:
    """(wall seconds, forward seconds, forward calls) of one run, median over REPEATS."""
    rows = []
    for _ in range(REPEATS):
        timed = TimedModel(model)
        t0 = time.perf_counter()
        llada_generate(timed, prompt, STEPS, G, BLOCK, record=record)
        rows.append((time.perf_counter() - t0, timed.forward_s, timed.calls))
    return sorted(rows, key=lambda r: (r[0] - r[1]) / r[1])[len(rows) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="also time a recorded run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, kind = build_model()
    prompt = torch.randint(0, MASK, (B, P), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        llada_generate(model, prompt, 4, 8, 8)  # warm-up
    print(f"model: {kind}, d={D}, layers={LAYERS}, V={VOCAB}; batch {B}, prompt {P}, "
          f"gen {G}, block {BLOCK}, steps {STEPS}; torch.set_num_threads(1)")
    if args.record:
        wall, fwd, calls = measure(model, prompt, record=True)
        print(f"recorded run: wall {wall:.3f}s forward {fwd:.3f}s ({calls} calls) "
              f"overhead/forward {(wall - fwd) / fwd:.4f}")
    wall, fwd, calls = measure(model, prompt, record=False)
    print(f"plain run: wall {wall:.3f}s forward {fwd:.3f}s ({calls} calls)")
    print(f"sampler_overhead_fraction {(wall - fwd) / fwd:.4f}")


if __name__ == "__main__":
    main()
