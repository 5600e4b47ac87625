"""The committed golden vectors (tests/golden/int4_vectors.json, SPEC §1).

The file is verified through the library and through the CLI; a corrupted copy must fail
with the right tcId and a non-zero exit. The hard-case flags are checked against the data
with NumPy here, so a flag cannot claim a case the vector does not contain.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fairref.cli import main
from fairref.quant.golden import NOTES, SCHEMA_VERSION, verify_vectors

VECTORS = Path(__file__).parent / "golden" / "int4_vectors.json"


@pytest.fixture(scope="module")
def doc():
    return json.loads(VECTORS.read_text())


def _tests(doc, type_, flag=None):
    for g in doc["testGroups"]:
        if g["type"] == type_:
            for t in g["tests"]:
                if flag is None or flag in t["flags"]:
                    yield g, t


def _f32(d):
    return np.array([float.fromhex(h) for h in d["hex"]], dtype=np.float64).astype(np.float32) \
        .reshape(d["shape"])


def _i(d):
    return np.array(d["int"], dtype=np.int64).reshape(d["shape"])


def test_committed_vectors_verify_through_library():
    report = verify_vectors(VECTORS)
    assert report.total > 100 and report.failed == []


def test_committed_vectors_verify_through_cli_main(capsys):
    assert main(["golden", "--verify", str(VECTORS)]) == 0
    assert "OK" in capsys.readouterr().out


def _corrupt(doc, tmp_path):
    """Flip the last mantissa bit of one expected x̂ value; return (path, tcId)."""
    bad = json.loads(json.dumps(doc))
    _, t = next(_tests(bad, "QuantizeTest", "Random"))
    v = float.fromhex(t["xhat"]["hex"][0])
    t["xhat"]["hex"][0] = float(np.nextafter(np.float32(v), np.float32(np.inf))).hex()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    return path, t["tcId"]


def test_corrupted_copy_fails_with_its_tcid(doc, tmp_path):
    path, tc = _corrupt(doc, tmp_path)
    report = verify_vectors(path)
    assert report.failed == [tc] and "xhat" in report.reasons[tc]


def test_corrupted_copy_fails_cli_subprocess_nonzero(doc, tmp_path):
    path, tc = _corrupt(doc, tmp_path)
    r = subprocess.run([sys.executable, "-m", "fairref", "golden", "--verify", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and f"tcId {tc}" in r.stdout


def test_file_has_wycheproof_shape_and_every_flag_is_explained(doc):
    assert doc["schema"] == SCHEMA_VERSION and doc["header"] and doc["notes"] == NOTES
    ids = [t["tcId"] for g in doc["testGroups"] for t in g["tests"]]
    assert ids == list(range(1, len(ids) + 1)) == list(range(1, doc["numberOfTests"] + 1))
    used = {f for g in doc["testGroups"] for t in g["tests"] for f in t["flags"]}
    assert used <= set(doc["notes"])
    assert {"Tie", "NearTie", "AllZero", "Outlier", "Extremes", "OddK"} <= used
    assert VECTORS.stat().st_size < 1_000_000


def test_tie_vectors_hold_exact_halves_rounded_to_even(doc):
    """In each Tie vector most x/s are exactly k + ½, and each of those q is the even
    neighbour (+ z), clamped to the grid."""
    n = 0
    for g, t in _tests(doc, "QuantizeTest", "Tie"):
        spec = g["spec"]
        x, q, z = _f32(t["x"]), _i(t["q"]), _i(t["zero"])
        s = _f32(t["scale"])
        if spec["granularity"] == "group":
            s, z = np.repeat(s, spec["groupSize"], -1), np.repeat(z, spec["groupSize"], -1)
        ratio = (x / s).astype(np.float64)
        half = (ratio - np.floor(ratio)) == 0.5
        assert half.mean() >= 0.5  # all but the 1–2 elements per unit that fix the scale
        fl = np.floor(ratio)
        even = np.where(fl % 2 == 0, fl, fl + 1)  # the even neighbour of k + ½
        b = spec["bits"]
        lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if spec["symmetric"] else (0, 2**b - 1)
        assert (q[half] == np.clip(even + z, lo, hi)[half]).all()  # clamped at the grid ends
        n += 1
    assert n >= 10


def test_near_tie_vectors_separate_division_from_reciprocal(doc):
    """Each NearTie vector has an element where round(x/s) ≠ round(x·fl(1/s)); q = x/s's."""
    n = 0
    for g, t in _tests(doc, "QuantizeTest", "NearTie"):
        spec = g["spec"]
        x, q, s = _f32(t["x"]), _i(t["q"]), _f32(t["scale"])
        if spec["granularity"] == "group":
            s = np.repeat(s, spec["groupSize"], -1)
        s = np.broadcast_to(s, x.shape)
        by_div = np.round(x / s)
        by_rec = np.round(x * (np.float32(1) / s))
        split = by_div != by_rec
        assert split.any()
        assert (q[split] == np.clip(by_div[split], -(2 ** (spec["bits"] - 1)),
                                    2 ** (spec["bits"] - 1) - 1)).all()
        n += 1
    assert n >= 10


