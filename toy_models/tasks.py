"""Generated tasks with checkable answers for the toy masked-diffusion models (SPEC §2, §7).

The toy models exist to sit in the regime FAIR-Calib is about: several tokens are written
per sampler step, an early wrong commit propagates to the rest of the answer (a wrong carry,
a miscounted duplicate, a wrong running sum), and the teacher is genuinely unsure at some
of its commits. Three tasks, each a single-character tag in the prompt:

- ``add``  (tag ``A``): ``a + b`` with 5- or 6-digit operands written zero-padded to 6
  digits; the answer is the sum zero-padded to 7 digits. Every answer digit sits at a fixed
  offset from its operand column, but depends on the carry from all lower columns.
- ``sort`` (tag ``S``): sort 8–12 digits drawn from a small alphabet (many duplicates):
  every digit's multiplicity must be counted, and one miscount shifts all later positions.
- ``psum`` (tag ``P``): the running sum mod 10 of 12 digits: answer j = (d_0 + … + d_j)
  mod 10. A long-range consistency task: each answer digit depends on the whole prefix, so
  committing digit j before j − 1 is a guess and a wrong digit corrupts every later one.

Design note (measured): the first version had a reversal task (8–14 letters). With RoPE
and identical mask queries, an answer position must first infer its own index to find its
source (distance 2j + 2), and after 1000 steps neither toy model had learned it (0%), nor
5–7 digit sums written without padding (variable alignment). Fixed-offset layouts learn
within the CPU budget, so the tasks above keep every source at a fixed relative offset and
put the difficulty in the carries, counts and prefixes instead.

A problem is a pair of strings ``(prompt, answer)``: ``prompt = "<tag>:<body>="`` and the
answer has no terminator (the encoder pads it with EOS up to the generation length G).
Splits are disjoint by construction: a problem belongs to the held-out split exactly when
the SHA-256 of its prompt falls in bucket 0 of ``HELDOUT_BUCKETS`` (one in 16 prompts), and
the training generator rejects every such prompt; different seeds are used on top.
"""

from __future__ import annotations

import hashlib
import random
import string

#: the tasks, in the order reports list them
TASKS: tuple[str, ...] = ("add", "sort", "psum")
#: one-character tag written at the start of each prompt
TAG: dict[str, str] = {"add": "A", "sort": "S", "psum": "P"}
#: 1 / (fraction of the prompt space reserved for held-out problems)
HELDOUT_BUCKETS = 16
#: digits of a running-sum problem
PSUM_LEN = 12
#: the longest answer any task produces (7-digit sum, 12 sorted digits, 12 running sums)
MAX_ANSWER_LEN = 12
#: the longest prompt any task produces ("A:" + 6 + "+" + 6 + "=")
MAX_PROMPT_LEN = 16
#: every character that can appear in a prompt or an answer
ALPHABET: str = string.digits + string.ascii_lowercase + "".join(sorted(TAG.values())) + ":=+"
# (lowercase letters stay in the vocabulary so the tokenizer can encode any task string of
# the first version; no current task uses them)

SPLITS = ("train", "heldout")


def is_heldout(prompt: str) -> bool:
    """True when ``prompt`` belongs to the held-out split (hash bucket 0)."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return h % HELDOUT_BUCKETS == 0


def _sample_body(task: str, rng: random.Random) -> str:
    """One random problem body (the part between ``<tag>:`` and ``=``)."""
    if task == "add":
        ka, kb = rng.choice((5, 6)), rng.choice((5, 6))
        a = rng.randrange(10 ** (ka - 1), 10**ka)
        b = rng.randrange(10 ** (kb - 1), 10**kb)
        return f"{a:06d}+{b:06d}"  # zero-padded to 6 digits: digit columns align
    if task == "sort":
        n = rng.randint(8, 12)
        # a random sub-alphabet of 3-6 digits forces duplicates in every list
        k = rng.randint(3, 6)
        pool = rng.sample(string.digits, k)
        return "".join(rng.choice(pool) for _ in range(n))
    if task == "psum":
        return "".join(rng.choice(string.digits) for _ in range(PSUM_LEN))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def solve(task: str, prompt: str) -> str:
    """The correct answer for ``prompt``, computed from the prompt alone (the oracle)."""
    body = parse_prompt(task, prompt)
    if task == "add":
        a, b = body.split("+")
        return f"{int(a) + int(b):07d}"  # zero-padded: digit j aligns with column j - 1
    if task == "sort":
        return "".join(sorted(body))
    out, acc = [], 0  # psum
    for d in body:
        acc = (acc + int(d)) % 10
        out.append(str(acc))
    return "".join(out)


def parse_prompt(task: str, prompt: str) -> str:
    """The body of a well-formed ``prompt`` for ``task``; ``ValueError`` otherwise."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    head = f"{TAG[task]}:"
    if not (prompt.startswith(head) and prompt.endswith("=")):
        raise ValueError(f"prompt {prompt!r} is not of the form '{head}<body>='")
    return prompt[len(head) : -1]


def parse_answer(task: str, completion: str) -> str | None:
    """The answer a completion states, or None when it is malformed for ``task``.

    ``completion`` is the decoded generation up to (not including) the first EOS.
    """
    if task == "add":
        ok = completion.isdigit() and len(completion) == 7
    elif task == "sort":
        ok = completion.isdigit()
    elif task == "psum":
        ok = completion.isdigit() and len(completion) == PSUM_LEN
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return completion if ok else None


def check(task: str, prompt: str, completion: str) -> bool:
    """Exact match: the parsed completion equals the oracle's answer (SPEC §5 task accuracy)."""
    parsed = parse_answer(task, completion)
    return parsed is not None and parsed == solve(task, prompt)


def make_problems(
    task: str, n: int, seed: int, split: str = "train"
) -> list[tuple[str, str]]:
    """``n`` problems ``(prompt, answer)`` of ``task`` from ``split``, determined by ``seed``.

    Held-out problems are distinct from each other; training problems may repeat (they are
    an i.i.d. stream). The two splits can never share a prompt (see :func:`is_heldout`).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # the task name enters the seed so that tasks drawn with one seed are independent
    rng = random.Random(f"{task}/{split}/{seed}")
    want_heldout = split == "heldout"
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(out) < n:
        prompt = f"{TAG[task]}:{_sample_body(task, rng)}="
        if is_heldout(prompt) != want_heldout:
            continue
        if want_heldout:
            if prompt in seen:
                continue
            seen.add(prompt)
        out.append((prompt, solve(task, prompt)))
    return out


def task_of(prompt: str) -> str:
    """The task a prompt belongs to, read from its tag."""
    for task, tag in TAG.items():
        if prompt.startswith(tag + ":"):
            return task
    raise ValueError(f"prompt {prompt!r} does not start with a task tag {sorted(TAG.values())}")
