"""The result file: summaries, schema validation, atomic writes, fingerprints."""
import ast
import json
import statistics
import sys

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
           "variants": [{"name": "v", "params": {}, "runs": [fake_run(0, 0.5)],
                         "summary": results.summarize([fake_run(0, 0.5)])}], "comparisons": [],
           "base": {}, "data": {}}
    obj.update(over)
    return obj


@pytest.mark.parametrize("bad, message", [
    ({"schema_version": 99}, "schema_version is 99"),
    ({"variants": "nope"}, "'variants' is missing"),
    ({"variants": [{"name": "v", "params": {}, "runs": [{"seed": 0, "history": [], "final": {}}], "summary": {}}]},
     "final lacks train_acc"),
    ({"comparisons": None}, "'comparisons' is missing .* restat"),
    ({"base": None}, "'base' is missing .* restat"),
    ({"variants": [{"name": "v", "params": {}, "runs": [fake_run(0, 0.5)], "summary": {"val_acc": {"mean": 0.5}}}]},
     "no 95% interval in summary.val_acc; .* restat"),
])
def test_invalid_result_files_say_what_is_wrong(tmp_path, bad, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(minimal(**bad)))
    with pytest.raises(results.ResultError, match=message) as err:
        results.load(path)
    assert str(path) in str(err.value)


def test_an_old_result_names_the_make_target_that_remakes_it(tmp_path):
    """make knows results/NAME.json, not the absolute path the report loads it by."""
    inside = results.PROJECT_ROOT / "results" / "depth.json"
    with pytest.raises(results.ResultError, match=r"remake it with `make results/depth\.json`"):
        results.validate(minimal(schema_version=0), inside)
    with pytest.raises(results.ResultError, match=r"run `make results/nothing-here\.json`"):
        results.load(results.PROJECT_ROOT / "results" / "nothing-here.json")
    outside = tmp_path / "r.json"                                      # elsewhere: the path as given
    with pytest.raises(results.ResultError, match=f"make {outside}"):
        results.validate(minimal(schema_version=0), outside)


def test_truncated_json_is_reported(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(minimal())[:40])
    with pytest.raises(results.ResultError, match=f"{path}: not valid JSON"):
        results.load(path)


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


# Source with most kinds of syntax a module has, Python 3.10's included: optional fields set and
# unset, defaults, decorators, async, try/except, comprehensions, match, and an f-string with a
# nested format spec (which Python 3.12 parses with an extra empty string).
ALL_KINDS_OF_SYNTAX = '''
"""A module docstring, left out of the digest."""
from __future__ import annotations
import math as m


@decorator(1, key=None)
class Box(Base, metaclass=Meta):
    """A docstring."""
    size: int = 3

    def area(self, *args, scale: float = 1.0, **kw) -> float:
        total = sum(x * scale for x in args if x)
        return f"{total!r:>{self.size}} {m.pi:.2f}" or (lambda y=2: y ** 2)

    async def wait(self):
        async with lock as held:
            await held
        try:
            pass
        except (KeyError, ValueError) as err:
            raise RuntimeError("no") from err
        finally:
            del self.size


match [1, 2]:
    case [a, *rest] if a > 0:
        x = {k: v for k, v in zip(rest, rest)}
    case {"key": _, **others}:
        x = None
'''


def test_a_code_digest_is_the_same_on_every_python():
    """The committed results' fingerprints hash Python 3.11's ast.dump. The same source must give
    the same digest on another Python (the GPU machine runs 3.12), or every committed result
    looks stale there and `make all` trains the whole study again. The value is 3.11's, from
    sha256(ast.dump(tree)) before the digest had its own dump; 3.10, 3.12 and 3.13 give it too."""
    assert results.source_digest(ALL_KINDS_OF_SYNTAX) == \
        "5ba49cbab160953a7ed0865708cbeb6e9c11fe0167381fb648c87961177f033f"
    # characters whose repr() escapes them on some versions only (Unicode 14 and 15 emoji: 3.10
    # escapes both, 3.11 the second); the value is the one 3.10-3.13 all give
    assert results.source_digest('a = "\U0001FA75"\nb = "\U0001FAE0 \u00b1 \u00e9"\n') == \
        "695121d9dc63c1391c45028b70fbe6fe76360f91ec4cfcb3bb12cb59a963cd1f"


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the committed fingerprints are Python 3.11's ast.dump")
def test_the_syntax_dump_is_python_3_11s_ast_dump():
    for path in [*sorted(results.ENGINE_DIR.glob("*.py")), None]:     # ASCII: ascii() is repr() there
        tree = ast.parse(path.read_text() if path else ALL_KINDS_OF_SYNTAX)
        assert results.syntax_dump(tree) == ast.dump(tree), path


