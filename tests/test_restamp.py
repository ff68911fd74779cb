"""`experiments restamp`: a change to the engine's code is accepted for a result only when retraining
a sample of its runs with the changed code repeats them bit for bit; otherwise nothing changes.
The end-to-end test works in a scratch git repository holding a copy of the engine."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from experiments import planning, restamp, results


def test_first_difference_names_the_first_differing_number():
    stored = {"history": [{"epoch": 1, "val_acc": 0.5}], "final": {"test_acc": 0.8866, "epochs": 1}}
    again = json.loads(json.dumps(stored))
    assert restamp.first_difference(stored, again) is None
    again["final"]["test_acc"] = 0.8867
    assert restamp.first_difference(stored, again) == "final.test_acc: stored 0.8866, now 0.8867"
    again["history"].append({"epoch": 2})
    assert restamp.first_difference(stored, again).startswith("history: ")   # a run that trained longer


def test_only_wall_clock_seconds_are_left_out_of_the_comparison():
    run = {"seed": 0, "history": [{"epoch": 1, "seconds": 1.5, "lr": 0.1}],
           "final": {"test_acc": 0.9, "seconds": 20.0, "confusion": [[1, 2], [3, 4]]}}
    assert restamp.measured(run) == {"history": [{"epoch": 1, "lr": 0.1}],
                                     "final": {"test_acc": 0.9, "confusion": [[1, 2], [3, 4]]}}


def test_a_restamp_entry_must_say_what_it_retrained(tmp_path):
    result = results.load(ROOT / "results" / "depth.json")
    result["provenance"]["restamps"] = [{"from_commit": "abc", "checked_runs": []}]
    with pytest.raises(results.ResultError, match="checked_runs"):
        results.validate(result, tmp_path / "depth.json")


def test_a_current_result_is_left_as_it_is(tmp_path):
    path = tmp_path / "depth.json"           # a copy: in a checkout whose engine changed it would retrain
    shutil.copy2(ROOT / "results" / "depth.json", path)
    if not planning.made_by_this_engine(results.load(path)):
        pytest.skip("results/depth.json is stale in this checkout (tests/test_committed.py says so)")
    before, said = path.read_bytes(), []
    assert restamp.restamp(path, ["restamp", str(path)], log=said.append) is False   # nothing retrained
    assert path.read_bytes() == before and "nothing to do" in said[0]


def test_restamp_of_results_glob_skips_the_benches_files_and_sums_up(tmp_path):
    """`restamp results/*.json`, as README writes it, meets bench.json and gpu-check.json too: they
    are skipped, saying so, not refused with a remedy that cannot work."""
    for name in ("bench.json", "gpu-check.json", "depth.json"):
        shutil.copy2(ROOT / "results" / name, tmp_path / name)
    if not planning.made_by_this_engine(results.load(tmp_path / "depth.json")):
        pytest.skip("results/depth.json is stale in this checkout (tests/test_committed.py says so)")
    proc = subprocess.run([sys.executable, "-m", "experiments", "restamp", *sorted(map(str, tmp_path.glob("*.json")))],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{tmp_path / 'bench.json'}: not an experiment's result (a bench or GPU-check file); skipped" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "restamp: 1 current, 2 skipped"


def test_a_result_not_current_at_the_given_commit_says_which_commit_to_give(tmp_path):
    path = tmp_path / "depth.json"
    result = results.load(ROOT / "results" / "depth.json")
    result["fingerprint"] = "0" * 64          # current nowhere
    results.write_atomic(path, result)
    with pytest.raises(results.ResultError, match=r"a commit at which it was current .*--from HEAD~1"):
        restamp.restamp(path, ["restamp", str(path)], log=lambda *a: None)


def test_a_result_records_the_cpu_whose_kernels_made_it():
    cpu = results.provenance("cpu", ["run", "depth"], results.now())["cpu"]
    assert cpu == results.cpu_identity() and cpu["name"]
    if Path("/proc/cpuinfo").exists():   # Linux: what chooses MKL's and oneDNN's code paths
        assert cpu["family"] and cpu["model"] and cpu["vector_extensions"].split() == sorted(cpu["vector_extensions"].split())


def test_a_differing_rerun_blames_the_change_only_on_a_cpu_that_made_or_checked_the_result(monkeypatch):
    here = {"name": "AMD EPYC", "family": "25", "model": "17", "stepping": "1", "vector_extensions": "avx2"}
    other = {**here, "model": "160"}
    monkeypatch.setattr(results, "cpu_identity", lambda: here)
    assert restamp.difference_cause({"cpu": here}).startswith("the change alters results")
    assert restamp.difference_cause({"cpu": other, "restamps": [{"cpu": here}]}).startswith("the change alters")
    matched_code_only = {"cpu": other, "restamps": [{"cpu": here, "compared_with_code_here": ["v / seed 0"]}]}
    assert "may explain it rather than the change" in restamp.difference_cause(matched_code_only)   # here repeats none
    elsewhere = restamp.difference_cause({"cpu": other})
    assert "may explain it rather than the change" in elsewhere and "family 25 model 160 stepping 1" in elsewhere
    assert "--verify" in elsewhere
    assert "does not record the CPU that made it" in restamp.difference_cause({})   # results made before it was
    same = restamp.difference_cause({"cpu": other}, same_code=True)   # --verify with the code that made it
    assert "rounds differently from the one that did" in same and "model 160" in same


def test_an_unknown_revision_is_named():
    with pytest.raises(results.ResultError, match="no-such-commit"):
        results.digests_at("no-such-commit")("train.py")


def test_the_engine_has_no_import_cycles():
    """Imports between the modules of experiments/ and of report/, function-level ones included
    (only type-checking imports are left out), form no cycle."""
    for package in ("experiments", "report"):
        graph = {}
        for path in (ROOT / package).glob("*.py"):
            tree = ast.parse(path.read_text())
            typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                           and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
            deps = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in typing_only:
                    deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            graph[path.stem] = deps

        def visit(name, trail):
            assert name not in trail, f"{package}: import cycle {' -> '.join([*trail, name])}"
            for dep in sorted(graph.get(name, ())):
                visit(dep, [*trail, name])
        for name in graph:
            visit(name, [])


# ----------------------------------------------------------------------------------------------
# End to end, in a scratch repository

@pytest.fixture()
def repo(tmp_path):
    """A git repository with a copy of the engine (sharing the verified data) and one commit."""
    dest = tmp_path / "project"
    shutil.copytree(ROOT / "experiments", dest / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "data").symlink_to(ROOT / "data")
    git(dest, "init", "-q")
    commit(dest, "engine")
    return dest


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def commit(repo, message):
    git(repo, "add", "experiments")
    git(repo, "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", message)


def cli(repo, *args):
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=repo,
                          capture_output=True, text=True, timeout=600)


def edit(repo, name, old, new):
    path = Path(repo) / "experiments" / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
def test_a_refactor_is_restamped_and_a_change_of_behaviour_is_refused(repo):
    out = repo / "depth.json"
    made = cli(repo, "run", "depth", "--quick", "--seeds", "2", "--threads", "1", "--out", str(out))
    assert made.returncode == 0, made.stderr
    base = git(repo, "rev-parse", "HEAD")
    kept = out.read_bytes()
    verified = cli(repo, "restamp", "--verify", str(out))   # this machine repeats it: said, nothing written
    assert verified.returncode == 0 and "repeat the stored ones bit for bit on this machine" in verified.stdout
    assert out.read_bytes() == kept

    # a refactor: the same computation written differently (train.lr_at without its early return)
    edit(repo, "train.py", '''    if spec.schedule == "cosine":
        return spec.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return spec.lr''', '''    factor = 0.5 * (1 + math.cos(math.pi * step / total_steps)) if spec.schedule == "cosine" else None
    return spec.lr if factor is None else spec.lr * factor''')
    before = json.loads(out.read_text())
    done = cli(repo, "restamp", str(out))
    assert done.returncode == 0, done.stderr
    after = json.loads(out.read_text())
    entry = after["provenance"]["restamps"][-1]
    assert entry["checked_runs"] == [f"{v} / seed 0" for v in ("1 hidden", "2 hidden", "3 hidden", "4 hidden")]
    assert entry["runs_in_result"] == 8 and entry["changed_files"] == ["train.py"]
    assert entry["from_commit"] == base and entry["from_fingerprint"] == before["fingerprint"]
    assert after["fingerprint"] == entry["to_fingerprint"] != before["fingerprint"]
    assert after["variants"] == before["variants"]                       # what the runs measured stays
    current = cli(repo, "run", "depth", "--quick", "--seeds", "2", "--out", str(out), "--if-stale", "--device", "cpu")
    assert current.returncode == 0 and "up to date" in current.stdout, current.stdout + current.stderr

    # a change of behaviour: the learning rate of every step
    commit(repo, "refactor")
    edit(repo, "train.py", "return spec.lr if factor is None else spec.lr * factor",
         "return (spec.lr if factor is None else spec.lr * factor) * 0.999")
    kept = out.read_bytes()
    refused = cli(repo, "restamp", str(out))
    assert refused.returncode == 1
    assert "1 hidden seed 0 trained again differs from the stored run" in refused.stderr
    assert "the change alters results" in refused.stderr      # the result records this machine's CPU
    assert "make" in refused.stderr and out.read_bytes() == kept
    again = cli(repo, "restamp", "--verify", str(out))         # nor does --verify accept the changed code
    assert again.returncode == 1 and "differs from the stored run" in again.stderr and out.read_bytes() == kept

    # the result is not current at the commit that is said to have made it
    commit(repo, "lr")
    unknown = cli(repo, "restamp", str(out))
    assert unknown.returncode == 1 and "not a result of the engine code at 'HEAD'" in unknown.stderr
    assert out.read_bytes() == kept


@pytest.mark.slow
def test_on_a_cpu_that_rounds_otherwise_the_change_is_set_against_the_code_before_it_trained_here(repo):
    """A result made on another CPU, whose stored runs this CPU does not repeat (stood in for by one
    stored number nudged, and another CPU in its provenance): a refactor is restamped because the
    code before it, trained here, gives the same run as the code after it, and the restamp says which
    runs were so compared; a change of behaviour is refused because the two codes differ here."""
    out = repo / "depth.json"
    made = cli(repo, "run", "depth", "--quick", "--seeds", "1", "--threads", "1", "--out", str(out))
    assert made.returncode == 0, made.stderr
    result = json.loads(out.read_text())
    result["provenance"]["cpu"] = {"name": "Another CPU", "family": "6", "model": "143", "stepping": "8",
                                   "vector_extensions": "avx512_bf16"}
    first = result["variants"][0]["runs"][0]["history"][0]
    first["train_loss"] = first["train_loss"] + 1e-7             # what another CPU's rounding looks like
    results.write_atomic(out, results.validate(result, out))
    kept = out.read_bytes()
    train = (repo / "experiments" / "train.py").read_text()
    edit(repo, "train.py", "return spec.lr * 0.5 * (1 + math.cos(", "return spec.lr * 0.4995 * (1 + math.cos(")   # behaviour
    refused = cli(repo, "restamp", str(out))
    assert refused.returncode == 1 and out.read_bytes() == kept
    assert "the code at HEAD and the checkout's, both trained on this machine, give different runs" in refused.stderr
    assert "the change alters results" in refused.stderr

    (repo / "experiments" / "train.py").write_text(train)
    edit(repo, "train.py", '''    if spec.schedule == "cosine":
        return spec.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return spec.lr''', '''    factor = 0.5 * (1 + math.cos(math.pi * step / total_steps)) if spec.schedule == "cosine" else None
    return spec.lr if factor is None else spec.lr * factor''')   # a refactor
    done = cli(repo, "restamp", str(out))
    assert done.returncode == 0, done.stderr
    assert "1 hidden seed 0: this CPU does not repeat the stored run (history[0].train_loss" in done.stdout
    entry = json.loads(out.read_text())["provenance"]["restamps"][-1]
    assert entry["compared_with_code_here"] == ["1 hidden / seed 0"] and len(entry["checked_runs"]) == 4
    assert ("3 retrained run(s) repeat the stored ones bit for bit; 1 match, bit for bit, the runs the code at HEAD "
            "gives on this machine") in done.stdout
