"""The result file: summaries, schema validation, atomic writes, fingerprints."""
import json
import statistics

import pytest

from experiments import results
from experiments.catalog import EXPERIMENTS


def fake_run(seed, acc, diverged=False):
    final = {k: (None if diverged else acc) for k in results.SUMMARY_KEYS}
    final["diverged"] = diverged
    return {"seed": seed, "history": [], "final": final}


def test_summary_is_mean_and_sample_std_over_converged_runs():
    runs = [fake_run(0, 0.8), fake_run(1, 0.9), fake_run(2, 0.85), fake_run(3, None, diverged=True)]
    s = results.summarize(runs)
    assert s["test_acc"]["mean"] == pytest.approx(statistics.mean([0.8, 0.9, 0.85]))
    assert s["test_acc"]["std"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.85]))
    assert s["test_acc"]["n"] == 3 and s["diverged"] == 1


def minimal(**over):
    obj = {"schema_version": results.SCHEMA_VERSION, "experiment": "x", "fingerprint": "f", "provenance": {},
           "variants": [{"name": "v", "params": {}, "runs": [fake_run(0, 0.5)], "summary": {}}]}
    obj.update(over)
    return obj


@pytest.mark.parametrize("bad, message", [
    ({"schema_version": 99}, "schema_version is 99"),
    ({"variants": "nope"}, "'variants' is missing"),
    ({"variants": [{"name": "v", "params": {}, "runs": [{"seed": 0, "history": [], "final": {}}], "summary": {}}]},
     "final lacks train_acc"),
])
def test_invalid_result_files_say_what_is_wrong(tmp_path, bad, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(minimal(**bad)))
    with pytest.raises(results.ResultError, match=message) as err:
        results.load(path)
    assert str(path) in str(err.value)


def test_truncated_json_is_reported(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(minimal())[:40])
    with pytest.raises(results.ResultError, match="not valid JSON"):
        results.load(path)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.json"
    results.write_atomic(path, minimal())
    before = path.read_bytes()
    with pytest.raises(ValueError):
        results.write_atomic(path, {"x": float("nan")})     # JSON cannot hold NaN
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]   # no temp file left behind


def test_fingerprint_tracks_spec_seeds_and_quick_only():
    exp = EXPERIMENTS["depth"]
    base = results.fingerprint(exp.specs(), [0, 1, 2], False)
    assert base == results.fingerprint(exp.specs(), [0, 1, 2], False)
    assert base != results.fingerprint(exp.specs(epochs=3), [0, 1, 2], False)
    assert base != results.fingerprint(exp.specs(), [0, 1], False)
    assert base != results.fingerprint(exp.specs(), [0, 1, 2], True)


def test_code_digest_ignores_comments_and_docstrings(tmp_path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('def f(x):\n    """Doc."""\n    return x + 1  # one\n')
    b.write_text('def f(x):\n    """Other words."""\n\n    return x + 1\n')
    c.write_text('def f(x):\n    return x + 2\n')
    assert results._code_digest(a) == results._code_digest(b) != results._code_digest(c)