def test_code_digests_are_kept_between_processes_and_an_edit_is_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "DIGEST_CACHE", tmp_path / "digests.json")
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    first = results._code_digest(module)
    parse = results._tree_digest
    monkeypatch.setattr(results, "_tree_digest", lambda *a: pytest.fail("parsed again: the cache was not used"))
    assert results._code_digest(module) == first                  # as a second process finds it
    monkeypatch.setattr(results, "_tree_digest", lambda *a: "parsed anew")
    with monkeypatch.context() as m:                               # nor one that other digest code made
        m.setattr(results, "_digest_code", lambda: "results.py edited")
        assert results._code_digest(module) == "parsed anew"
    monkeypatch.setattr(results, "_tree_digest", parse)
    module.write_text("x = 22\n")                                 # an edit changes mtime and size
    assert results._code_digest(module) not in (first, None)
    (tmp_path / "digests.json").write_text("{damaged")
    assert results._code_digest(module) == parse(str(module.resolve()), module.stat().st_mtime_ns, module.stat().st_size)


def test_comparisons_pair_each_variant_with_the_control_seed_by_seed():
    control = {"name": "c", "runs": [fake_run(0, 0.80), fake_run(1, 0.90), fake_run(2, 0.85)]}
    better = {"name": "b", "runs": [fake_run(0, 0.81), fake_run(1, 0.911), fake_run(2, 0.862), fake_run(3, 0.99)]}
    broken = {"name": "x", "runs": [fake_run(0, None, diverged=True), fake_run(1, 0.95), fake_run(2, 0.95)]}
    rows = results.comparisons([control, better, broken], "c")
    assert [(r["variant"], r["metric"]) for r in rows] == [("b", "val_acc"), ("b", "test_acc"),
                                                          ("x", "val_acc"), ("x", "test_acc")]
    b = rows[0]
    assert b["control"] == "c" and b["n"] == 3             # seed 3 has no partner
    assert b["diff_mean"] == pytest.approx(0.011)
    assert b["ci95"][0] > 0                                # nearly the same gain on every seed: excludes zero
    assert rows[2]["n"] == 2                               # the diverged seed is left out


def depth_result_without_statistics() -> dict:
    """A current depth result (this checkout's fingerprint) as an older engine wrote it: no
    intervals, comparisons or self-description."""
    exp = EXPERIMENTS["depth"]
    specs = exp.specs()
    obj = minimal(experiment="depth", comparisons=None, seeds=[0, 1, 2],
                  fingerprint=results.fingerprint(specs, [0, 1, 2], False))
    del obj["base"], obj["data"]
    obj["variants"] = [{"name": n, "params": spec.as_dict(), "summary": {},
                        "runs": [fake_run(s, 0.8 + i / 10 + s / 100) for s in range(3)]}
                       for i, (n, spec) in enumerate(specs.items())]
    return obj


def test_restat_adds_intervals_comparisons_and_description_and_keeps_the_runs(tmp_path):
    from experiments import describe
    from experiments.__main__ import main
    obj = depth_result_without_statistics()
    runs_before = json.dumps([v["runs"] for v in obj["variants"]])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(obj))
    assert main(["restat", str(path)]) == 0
    out = results.load(path)
    assert json.dumps([v["runs"] for v in out["variants"]]) == runs_before
    assert out["control"] == "2 hidden" and out["comparisons"][0]["variant"] == "1 hidden"
    assert out["comparisons"][0]["diff_mean"] == pytest.approx(-0.1)
    assert out["variants"][1]["summary"]["val_acc"]["ci95"][0] < 0.91 < out["variants"][1]["summary"]["val_acc"]["ci95"][1]
    assert out["base"]["width"] == 256 and out["data"] == describe.data_constants()


def test_restat_refuses_a_result_of_other_engine_code(tmp_path, capsys):
    from experiments.__main__ import main
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**depth_result_without_statistics(), "fingerprint": "f" * 64}))
    before = path.read_bytes()
    assert main(["restat", str(path)]) == 1
    assert "other engine code" in capsys.readouterr().err and path.read_bytes() == before
