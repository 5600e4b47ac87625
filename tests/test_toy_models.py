"""Toy-model training objective and shipped checkpoints (toy_models/train.py, presets.py).

Oracles: a stub model whose logits are known in closed form (uniform → CE = log V on every
masked token; one-hot at the truth → CE ≈ 0), and the task checkers for generations.
"""

import math
import os

import pytest
import torch
from torch import Tensor, nn

from fairref.models import DreamModel, LLaDAModel, load
from fairref.toy.char_tokenizer import GEN_LEN, MASK_ID, PROMPT_LEN, VOCAB_SIZE
from fairref.toy.presets import toy_config
from fairref.toy import TOY_MODELS, checkpoint_dir
from toy_models.report import quantized_copy
from fairref.toy.tasks import TASKS, check, make_problems
from toy_models.train import TrainConfig, batch_problems, diffusion_loss, encode_batch, lr_at


class StubModel(nn.Module):
    """logits = scale · one_hot(target) (or zeros); records the inputs it saw."""

    mask_token_id = MASK_ID

    def __init__(self, target=None, scale=0.0):
        super().__init__()
        self.target, self.scale, self.seen = target, scale, []

    def logits(self, ids, attention_mask=None):
        self.seen.append(ids.clone())
        z = torch.zeros(*ids.shape, VOCAB_SIZE)  # (B, L, V)
        if self.target is not None:
            z = z + self.scale * nn.functional.one_hot(self.target, VOCAB_SIZE).float()
        return z


def _batch(seed=0):
    cfg = TrainConfig(arch="llada", batch_size=12, seed=seed)
    x0 = encode_batch(batch_problems(cfg, step=3))  # (B, L)
    g = torch.Generator().manual_seed(seed)
    t = 1e-3 + (1 - 1e-3) * torch.rand(x0.shape[0], generator=g)  # (B,)
    u = torch.rand(x0.shape[0], GEN_LEN, generator=g)  # (B, G)
    return x0, t, u


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_of_a_uniform_model_is_log_v_times_masked_count_over_t(seed):
    """With uniform logits every masked token costs log V, so
    L = Σ_b n_masked_b · log V / t_b / (B G) exactly (the 1/t weighting, LLaDA SFT)."""
    x0, t, u = _batch(seed)
    B = x0.shape[0]
    n_masked = (u < t[:, None]).sum(dim=1).double()  # (B,)
    want = (n_masked * math.log(VOCAB_SIZE) / t.double()).sum() / (B * GEN_LEN)
    got = diffusion_loss(StubModel(), x0, t, u)
    assert torch.isclose(got.double(), want, rtol=1e-5)


def test_prompt_is_never_masked_and_answer_masks_are_exactly_u_below_t():
    """The model sees x0 on the prompt and the mask id exactly where u < t in the answer."""
    x0, t, u = _batch()
    stub = StubModel()
    diffusion_loss(stub, x0, t, u)
    (xt,) = stub.seen
    assert torch.equal(xt[:, :PROMPT_LEN], x0[:, :PROMPT_LEN])
    masked = u < t[:, None]
    assert torch.equal(xt[:, PROMPT_LEN:] == MASK_ID, masked)
    assert torch.equal(xt[:, PROMPT_LEN:][~masked], x0[:, PROMPT_LEN:][~masked])


def test_a_model_that_knows_the_answer_has_near_zero_loss():
    """Logits 30 on the true token: CE per token ≤ V e^-30, so the loss is tiny."""
    x0, t, u = _batch()
    loss = diffusion_loss(StubModel(target=x0, scale=30.0), x0, t, u)
    assert 0 <= loss.item() < VOCAB_SIZE * math.exp(-30) / 1e-3


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(arch="llada", steps=400, warmup=40, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert all(a < b for a, b in zip(lrs[:39], lrs[1:40]))
    assert all(a >= b for a, b in zip(lrs[39:], lrs[40:]))
    assert math.isclose(max(lrs), 1e-3) and math.isclose(lrs[-1], 1e-4, rel_tol=1e-3)


def test_training_batches_are_reproducible_and_balanced_over_tasks():
    cfg = TrainConfig(arch="dream", batch_size=10)
    a = batch_problems(cfg, 5)
    assert a == batch_problems(cfg, 5) and a != batch_problems(cfg, 6)
    counts = [sum(p.startswith(tag) for p, _ in a) for tag in ("C:", "S:", "M:", "p:")]
    assert counts == [3, 3, 2, 2]  # unit 2 each, the remainder 2 to the first two tasks


@pytest.mark.parametrize("weights,batch,want", [
    ((1, 2, 1, 2), 96, [16, 32, 16, 32]),
    ((1, 2, 1, 0), 10, [3, 5, 2, 0]),  # unit 2 → 2, 4, 2; remainder 2 → +1 to the first two
    ((3, 1, 1, 1), 6, [3, 1, 1, 1]),
    ((0, 1, 0, 0), 7, [0, 7, 0, 0]),  # a phase that trains one task only
    ((0, 2, 0, 1), 8, [0, 5, 0, 3]),  # unit 2 → 4, 2; remainder 2 → +1 to each weighted task
])
def test_task_weights_split_the_batch_in_proportion(weights, batch, want):
    """Each task gets unit·w rows (unit = batch // Σw), the remainder one row at a time to
    the first tasks; counted here from the prompt tags."""
    cfg = TrainConfig(arch="llada", batch_size=batch, task_weights=weights)
    a = batch_problems(cfg, 0)
    assert [sum(p.startswith(tag) for p, _ in a) for tag in ("C:", "S:", "M:", "p:")] == want


def test_bad_train_config_raises_naming_the_argument():
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="gpt")
    with pytest.raises(ValueError, match="eps"):
        TrainConfig(arch="llada", eps=0.0)
    with pytest.raises(ValueError, match="task_weights"):
        TrainConfig(arch="llada", task_weights=(1, 2))
    with pytest.raises(ValueError, match="task_weights"):
        TrainConfig(arch="llada", task_weights=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="task_weights"):
        TrainConfig(arch="llada", task_weights=(1, -1, 1, 1))
    with pytest.raises(ValueError, match="sum"):
        TrainConfig(arch="llada", batch_size=4, task_weights=(1, 2, 1, 1))
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(arch="llada", steps=0)


