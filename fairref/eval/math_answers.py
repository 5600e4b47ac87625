"""GSM8K-style math word problems: the JSONL file, its split, and the answer rule (SPEC §5).

Task accuracy of SPEC §5 is "exact match of the answer as the task's own parser extracts
it"; for math word problems this file is that parser, used by
``paper_repro/llada_dream_w4a4.py``.

**File.** One JSON object per non-blank line (UTF-8), as the GSM8K release writes it:
``{"question": "...", "answer": "... #### 42"}``. ``"prompt"`` is accepted in place of
``"question"`` (the key of :mod:`fairref.prompts`); other keys are ignored. Errors name the
line.

**Reference answer.** The text after the *last* ``####`` of ``answer``, stripped, with
commas, ``$`` and one trailing ``.`` removed, must be one number: an integer, a decimal
(``-0.5``, ``.5``) or a fraction ``a/b``. It is kept as an exact :class:`~fractions.Fraction`.

**Predicted answer** of a completion, the first rule that finds a number:

1. after the last ``####`` in the completion (the format GSM8K's answers teach): the first
   number there;
2. inside the last ``\\boxed{...}`` (how instruct models often close a solution): the last
   number there;
3. the last number anywhere in the completion.

A *number* is an optional ``-`` (not right after a letter or digit: ``3-4`` is 3 and 4),
an optional ``$``, digits with optional thousands commas
(``1,234``; a comma not followed by exactly three digits ends the number, so ``1,2,3`` is
three numbers), an optional decimal part, optionally ``/digits`` (a fraction). Commas and
``$`` are dropped and a trailing ``.`` is a full stop, not a decimal point. The
prediction is correct when it equals the reference as an exact fraction (``42``, ``42.0``,
``$42`` and ``84/2`` all match 42; ``42.01`` does not). No number at all: wrong.

**Split.** :func:`split_problems`: questions are deduplicated by text (first occurrence
kept), then permuted by NumPy's PCG64 generator seeded ``seed``; the first ``n_calib`` are
calibration problems and the next ``n_eval`` evaluation problems — disjoint by
construction, so no evaluation question is ever a calibration prompt (SPEC §5).

Checked against the GSM8K answer format (``#### <number>``, thousands commas as in the
release) by the hand-made cases of tests/test_llada_dream_repro.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from fairref.files import read_jsonl

#: a number in a completion (module docstring): sign, $, digits with thousands commas,
#: decimals, an optional /denominator
NUMBER = re.compile(r"(?<!\w)-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?")
#: the same, anchored, for a reference answer after its clean-up
_REFERENCE = re.compile(r"-?(?:\d+)?(?:\.\d+)?(?:/\d+)?")
_BOXED = "\\boxed{"


@dataclass(frozen=True)
class MathProblem:
    """One word problem: its question, reference text and the exact reference answer."""

    question: str  # the prompt text (a user turn of the chat format)
    answer_text: str  # the reference solution, ending in "#### <number>"
    reference: Fraction  # the number after the last ####, exact
    line: int  # line number in its file (1-based), for messages


def parse_number(text: str) -> Fraction | None:
    """The exact value of one number token (``$1,234.50``, ``-3/4``); None if it is none."""
    t = re.sub(r"\$\s?", "", text).replace(",", "")  # "$ 1,234" → "1234"; "3 4" stays
    if not _REFERENCE.fullmatch(t) or not any(c.isdigit() for c in t):
        return None
    num, _, den = t.partition("/")
    if num in ("", "-") or (den and int(den) == 0):
        return None
    return Fraction(num) / (Fraction(den) if den else 1)


def _numbers(text: str) -> list[Fraction]:
    """Every number of ``text`` in order (module docstring), a trailing full stop dropped."""
    out = []
    for m in NUMBER.finditer(text):
        v = parse_number(m.group(0))
        if v is not None:
            out.append(v)
    return out


def reference_answer(answer: str) -> Fraction:
    """The number after the last ``####`` of a GSM8K answer (module docstring).

    ``ValueError`` when there is no ``####`` or what follows is not one number."""
    if "####" not in answer:
        raise ValueError('the answer has no "####" before its final number '
                         f"(got {answer.strip()[-60:]!r}); end it with e.g. \"#### 42\"")
    tail = answer.rsplit("####", 1)[1].strip()
    value = parse_number(tail.removesuffix("."))
    if value is None:
        raise ValueError(f'the text after the last "####" is {tail!r}, not a number; write '
                         'one integer, decimal or fraction there (e.g. "#### 1,234")')
    return value


def predicted_answer(completion: str) -> Fraction | None:
    """The model's answer in ``completion`` by the rules of the module docstring."""
    if "####" in completion:
        found = _numbers(completion.rsplit("####", 1)[1])
        if found:
            return found[0]
    start = completion.rfind(_BOXED)
    if start >= 0:
        inner = completion[start + len(_BOXED):].split("}", 1)[0]
        found = _numbers(inner)
        if found:
            return found[-1]
    found = _numbers(completion)
    return found[-1] if found else None


def is_correct(problem: MathProblem, completion: str) -> bool:
    """Exact match of the predicted and the reference answer, as fractions."""
    return predicted_answer(completion) == problem.reference


def read_math_jsonl(path: str | Path) -> list[MathProblem]:
    """The problems of a GSM8K-style JSONL file (module docstring); errors name the line."""
    problems = []
    for n, where, rec in read_jsonl(path, "problems", '{"question": "...", "answer": "... #### 42"}'):
        key = "question" if "question" in rec else "prompt"
        question, answer = rec.get(key), rec.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f'{where}: expected a non-empty "question" (or "prompt") string')
        if not isinstance(answer, str):
            raise ValueError(f'{where}: expected an "answer" string ending in "#### <number>"')
        try:
            ref = reference_answer(answer)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        problems.append(MathProblem(question, answer, ref, n))
    if not problems:
        raise ValueError(f"{path} holds no problems; write one JSON object per line")
    return problems


def unique_questions(problems: list[MathProblem]) -> list[MathProblem]:
    """``problems`` without repeated question texts (the first occurrence kept)."""
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def draw_problems(problems: list[MathProblem], n: int, seed: int, skip: int = 0
                  ) -> list[MathProblem]:
    """Problems ``skip .. skip + n − 1`` of the seeded order of the module docstring (distinct
    questions permuted by PCG64 seeded ``seed``); ``ValueError`` when there are too few."""
    for name, v in (("n", n), ("skip", skip)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "n" else 0):
            raise ValueError(f"{name} must be an integer >= {1 if name == 'n' else 0}, "
                             f"got {v!r}")
    pool = unique_questions(problems)
    if len(pool) < skip + n:
        raise ValueError(f"{len(pool)} distinct questions, but {skip + n} are needed")
    order = np.random.default_rng(seed).permutation(len(pool))  # (len(pool),)
    return [pool[i] for i in order[skip:skip + n]]


def split_problems(problems: list[MathProblem], n_calib: int, n_eval: int, seed: int
                   ) -> tuple[list[MathProblem], list[MathProblem]]:
    """Disjoint calibration and evaluation problems (module docstring): the first
    ``n_calib`` of the seeded order, then the next ``n_eval``."""
    pool = unique_questions(problems)
    if len(pool) < n_calib + n_eval:
        raise ValueError(f"{len(pool)} distinct questions, but --n-calib {n_calib} + --n-eval "
                         f"{n_eval} = {n_calib + n_eval} are needed; lower them or give a "
                         "larger file")
    return (draw_problems(pool, n_calib, seed),
            draw_problems(pool, n_eval, seed, skip=n_calib))
