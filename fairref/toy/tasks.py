"""Generated tasks with checkable answers for the toy masked-diffusion models (SPEC §2, §7).

The toy models exist to sit in the regime FAIR-Calib is about: several tokens are written
per sampler step, an early wrong commit propagates to the rest of the answer (a wrong carry,
a miscounted duplicate, a wrong running maximum), and the teacher is unsure at some of its
commits. Four tasks, each a single-character tag in the prompt:

- ``carry`` (tag ``C``): the carry pass of long addition. The prompt holds the 12 column
  sums s_j = a_j + b_j of two 12-digit numbers, one character per column (``0``-``9``, then
  ``a``-``i`` for 10-18); the answer is the 13-digit sum Σ s_j 10^(11-j). Answer digit j
  reads one column at a fixed offset, but its carry-in depends on every lower column: a
  run of 9s passes a carry through (a 9 is drawn with probability 0.35, so runs are common).
- ``sort`` (tag ``S``): sort 8-12 digits drawn from a small alphabet (many duplicates):
  every digit's multiplicity must be counted, and one miscount shifts all later positions.
- ``cmax`` (tag ``M``): the running maximum of 12 digits, answer j = max(d_0 … d_j), with
  digit j drawn from 0..3 + 6j/11 so the maximum climbs in several steps. A long-range
  consistency task: each answer digit depends on the whole prefix, and once a digit is
  committed every later one must be at least as large.
- ``pick`` (tag ``p``): a task with two valid answers, where the teacher is *meant* to be
  unsure. The prompt holds a level letter and 11 digits; the answer is either ``k`` and
  the digits kept, or ``n`` and their nines' complements (9 - d), chosen at random in
  training with P(keep) set by the level (``PICK_P_KEEP``: 0.15 … 0.85). Before anything
  is written every answer position is split between its two values, so the first commits
  carry margin |2 P(keep) - 1| (0.2 at levels ``s``/``t``); once a mode is written the
  rest is determined. Mixing the modes (a token from each) is wrong: two positions
  written in the same step must agree, which is exactly the parallel-decoding decision a
  quantization error can flip. Accuracy is the fraction of *valid* answers.

How they were chosen (measured on this CPU, LLaDA toy, batch 64, one task at a time;
toy_models/README.md has the table): fixed-offset copying is learned in 100 steps, and a
carry pass that reads one column per digit (``carry``) reaches 87% exact match in 600
steps; but any task whose answer digit must *combine two* prompt tokens found by position
stays at chance: plain 6-digit addition (operands written apart, 500 steps: digits 2-7 at
~10%), 6-bit binary addition (1200 steps: 6.5% exact), and the running sum mod 10 of the
first version (0% after 2000 steps). A first version also had reversal (the source offset
depends on the answer index; 0%). ``carry`` keeps the carry chain, the part of addition
whose errors propagate, and gives each column as one token.

``pick`` was added later, to the models trained on the first three, because none of those
three leaves the teacher unsure where it is right (margin < 0.5 at 0.0-0.3% of commits):
a tiny model becomes sure of whatever it can learn. Its characters are letters the
vocabulary already had, so the shipped vocabulary did not change.

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
TASKS: tuple[str, ...] = ("carry", "sort", "cmax", "pick")
#: one-character tag written at the start of each prompt (``pick`` uses a lowercase letter
#: because the vocabulary was fixed before it was added)
TAG: dict[str, str] = {"carry": "C", "sort": "S", "cmax": "M", "pick": "p"}
#: 1 / (fraction of the prompt space reserved for held-out problems)
HELDOUT_BUCKETS = 16
#: columns of a carry problem (the answer has one digit more)
CARRY_COLS = 12
#: probability that a carry column sums to 9 (passes a carry through)
CARRY_P9 = 0.35
#: the characters of column sums 0..18
COLUMN_SUMS = "0123456789abcdefghi"
#: digits of a running-maximum problem
CMAX_LEN = 12
#: digits of a pick problem (the answer is the mode letter and as many digits)
PICK_LEN = 11
#: pick's level letter → probability that a training answer keeps the digits
PICK_P_KEEP: dict[str, float] = {"q": 0.15, "r": 0.3, "s": 0.4, "t": 0.6, "u": 0.7, "v": 0.85}
#: pick's mode letters: keep the digits, or write their nines' complements
PICK_KEEP, PICK_FLIP = "k", "n"
#: the longest answer any task produces (13-digit sum, 12 sorted digits, 12 maxima, 12 picked)
MAX_ANSWER_LEN = CARRY_COLS + 1
#: the longest prompt any task produces ("C:" + 12 + "=", "p:" + level + 11 + "=")
MAX_PROMPT_LEN = 15
#: every character that can appear in a prompt or an answer; its order fixes the token ids
ALPHABET: str = string.digits + string.ascii_lowercase + "CMS" + ":=+"
assert all(tag in ALPHABET for tag in TAG.values())
# (all lowercase letters stay in the vocabulary, though ``carry`` uses only a-i, so the
# tokenizer can encode any task string of earlier versions)

SPLITS = ("train", "heldout")


def is_heldout(prompt: str) -> bool:
    """True when ``prompt`` belongs to the held-out split (hash bucket 0)."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return h % HELDOUT_BUCKETS == 0