@pytest.mark.parametrize("arch", sorted(TOY_MODELS))
def test_shipped_checkpoints_load_strictly_with_the_toy_config(arch):
    """fairref.models.load reads each shipped directory (strict names and shapes), the
    architecture is the intended one (Dream with GQA, one model with d ≥ 256), and the
    stored weights are bf16 within the 8 MB budget."""
    path = checkpoint_dir(arch)
    model = load(path)
    assert isinstance(model, LLaDAModel if arch == "llada" else DreamModel)
    assert model.config.to_dict() == toy_config(arch).to_dict()
    assert os.path.getsize(path / "model.safetensors") <= 8 * 2**20
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    if arch == "dream":
        assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert toy_config("llada").d_model >= 256  # the task asks for one model with d >= 256


def _completions(model, task, n):
    """(prompt, decoded completion) for ``n`` held-out problems under the shipped sampler."""
    from fairref.toy.char_tokenizer import decode_completion, encode_prompts
    from fairref.diffusion import generate
    from fairref.diffusion import sampler_family
    from fairref.toy.evaluate import toy_sampler

    problems = make_problems(task, n, 99, split="heldout")
    ids = encode_prompts([p for p, _ in problems])  # (n, P)
    x = generate(model, ids, toy_sampler(sampler_family(model)))  # (n, P + G)
    return [(p, decode_completion(row)) for (p, _), row in zip(problems, x[:, ids.shape[1]:])]


def _accuracy(model, n):
    return {t: [check(t, p, c) for p, c in _completions(model, t, n)] for t in TASKS}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TOY_MODELS))
def test_shipped_models_solve_most_heldout_problems_of_every_task(arch):
    """A quick generation on 20 held-out problems per task under the shipped sampler: at
    least 15 of 20 exactly right on every task (the report measures ≥ 85% on 2000; a broken
    checkpoint, tokenizer or sampler path scores ~0, and a model trained on another task
    layout fails the format check)."""
    model = load(checkpoint_dir(arch))
    for task, ok in _accuracy(model, 20).items():
        assert sum(ok) >= 15, (task, sum(ok))


@pytest.mark.slow
def test_w4a4_rtn_sorts_fewer_lists_than_w8a8():
    """The regime the toy models are for: on 60 held-out sort problems (the task on which
    the report measures LLaDA 97% at W8A8 against 87% at W4A4, on 2000) W8A8 RTN keeps
    more exact answers than W4A4 RTN."""
    fp = load(checkpoint_dir("llada"))
    n8 = sum(check("sort", p, c) for p, c in _completions(quantized_copy(fp, 8, 8), "sort", 60))
    n4 = sum(check("sort", p, c) for p, c in _completions(quantized_copy(fp, 4, 4), "sort", 60))
    assert n8 > n4, (n8, n4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TOY_MODELS))
def test_shipped_teacher_is_unsure_on_pick_until_a_mode_is_written(arch):
    """The regime ``pick`` exists for (toy_models/README.md): on held-out problems whose
    level keeps the digits with P = 0.4 or 0.6, with the whole answer masked the teacher
    splits each digit position between its two valid values (those are its top two
    tokens, margin well below 0.5: the data's own margin is 0.2); once a mode letter is
    written at the first answer position, the digits follow it with confidence > 0.9."""
    from fairref.toy.char_tokenizer import GEN_LEN, encode_prompts, vocab
    from fairref.toy.tasks import PICK_LEN

    model = load(checkpoint_dir(arch))
    problems = [p for p, _ in make_problems("pick", 400, 99, split="heldout") if p[2] in "st"]
    prompt_ids = encode_prompts(problems)  # (n, P)
    n, P = prompt_ids.shape
    v = vocab()
    digits = [[int(c) for c in p[3:-1]] for p in problems]  # (n, 11)
    keep_ids = torch.tensor([[v[str(d)] for d in row] for row in digits])  # (n, 11)
    flip_ids = torch.tensor([[v[str(9 - d)] for d in row] for row in digits])  # (n, 11)

    def digit_probs(first: str | None) -> Tensor:
        x = torch.cat([prompt_ids, torch.full((n, GEN_LEN), model.mask_token_id)], dim=1)
        if first is not None:
            x[:, P] = v[first]
        with torch.no_grad():
            return model.logits(x)[:, P + 1 : P + 1 + PICK_LEN].float().softmax(-1)  # (n, 11, V)

    probs = digit_probs(None)
    top2 = probs.topk(2, dim=-1)
    pair = torch.stack([keep_ids, flip_ids], dim=-1).sort(-1).values  # (n, 11, 2)
    assert (top2.indices.sort(-1).values == pair).all(-1).float().mean() >= 0.9
    margin = top2.values[..., 0] - top2.values[..., 1]  # (n, 11)
    assert margin.median() < 0.5, margin.median()
    for mode, want in (("k", keep_ids), ("n", flip_ids)):
        p_want = digit_probs(mode).gather(-1, want[..., None])[..., 0]  # (n, 11)
        assert (p_want > 0.9).float().mean() >= 0.9, (mode, p_want.median())
