"""Helpers of the method comparison (fairref.eval.compare).

Each is checked against its definition: shares against a float64 NumPy group sum, the
standard deviation against ``statistics.stdev``, distinct problems against the stream
they are drawn from, and the tree comparison on differences made just inside and just
outside its tolerance.
"""

import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.eval.compare import (compare_trees, label_shares, mean_std,
                                  per_problem)
from fairref.toy.tasks import distinct_problems, make_problems


@st.composite
def rows_and_labels(draw):
    """Non-negative (N, G) values with one of up to 4 labels per row; one label may own
    almost all the mass (the heavy-tailed case the pooled prior shows)."""
    n, g = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    vals = draw(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=n * g, max_size=n * g))
    labels = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    v = np.array(vals, dtype=np.float64).reshape(n, g)
    if draw(st.booleans()):  # one row dominates by many orders of magnitude
        v[draw(st.integers(0, n - 1))] += 1e12
    v[0, 0] += 1.0  # the total is never 0
    return v, labels


@given(rows_and_labels())
def test_label_shares_are_group_sums_over_the_total_and_sum_to_one(case):
    """share(k) = Σ_{rows of k} Σ_j v / Σ v (the definition), to float64 rounding."""
    v, labels = case
    got = label_shares(torch.from_numpy(v), labels)
    lab = np.array(labels)
    total = v.sum()
    assert list(got) == list(dict.fromkeys(labels))
    for k, s in got.items():
        assert s == pytest.approx(v[lab == k].sum() / total, rel=1e-12, abs=1e-15)
    assert sum(got.values()) == pytest.approx(1.0, rel=1e-12)


def test_label_shares_refuses_a_zero_total_and_mismatched_labels():
    with pytest.raises(ValueError, match="shares are undefined"):
        label_shares(torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="one label per row"):
        label_shares(torch.ones(2, 3), ["a"])


def test_distinct_problems_are_the_first_distinct_prompts_of_the_stream():
    """No repeats, and in the stream's order: the first n distinct of a long draw."""
    got = distinct_problems("pick", 40, seed=3)
    assert len({p for p, _ in got}) == 40
    stream, seen = [], set()
    for p, a in make_problems("pick", 4000, 3, "train"):
        if p not in seen:
            seen.add(p)
            stream.append((p, a))
    assert got == stream[:40]
    with pytest.raises(ValueError, match="n must be >= 0"):
        distinct_problems("pick", -1, seed=0)


@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), max_size=8))
def test_mean_std_is_the_sample_mean_and_stdev_of_the_present_values(xs):
    got = mean_std(xs)
    x = [v for v in xs if v is not None]
    assert got["n"] == len(x)
    if not x:
        assert got["mean"] is None and got["std"] is None
        return
    assert got["mean"] == pytest.approx(statistics.fmean(x), rel=1e-12, abs=1e-6)
    if len(x) < 2:
        assert got["std"] is None
    else:
        assert got["std"] == pytest.approx(statistics.stdev(x), rel=1e-9, abs=1e-6)


def test_compare_trees_tolerates_rounding_and_reports_real_differences():
    old = {"a": [1, 2.0, "x"], "b": {"c": 0.5, "d": None}}
    assert compare_trees({"a": [1, 2.0 * (1 + 1e-8), "x"], "b": {"c": 0.5, "d": None}}, old) == []
    diffs = compare_trees({"a": [1, 2.0 * (1 + 1e-4), "x"], "b": {"c": 0.5, "d": 1.0}}, old)
    assert [d.split(":")[0] for d in diffs] == ["/a[1]", "/b/d"]
    assert compare_trees({"a": [1, 2]}, {"a": [1]}) == ["/a: length 2 != 1"]
    assert compare_trees({"a": 2}, {"a": 3}) == ["/a: 2 != 3"]  # counts exactly


def test_per_problem_reads_the_outcome_arrays_of_a_model_result():
    acc = SimpleNamespace(correct=np.array([True, False]))
    tf = SimpleNamespace(token_flips=np.array([0, 3]))
    mm = SimpleNamespace(mismatched=np.array([1, 0]))
    out = per_problem(SimpleNamespace(accuracy=acc, teacher_forced=tf, mismatch=mm))
    assert out["correct"].tolist() == [1.0, 0.0]
    assert out["token_flips"].tolist() == [0.0, 3.0]
    assert out["mismatched"].tolist() == [1.0, 0.0]
    assert per_problem(SimpleNamespace(accuracy=acc, teacher_forced=None, mismatch=None)).keys() \
        == {"correct"}
