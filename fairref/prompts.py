"""The prompts a pipeline stage runs on, for one checkpoint directory (SPEC §4.1, §5, §8).

Shared by ``fairref probe | calibrate | eval`` and ``fairref demo``, so that every stage
picks its prompts by one rule:

- a shipped toy model (its directory is one of :func:`fairref.toy.checkpoint_dir`, or its
  tokenizer.json has exactly the toy character vocabulary) defaults to its own tasks:
  ``n_per_task`` problems of each task in :data:`fairref.toy.tasks.TASKS` from the
  ``"train"`` split for Stage I / II, the ``"heldout"`` split for evaluation (SPEC §5:
  never the calibration prompts), scored by each task's own parser;
- any other model needs a JSONL file: one JSON object per line with a ``"prompt"`` string
  and, for evaluation, an optional ``"answer"`` string (accuracy is then exact match of the
  completion up to EOS, whitespace-stripped, and is measured only when every line has one).

Either way the prompts are encoded with the model's ``generation_config.json`` prompt
format (``fairref.models.encode_prompts``), and a prompt that contains the mask token is
an error naming its line: the sampler would take it for a position to generate.

Legend: N prompts, P prompt length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from torch import Tensor

from fairref.diffusion import load_generation_config
from fairref.files import read_jsonl
from fairref.models import encode_prompts, load_tokenizer
from fairref.models.checkpoint import read_config
from fairref.models.config import DreamConfig


@dataclass(frozen=True)
class PromptSet:
    """Encoded prompts and, when answers are known, how to score a completion."""

    ids: Tensor  # (N, P) prompt token ids, in the model's prompt format
    attention_mask: Tensor | None  # (N, P) True on real tokens; None when nothing is padded
    texts: tuple[str, ...]  # the prompt strings, in order
    source: str  # where the prompts came from, for reports ("toy tasks, train split, ...")
    problems: tuple | None = None  # what ``check`` scores, one per prompt (None: no answers)
    decode: Callable[[Tensor], str] | None = None  # generated ids (G,) → text up to EOS
    check: Callable[[object, str], bool] | None = None  # (problem, completion) → correct


def is_toy_model(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` is a shipped toy checkpoint or uses the toy character tokenizer."""
    from fairref.toy import TOY_MODELS, checkpoint_dir
    from fairref.toy.char_tokenizer import vocab

    here = Path(model_dir).resolve()
    for name in TOY_MODELS:
        try:
            if checkpoint_dir(name).resolve() == here:
                return True
        except FileNotFoundError:  # an installed package without the shipped checkpoints
            pass
    file = here / "tokenizer.json"
    if not file.is_file():
        return False
    return load_tokenizer(here).tokenizer.get_vocab(with_added_tokens=True) == vocab()


def read_prompts_jsonl(path: str | Path) -> list[dict]:
    """The records of a prompts file: one JSON object per non-blank line, each with a
    ``"prompt"`` string and optionally an ``"answer"`` string; errors name the line."""
    records = []
    for n, where, rec in read_jsonl(path, "prompts", '{"prompt": "..."}'):
        if not isinstance(rec.get("prompt"), str):
            raise ValueError(f'{where}: expected an object with a "prompt" string, got '
                             f"{json.dumps(rec)[:60]!r}")
        if "answer" in rec and not isinstance(rec["answer"], str):
            raise ValueError(f'{where}: "answer" must be a string, got {rec["answer"]!r}')
        records.append({**rec, "_line": n})
    if not records:
        raise ValueError(f"{path} holds no prompts; write one JSON object per line")
    return records


def load_prompts(model_dir: str | Path, split: Literal["train", "heldout"], *,
                 prompts_file: str | Path | None = None, n_per_task: int = 8, seed: int = 0
                 ) -> PromptSet:
    """The prompts of a stage for the model in ``model_dir`` (module docstring).

    ``split``: ``"train"`` for Stage I / II (calibration), ``"heldout"`` for evaluation;
    used only for a toy model without ``prompts_file``. ``n_per_task`` toy problems of each
    task, drawn with ``seed``.
    """
    model_dir = Path(model_dir)
    family = "dream" if isinstance(read_config(model_dir), DreamConfig) else "llada"
    _, fmt = load_generation_config(model_dir, family)
    tok = load_tokenizer(model_dir)
    if prompts_file is None:
        if not is_toy_model(model_dir):
            raise ValueError(f"{model_dir} is not a shipped toy model, so there are no default "
                             "prompts: pass --prompts FILE.jsonl (one {\"prompt\": ...} per "
                             "line)")
        return _toy_prompts(tok, fmt, split, n_per_task, seed)
    records = read_prompts_jsonl(prompts_file)
    texts = [r["prompt"] for r in records]
    ids, attn = encode_prompts(tok, texts, fmt)  # (N, P), (N, P) or None
    for r, row in zip(records, ids):
        if (row == tok.mask_token_id).any():
            raise ValueError(f"{prompts_file}, line {r['_line']}: the prompt contains the mask "
                             f"token (id {tok.mask_token_id}); remove it, the sampler would "
                             "take it for a position to generate")
    problems = decode = check = None
    if all("answer" in r for r in records):
        problems = tuple(r["answer"] for r in records)
        decode = text_decoder(tok)
        check = _exact_match
    return PromptSet(ids, attn, tuple(texts), f"{prompts_file} ({len(texts)} prompts)",
                     problems, decode, check)


def _toy_prompts(tok, fmt, split: str, n_per_task: int, seed: int) -> PromptSet:
    from fairref.toy import tasks
    from fairref.toy.char_tokenizer import decode_completion

    problems = [(task, prompt) for task in tasks.TASKS
                for prompt, _ in tasks.make_problems(task, n_per_task, seed, split=split)]
    texts = [p for _, p in problems]
    ids, attn = encode_prompts(tok, texts, fmt)  # (N, P), None: fixed-length toy prompts
    return PromptSet(ids, attn, tuple(texts),
                     f"toy tasks, {split} split ({n_per_task} per task, seed {seed})",
                     tuple(problems), decode_completion, _toy_check)


def _toy_check(problem: tuple[str, str], completion: str) -> bool:
    from fairref.toy.tasks import check

    task, prompt = problem
    return check(task, prompt, completion)


def _exact_match(answer: str, completion: str) -> bool:
    return completion.strip() == answer.strip()


def text_decoder(tok) -> Callable[[Tensor], str]:
    """Generated ids (G,) → the text up to (without) the first EOS, as ``tok`` decodes it."""
    def decode(ids: Tensor) -> str:
        row = [int(i) for i in ids]
        if tok.eos_token_id is not None and tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        return tok.decode(row)
    return decode