def _sample_body(task: str, rng: random.Random) -> str:
    """One random problem body (the part between ``<tag>:`` and ``=``)."""
    if task == "carry":
        # a 9 passes a carry through; the other sums (0-8 stop a carry, 10-18 make one)
        # are uniform, so carry runs of every length up to the whole number occur
        return "".join(
            "9" if rng.random() < CARRY_P9 else rng.choice(COLUMN_SUMS.replace("9", ""))
            for _ in range(CARRY_COLS)
        )
    if task == "sort":
        n = rng.randint(8, 12)
        # a random sub-alphabet of 3-6 digits forces duplicates in every list
        k = rng.randint(3, 6)
        pool = rng.sample(string.digits, k)
        return "".join(rng.choice(pool) for _ in range(n))
    if task == "cmax":
        # digit j is drawn from 0..(3 + 6j/11): the maximum climbs in several steps over
        # the whole answer instead of reaching 9 within the first few digits
        return "".join(
            str(rng.randint(0, 3 + (6 * j) // (CMAX_LEN - 1))) for j in range(CMAX_LEN)
        )
    if task == "pick":
        level = rng.choice(sorted(PICK_P_KEEP))
        return level + "".join(rng.choice(string.digits) for _ in range(PICK_LEN))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _pick_modes(body: str) -> tuple[str, str]:
    """The two answers of a pick body (level letter, then digits): kept, flipped."""
    digits = body[1:]
    return PICK_KEEP + digits, PICK_FLIP + "".join(str(9 - int(d)) for d in digits)


def answers(task: str, prompt: str) -> tuple[str, ...]:
    """Every correct answer for ``prompt``, computed from the prompt alone (the oracle):
    one for carry, sort and cmax; for pick the kept and the flipped answer, the more
    probable first."""
    if task != "pick":
        return (solve(task, prompt),)
    body = parse_prompt(task, prompt)
    keep, flip = _pick_modes(body)
    return (keep, flip) if PICK_P_KEEP[body[0]] > 0.5 else (flip, keep)


def solve(task: str, prompt: str) -> str:
    """The correct answer for ``prompt`` (for pick: the more probable of the two)."""
    if task == "pick":
        return answers(task, prompt)[0]
    body = parse_prompt(task, prompt)
    if task == "carry":
        total = sum(COLUMN_SUMS.index(c) * 10 ** (len(body) - 1 - j) for j, c in enumerate(body))
        return f"{total:0{len(body) + 1}d}"  # answer digit j + 1 sits above column j
    if task == "sort":
        return "".join(sorted(body))
    out, top = [], 0  # cmax
    for d in body:
        top = max(top, int(d))
        out.append(str(top))
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
    if task == "carry":
        ok = completion.isdigit() and len(completion) == CARRY_COLS + 1
    elif task == "sort":
        ok = completion.isdigit()
    elif task == "cmax":
        ok = completion.isdigit() and len(completion) == CMAX_LEN
    elif task == "pick":
        ok = (len(completion) == PICK_LEN + 1 and completion[0] in (PICK_KEEP, PICK_FLIP)
              and completion[1:].isdigit())
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return completion if ok else None


def check(task: str, prompt: str, completion: str) -> bool:
    """Exact match: the parsed completion equals one of the oracle's answers (SPEC §5 task
    accuracy; for pick, a valid answer in either mode)."""
    parsed = parse_answer(task, completion)
    return parsed is not None and parsed in answers(task, prompt)


#: the kinds of a pick completion, in report order (see :func:`pick_kind`)
PICK_KINDS: tuple[str, ...] = ("probable", "other mode", "mixed", "wrong", "malformed")


def pick_kind(prompt: str, completion: str) -> str:
    """What a pick completion is: the more ``probable`` answer, the ``other mode`` (both
    correct); ``mixed`` — every token belongs to one of the two answers, but not all to the
    same one (the parallel-decoding error); ``wrong`` — a well-formed answer with some
    token in neither; or ``malformed`` (see :func:`parse_answer`)."""
    first, second = answers("pick", prompt)
    if parse_answer("pick", completion) is None:
        return "malformed"
    if completion in (first, second):
        return "probable" if completion == first else "other mode"
    if all(c in (a, b) for c, a, b in zip(completion, first, second)):
        return "mixed"
    return "wrong"


def _sample_answer(task: str, prompt: str, rng: random.Random) -> str:
    """The target of a problem: the oracle's answer, or for pick one of its two answers,
    the kept one with the level's probability."""
    if task != "pick":
        return solve(task, prompt)
    body = parse_prompt(task, prompt)
    keep, flip = _pick_modes(body)
    return keep if rng.random() < PICK_P_KEEP[body[0]] else flip


def make_problems(
    task: str, n: int, seed: int, split: str = "train"
) -> list[tuple[str, str]]:
    """``n`` problems ``(prompt, answer)`` of ``task`` from ``split``, determined by ``seed``.

    Held-out problems are distinct from each other; training problems may repeat (they are
    an i.i.d. stream). The two splits can never share a prompt (see :func:`is_heldout`).
    A pick answer is one of its two valid answers, drawn (module docstring).
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
        out.append((prompt, _sample_answer(task, prompt, rng)))
    return out


def task_of(prompt: str) -> str:
    """The task a prompt belongs to, read from its tag."""
    for task, tag in TAG.items():
        if prompt.startswith(tag + ":"):
            return task
    raise ValueError(f"prompt {prompt!r} does not start with a task tag {sorted(TAG.values())}")


def distinct_problems(task: str, n: int, seed: int, split: str = "train"
                      ) -> list[tuple[str, str]]:
    """The first ``n`` distinct prompts (with their answers) of ``make_problems(task, ·,
    seed, split)``, in the stream's order; a ``ValueError`` if the task has fewer."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    want = n
    for _ in range(8):  # draw more until n distinct prompts appear (the stream repeats)
        seen, out = set(), []
        for p, a in make_problems(task, want, seed, split):
            if p not in seen:
                seen.add(p)
                out.append((p, a))
                if len(out) == n:
                    return out
        want *= 2
    raise ValueError(f"task {task!r} ({split} split, seed {seed}) gave only {len(out)} "
                     f"distinct prompts in {want // 2} draws; ask for fewer than {n}")