def test_flagged_edge_cases_are_present_in_the_data(doc):
    for g, t in _tests(doc, "QuantizeTest", "Extremes"):
        b, sym = g["spec"]["bits"], g["spec"]["symmetric"]
        lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if sym else (0, 2**b - 1)
        q = _i(t["q"])
        assert q.min() == lo and q.max() == hi
    for g, t in _tests(doc, "QuantizeTest", "AllZero"):
        s = _f32(t["scale"])
        assert (s == 1).any()
    for g, t in _tests(doc, "PackInt4Test", "OddK"):
        assert t["q"]["shape"][-1] % 2 == 1
    for g, t in _tests(doc, "QuantizeTest", "InvalidInput"):
        assert t["result"] == "invalid" and not np.isfinite(_f32(t["x"])).all()


def test_dead_hessian_vectors_zero_the_dead_columns(doc):
    """GptqTest with H_ii = 0: those columns carry no signal, so GPTQ sets W[:, i] = 0 → q = 0."""
    n = 0
    for g, t in _tests(doc, "GptqTest", "DeadHessian"):
        assert g["spec"]["symmetric"]  # so a zero weight is q = 0
        dead = np.diag(_f32(t["H"])) == 0
        assert dead.any() and (_i(t["q"])[:, dead] == 0).all()
        n += 1
    assert n >= 1


# --- not a vectors file: ValueError naming the file; the writer is atomic ------------------------


@pytest.mark.parametrize("content,says", [
    (b"\x89PNG\r\n", "not a JSON text file"),
    (b"{", "not valid JSON"),
    (b"[]", "holds a JSON list"),
    (b'{"schema": null}', "schema None, not"),
    (b'{"schema": "fairref-int4-vectors/1", "testGroups": {}}', "'testGroups'"),
    (b'{"schema": "fairref-int4-vectors/1", "testGroups": [1]}', r"testGroups\[0\]"),
])
def test_a_file_that_is_not_a_vectors_file_is_a_value_error_naming_it(tmp_path, content, says):
    f = tmp_path / "v.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=says) as e:
        verify_vectors(f)
    assert str(f) in str(e.value)


def test_a_malformed_invalid_vector_is_reported_not_raised(doc, tmp_path):
    """An 'invalid' vector missing its inputs is a failing tcId, not a crash."""
    bad = json.loads(json.dumps(doc))
    t = next(t for _, t in _tests(bad, "QuantizeTest", "InvalidInput"))
    del t["x"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    report = verify_vectors(path)
    assert report.failed == [t["tcId"]] and "KeyError" in report.reasons[t["tcId"]]


def test_writer_refuses_a_directory_and_leaves_no_temporary(tmp_path, monkeypatch):
    from fairref.quant import golden_cases

    monkeypatch.setattr(golden_cases, "build_vectors", lambda: {"numberOfTests": 0})
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        golden_cases.write_vectors(tmp_path / "d")
    assert golden_cases.write_vectors(tmp_path / "sub" / "v.json") == 0  # folder created
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "sub", "v.json"]


def test_the_encoder_does_not_import_the_case_builders():
    """STYLE: dependencies point one way — golden_cases uses golden's codecs, never back."""
    import ast

    import fairref.quant.golden as g

    tree = ast.parse(Path(g.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("golden_cases" in m for m in imported if m)
