"""Task generators and checkers of the toy models (toy_models/tasks.py; SPEC §5 accuracy).

Each oracle here is written independently of the code under test (regex parsing, Counter,
Python ints), and the held-out hash is recomputed from hashlib.
"""

import hashlib
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairref.toy.tasks import (
    HELDOUT_BUCKETS,
    PICK_P_KEEP,
    MAX_ANSWER_LEN,
    MAX_PROMPT_LEN,
    TASKS,
    answers,
    check,
    make_problems,
    parse_answer,
    pick_kind,
    solve,
    task_of,
)


def oracle_answers(task: str, prompt: str) -> set[str]:
    """Every correct answer, solved independently: parse with a regex, then schoolbook
    carrying from the right (carry), Counter (sort), prefix maxima by slicing (cmax), and
    for pick "k" + the digits or "n" + their complements via str.translate."""
    if task == "pick":
        digits = re.fullmatch(r"p:[q-v](\d{11})=", prompt).group(1)
        return {"k" + digits, "n" + digits.translate(str.maketrans("0123456789", "9876543210"))}
    return {oracle_answer(task, prompt)}


def oracle_answer(task: str, prompt: str) -> str:
    """The one answer of carry, sort and cmax (see ``oracle_answers``)."""
    if task == "carry":
        cols = re.fullmatch(r"C:([0-9a-i]{12})=", prompt).group(1)
        out, c = [], 0
        for ch in reversed(cols):  # least significant column first
            s = int(ch, 36) + c  # int(..., 36): "a" is 10 ... "i" is 18
            out.append(str(s % 10))
            c = s // 10
        return str(c) + "".join(reversed(out))
    body = re.fullmatch(r"[SM]:(\d+)=", prompt).group(1)
    if task == "sort":
        c = Counter(body)
        return "".join(d * c[d] for d in "0123456789")
    return "".join(max(body[: j + 1]) for j in range(len(body)))


def oracle_heldout(prompt: str) -> bool:
    h = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(h[:8], "big") % HELDOUT_BUCKETS == 0


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_generators_are_deterministic_given_the_seed(task, split):
    """Same (task, n, seed, split) → the same problems; another seed → other problems.
    Reproducible data is what makes a training run and a report repeatable."""
    a = make_problems(task, 50, seed=7, split=split)
    assert a == make_problems(task, 50, seed=7, split=split)
    assert a != make_problems(task, 50, seed=8, split=split)


@pytest.mark.parametrize("task", TASKS)
def test_train_and_heldout_never_share_a_prompt(task):
    """No held-out problem can appear in training: every training prompt falls outside the
    held-out hash bucket and every held-out prompt inside it (hash recomputed here)."""
    train = make_problems(task, 4000, seed=0, split="train")
    held = make_problems(task, 1000, seed=0, split="heldout")
    assert not {p for p, _ in train} & {p for p, _ in held}
    assert all(oracle_heldout(p) for p, _ in held)
    assert not any(oracle_heldout(p) for p, _ in train)
    assert len({p for p, _ in held}) == len(held)  # held-out problems are distinct


@pytest.mark.parametrize("task", TASKS)
def test_answers_agree_with_an_independent_oracle_and_fit_the_layout(task):
    """The stored answer is correct, the checker accepts it and every oracle answer, and
    lengths fit P and G. ``solve`` gives an answer; ``answers`` gives all of them."""
    for prompt, answer in make_problems(task, 500, seed=3):
        want = oracle_answers(task, prompt)
        assert answer in want and solve(task, prompt) in want and set(answers(task, prompt)) == want
        assert all(check(task, prompt, a) for a in want)
        assert task_of(prompt) == task
        assert len(prompt) <= MAX_PROMPT_LEN and 1 <= len(answer) <= MAX_ANSWER_LEN


def test_generators_reach_the_hard_cases():
    """The cases that make commits consequential occur: a carry out of the top column and
    carries passed through runs of three or more 9-columns (carry), duplicates in every list
    (sort), a running maximum that climbs at least three times (cmax)."""
    carry = make_problems("carry", 500, seed=1)
    assert any(a[0] == "1" for _, a in carry) and any(a[0] == "0" for _, a in carry)
    # a run of 9-columns whose carry-in is 1: its digits all read 0 in the answer
    assert any(re.search(r"[a-i]999", p) and "000" in a for p, a in carry)
    assert all(set(p[2:-1]) <= set("0123456789abcdefghi") for p, _ in carry)
    for p, _ in make_problems("sort", 200, seed=1):
        body = p[2:-1]
        assert len(set(body)) < len(body)  # always duplicates
    assert {len(p) - 3 for p, _ in make_problems("sort", 500, seed=1)} == set(range(8, 13))
    climbs = [len(set(a)) for _, a in make_problems("cmax", 200, seed=1)]
    assert min(climbs) >= 2 and sum(c >= 4 for c in climbs) > 100


def test_pick_draws_each_mode_with_its_levels_probability():
    """Training answers keep the digits with probability PICK_P_KEEP[level]: per level, the
    observed keep fraction over 12000 problems (~2000 a level) lies within 4.5 binomial
    standard deviations (a wrong or inverted probability misses by > 10). The more probable
    answer is the one ``solve`` gives."""
    problems = make_problems("pick", 12000, seed=4)
    for level, p in PICK_P_KEEP.items():
        modes = [a[0] for q, a in problems if q[2] == level]
        n, kept = len(modes), modes.count("k")
        assert n > 1500
        assert abs(kept - n * p) <= 4.5 * (n * p * (1 - p)) ** 0.5, (level, kept / n, p)
    for q, _ in problems[:200]:
        assert solve("pick", q)[0] == ("k" if PICK_P_KEEP[q[2]] > 0.5 else "n")


@given(
    task=st.sampled_from(TASKS),
    seed=st.integers(0, 10**6),
    pos=st.integers(0, 100),
    kind=st.sampled_from(["substitute", "drop", "append", "swap_ends"]),
)
def test_checker_rejects_every_corrupted_answer(task, seed, pos, kind):
    """A one-edit corruption of a correct answer is never accepted (exact match; for pick
    one edit mixes the two modes). The corruptions are built to differ by construction: a
    substituted character is always a different one of the same class, a swap only of two
    different end characters."""
    (prompt, answer), = make_problems(task, 1, seed=seed)
    i = pos % len(answer)
    alphabet = "0123456789"
    if kind == "substitute" and answer[i] in "kn":  # pick's mode letter: the other mode
        bad = answer[:i] + {"k": "n", "n": "k"}[answer[i]] + answer[i + 1 :]
    elif kind == "substitute":
        c = alphabet[(alphabet.index(answer[i]) + 1 + pos % (len(alphabet) - 1)) % len(alphabet)]
        bad = answer[:i] + c + answer[i + 1 :]
    elif kind == "drop":
        bad = answer[:i] + answer[i + 1 :]
    elif kind == "append":
        bad = answer + alphabet[pos % len(alphabet)]
    else:
        if answer[0] == answer[-1]:
            bad = answer + answer[-1]  # fall back to a length change
        else:
            bad = answer[-1] + answer[1:-1] + answer[0]
    assert bad != answer
    assert not check(task, prompt, bad)
    assert check(task, prompt, answer)


@pytest.mark.parametrize(
    "task,completion",
    [("carry", ""), ("carry", "123456789012"), ("carry", "012345678901a"), ("sort", "1\x002"),
     ("cmax", "12"), ("cmax", ""), ("pick", "k1234567890"), ("pick", "x12345678901"),
     ("pick", "k1234567890a"), ("pick", "12345678901k")],
)
def test_parser_rejects_malformed_completions(task, completion):
    """Empty, wrong-length, non-digit or mask-holding completions parse to None."""
    assert parse_answer(task, completion) is None


def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="task"):
        make_problems("rev", 1, 0)
    with pytest.raises(ValueError, match="split"):
        make_problems("carry", 1, 0, split="test")
    with pytest.raises(ValueError, match="n must"):
        make_problems("carry", -1, 0)


@pytest.mark.parametrize("completion,kind", [
    ("k18019094484", "probable"),  # level t: P(keep) = 0.6
    ("n81980905515", "other mode"),
    ("k18019004484", "mixed"),  # digit 8 written flipped (9 -> 0)
    ("n18019094484", "mixed"),  # the flip letter on the kept digits
    ("k18019094487", "wrong"),  # 7 is neither 4 nor 5
    ("k1801909448", "malformed"),
    ("x18019094484", "malformed"),
])
def test_pick_kind_on_hand_built_completions(completion, kind):
    assert pick_kind("p:t18019094484=", completion) == kind


@given(seed=st.integers(0, 10**6), choice=st.lists(st.booleans(), min_size=12, max_size=12))
def test_pick_kind_is_mixed_exactly_when_tokens_come_from_both_answers(seed, choice):
    """A completion built token by token from the two oracle answers (independent of the
    code under test) is correct when every token comes from the same one, mixed otherwise."""
    (prompt, _), = make_problems("pick", 1, seed=seed)
    a, b = sorted(oracle_answers("pick", prompt))
    completion = "".join(x if c else y for c, x, y in zip(choice, a, b))
    kind = pick_kind(prompt, completion)
    if all(choice) or not any(choice):
        assert kind in ("probable", "other mode") and check("pick", prompt, completion)
    else:
        assert kind == "mixed" and not check("pick", prompt, completion)
