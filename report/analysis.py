"""The numbers the discussions need, computed from result dicts: one rule for summaries (the
engine's stats.interval) and one for choosing a variant (verdict)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from experiments import stats
from experiments.catalog import EXPERIMENTS
from experiments.results import by_seed

from .text import _na

# Analysis helpers: numbers the discussions need, computed from result dicts (never printed raw).

def summary(values) -> dict:
    """{mean, std, n, ci95} of the non-missing values: the rule experiments.results.summarize uses."""
    return stats.interval([v for v in values if not _na(v)])


def ok_runs(variant: dict) -> list[dict]:
    return [r for r in variant["runs"] if not r["final"]["diverged"]]


def best_variant(result: dict, key: str = "val_acc") -> dict | None:
    """The variant with the highest mean `key` (validation accuracy: the test set chooses nothing)."""
    scored = [v for v in result["variants"] if not _na(v["summary"].get(key, {}).get("mean"))]
    return max(scored, key=lambda v: v["summary"][key]["mean"]) if scored else None


def verdict(result: dict, key: str = "val_acc") -> dict | None:
    """What validation can say about an experiment's variants. `top` has the highest mean; it is
    the `winner` only when its seed-paired difference against the runner-up has a 95% interval
    that excludes zero. `tied`: the top and every variant whose paired difference against it
    includes zero. `diff`: the top's paired difference against the runner-up."""
    scored = sorted((v for v in result["variants"] if not _na(v["summary"].get(key, {}).get("mean"))),
                    key=lambda v: -v["summary"][key]["mean"])
    if not scored:
        return None
    top, rest = scored[0], scored[1:]
    against = [stats.paired_difference(by_seed(top, key), by_seed(v, key)) for v in rest]
    tied = [top] + [v for v, d in zip(rest, against) if not stats.excludes_zero(d["ci95"])]
    winner = top if not rest or stats.excludes_zero(against[0]["ci95"]) else None
    return {"top": top, "winner": winner, "tied": tied, "runner_up": rest[0] if rest else None,
            "diff": against[0] if rest else None, "n": top["summary"][key]["n"]}


def comparison(result: dict, variant: str, key: str = "val_acc") -> dict | None:
    """The result file's seed-paired comparison of `variant` against the control on `key`."""
    return next((c for c in result.get("comparisons", []) if c["variant"] == variant and c["metric"] == key), None)


def paired(a: dict, b: dict, key: str = "val_acc") -> dict:
    """Seed-paired difference a - b of two variants on `key` ({diff_mean, ci95, n}), for the
    comparisons a section asks besides those against its control; `differs`: whether the interval excludes 0."""
    d = stats.paired_difference(by_seed(a, key), by_seed(b, key))
    return {**d, "differs": stats.excludes_zero(d["ci95"])}


def single_view(variant: dict, key: str = "test_acc") -> list[float]:
    """Per run, `key` on the image alone: the last epoch's history where the final figure averages
    test-time views, else the final figure itself (one rule for the table and the intervals)."""
    shifted = variant["params"].get("test_time_shifts")
    values = [(r["history"][-1] if shifted and r["history"] else r["final"]).get(key) for r in ok_runs(variant)]
    return [x for x in values if not _na(x)]


def unpaired(a: dict, b: dict, key: str = "test_acc", single: bool = False) -> dict:
    """Difference a - b of two variants that no seed pairs (e.g. two models of different
    experiments), with Welch's interval: on final[key], or on one view (single_view) with
    single=True; `differs`: whether the interval excludes 0."""
    def values(v):
        return single_view(v, key) if single else [x for x in (r["final"].get(key) for r in ok_runs(v)) if not _na(x)]
    d = stats.unpaired_difference(values(a), values(b))
    return {**d, "differs": stats.excludes_zero(d["ci95"])}


def plateau(variants: list[dict], field: str, key: str = "val_acc") -> dict | None:
    """Where more of a numeric spec field (e.g. depth) stops helping: `at`, the smallest setting
    that no larger one beats beyond seed noise, and the seed-paired steps between neighboring
    settings up to it (`before`) and from it on (`after`): {lower, higher, diff}."""
    ranked = sorted((v for v in variants if v["params"].get(field) is not None), key=lambda v: v["params"][field])
    if len(ranked) < 2:
        return None
    def beats(w, v):
        d = paired(w, v, key)
        return d["differs"] and d["diff_mean"] > 0
    at = next(i for i, v in enumerate(ranked) if not any(beats(w, v) for w in ranked[i + 1:]))   # the last never loses
    steps = [{"lower": a, "higher": b, "diff": paired(b, a, key)} for a, b in zip(ranked, ranked[1:])]
    return {"at": ranked[at], "before": steps[:at], "after": steps[at:]}


def views_gain(variant: dict, key: str = "test_acc") -> dict:
    """What test-time views add, run by run: final[key] (five views) minus the last epoch's single-
    view history[key], seed-paired; `differs`: whether the interval excludes 0."""
    runs = [r for r in ok_runs(variant) if r["history"]]
    d = stats.paired_difference({r["seed"]: r["final"][key] for r in runs},
                                {r["seed"]: r["history"][-1][key] for r in runs})
    return {**d, "differs": stats.excludes_zero(d["ci95"])}


def with_and_without(variants: list[dict], flag: str, lr: float | None = None) -> list[dict]:
    """Per learning rate: the variants trained with and without the boolean spec field `flag` at
    that rate ({lr, with, without}), at `lr` or at each rate in order; the batch-norm section and its
    Summary sentence share this."""
    rates = [lr] if lr is not None else list(dict.fromkeys(v["params"].get("lr") for v in variants))
    pairs = []
    for rate in rates:
        at = [v for v in variants if v["params"].get("lr") == rate]
        on = next((v for v in at if v["params"].get(flag)), None)
        off = next((v for v in at if not v["params"].get(flag)), None)
        if on and off:
            pairs.append({"lr": rate, "with": on, "without": off})
    return pairs


def twin(section, variant: dict | None) -> dict | None:
    """The variant of another experiment's `section` trained with `variant`'s exact spec, and that
    experiment's control: {variant, control, result, identical}; `identical`: every run's history
    and final metrics equal, timings aside (the CPU engine repeats a spec and seed bit for bit)."""
    if not (section and section.result and variant):
        return None
    same = next((v for v in section.variants if v["params"] == variant["params"]), None)
    control = next((v for v in section.variants if v["name"] == section.result.get("control")), None)
    if not (same and control):
        return None
    def untimed(v):
        return [({k: x for k, x in r["final"].items() if k != "seconds"},
                 [{k: x for k, x in h.items() if k != "seconds"} for h in r["history"]]) for r in v["runs"]]
    return {"variant": same, "control": control, "result": section.result, "identical": untimed(same) == untimed(variant)}


def against_control(result: dict, key: str = "val_acc") -> dict | None:
    """The result file's seed-paired comparisons on `key`, split into the variants whose 95%
    interval excludes zero (`differ`) and those within seed noise of the control (`same`)."""
    rows = [c for c in result.get("comparisons", []) if c["metric"] == key and c["n"]]
    if not rows:
        return None
    return {"control": rows[0]["control"], "n": min(c["n"] for c in rows),
            "differ": [c for c in rows if stats.excludes_zero(c["ci95"])],
            "same": [c for c in rows if not stats.excludes_zero(c["ci95"])]}



# What a spec can switch on to regularize, with its value when off (catalog.RunSpec's fields)
REGULARIZERS = {"dropout": 0.0, "input_dropout": 0.0, "patience": 0, "l1": 0.0, "l2": 0.0, "weight_decay": 0.0,
                "label_smoothing": 0.0, "augment": "none", "batchnorm": False, "l1_proximal": False}


def unregularized_control(result: dict) -> bool:
    """Whether an experiment compares regularizers with training without any: its control has
    every regularizer off and some variant switches one on (depth's has none to switch on, and
    l1_proximal's control is itself penalised)."""
    params = {v["name"]: v.get("params") or {} for v in result.get("variants", [])}
    off = lambda p: all(p.get(k, value) == value for k, value in REGULARIZERS.items())  # noqa: E731
    control = params.get(result.get("control"))
    return control is not None and off(control) and not all(map(off, params.values()))


def holm_family(results: list[dict], key: str = "val_acc") -> dict:
    """Every comparison of a variant with its experiment's control, over all `results`, as one
    family under Holm's correction (stats.holm): with 30 comparisons at 95%, one or two intervals
    would exclude zero by chance alone if nothing differed. {m: the comparisons, differ: how many
    exclude zero at 95%, kept: how many of those the correction keeps, up: how many of those kept
    lie above their control, lost: experiment -> the variants that differ uncorrected but not
    after the correction, compared: the experiments with comparisons, beaten: those of them with
    a variant above the control after the correction, unbeaten: those whose control trains
    without regularizers and that no variant beats after the correction}."""
    rows = []
    for result in results:
        compared = against_control(result, key)
        if not compared:
            continue
        variants = {v["name"]: v for v in result["variants"]}
        control = by_seed(variants[compared["control"]], key)
        for c in compared["differ"] + compared["same"]:
            p = stats.paired_p_value(by_seed(variants[c["variant"]], key), control)
            rows.append((result["experiment"], c, p))
    rejected = stats.holm([p for _, _, p in rows])
    differ = [(e, c, r) for (e, c, _), r in zip(rows, rejected) if stats.excludes_zero(c["ci95"])]
    lost: dict[str, list[str]] = {}
    for experiment, c, r in differ:
        if not r:
            lost.setdefault(experiment, []).append(c["variant"])
    compared, beaten = list(dict.fromkeys(e for e, _, _ in rows)), {e for e, c, r in differ if r and c["diff_mean"] > 0}
    return {"m": len(rows), "differ": len(differ), "kept": sum(r for *_, r in differ),
            "up": sum(r and c["diff_mean"] > 0 for _, c, r in differ), "lost": lost, "compared": compared,
            "beaten": [e for e in compared if e in beaten],
            "unbeaten": [r["experiment"] for r in results
                         if r["experiment"] in compared and r["experiment"] not in beaten and unregularized_control(r)]}


def above_controls(results: list[dict], named: int = 2, lost: dict | None = None) -> tuple[list[tuple[int, str]], int, int]:
    """Where variants beat their control beyond seed noise (validation accuracy), for the abstract:
    (count, control) of the `named` experiments with the most such variants (catalog order among
    equals), then how many more variants beat the controls of how many other experiments. The
    abstract names a few controls and stays short however many experiments the catalog holds.
    `lost`: experiment -> variants not counted (those Holm's correction leaves within noise)."""
    found = []
    for result in results:
        compared = against_control(result)
        left_out = (lost or {}).get(result.get("experiment"), [])
        up = [c for c in compared["differ"] if c["diff_mean"] > 0 and c["variant"] not in left_out] if compared else []
        if up:
            found.append((len(up), up[0]["control"]))
    ranked = sorted(found, key=lambda f: -f[0])      # stable: catalog order among equal counts
    return ranked[:named], sum(n for n, _ in ranked[named:]), len(ranked[named:])

def gap(variant: dict, a: str = "train_acc", b: str = "val_acc") -> dict:
    """Per-seed a - b (generalization gap), summarized."""
    return summary(r["final"][a] - r["final"][b] for r in ok_runs(variant))


def weight_count(variant: dict) -> int | None:
    """Number of weights (matrices and conv kernels, biases and norms left out) of the first run."""
    runs = ok_runs(variant)
    return sum(layer["size"] for layer in runs[0]["final"]["weights"]["layers"]) if runs else None


def diff(x: dict, y: dict) -> float | None:
    """Difference of two summary means (x - y)."""
    if not isinstance(x, dict) or not isinstance(y, dict) or _na(x.get("mean")) or _na(y.get("mean")):
        return None
    return x["mean"] - y["mean"]


def reach(variant: dict, target: float, key: str = "val_acc") -> dict:
    """First epoch with history[key] >= target, and the training seconds spent until then."""
    epochs, seconds = [], []
    for run in ok_runs(variant):
        spent = 0.0
        for h in run["history"]:
            spent += h["seconds"] or 0.0
            if not _na(h.get(key)) and h[key] >= target:
                epochs.append(h["epoch"])
                seconds.append(spent)
                break
    return {"reached": len(epochs), "runs": len(variant["runs"]), "epochs": summary(epochs),
            "seconds": summary(seconds), "target": target}


def last_epoch(variant: dict, key: str) -> dict:
    """history[-1][key] over seeds: the plain single-view number of the last epoch's weights. It
    differs from the final one only where that uses test-time shifts or restored early-stopping weights."""
    return summary(r["history"][-1].get(key) for r in ok_runs(variant) if r["history"])


def stopping(variant: dict) -> dict:
    """Epochs trained and epoch of the lowest validation loss, over seeds."""
    runs = ok_runs(variant)
    return {"epochs": summary(r["final"]["epochs"] for r in runs),
            "best_epoch": summary(r["final"].get("best_epoch") for r in runs),
            "max_epochs": variant["params"].get("epochs"), "patience": variant["params"].get("patience")}


def first_layer(variant: dict) -> dict:
    """Fraction of first-layer weights with |w| < threshold (and exactly 0), over seeds."""
    runs = [r for r in ok_runs(variant) if r["final"].get("weights", {}).get("layers")]
    layers = [r["final"]["weights"]["layers"][0] for r in runs]
    thresholds = {r["final"]["weights"]["zero_threshold"] for r in runs}
    return {"threshold": thresholds.pop() if len(thresholds) == 1 else None,
            "near_zero": summary(l["frac_near_zero"] for l in layers),
            "exact_zero": summary(l["frac_exact_zero"] for l in layers),
            "name": layers[0]["name"] if layers else None, "size": layers[0]["size"] if layers else None}


OPTIMIZER_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}   # RunSpec.optimizer as the papers write it


def method_of(params: dict) -> tuple[str, float | None]:
    """Which weight regularizer a variant uses, and its strength (from its params, not its name)."""
    if params.get("l1"):
        return ("L1 proximal step" if params.get("l1_proximal") else "L1 penalty in the loss"), params["l1"]
    if params.get("l2"):
        return "L2 penalty in the loss", params["l2"]
    if params.get("weight_decay"):
        optimizer = params.get("optimizer", "")
        return f"decoupled weight decay ({OPTIMIZER_NAMES.get(optimizer, optimizer)})", params["weight_decay"]
    return "none", None


def methods(result: dict) -> list[dict]:
    """Per regularization method (first-seen order): its variants, the best strength on validation
    and the weakest strength tried (None for no penalty)."""
    groups: dict[str, list] = {}
    for v in result["variants"]:
        groups.setdefault(method_of(v["params"])[0], []).append(v)
    out = []
    for name, variants in groups.items():
        best = best_variant({"variants": variants})
        strengths = [s for s in (method_of(v["params"])[1] for v in variants) if s is not None]
        out.append({"method": name, "variants": variants, "best": best,
                    "strength": method_of(best["params"])[1] if best else None,
                    "weakest": min(strengths) if strengths else None})
    return out


def curve_panels(result: dict) -> list[dict] | None:
    """The methods whose training curves get a column of their own, each beside the control, where
    one panel would crowd them: more than six variants in two or more regularization methods (the
    weight-penalty experiments). None: every variant in one panel. figures.curves and the figure's
    caption both ask this, so the caption describes the figure drawn."""
    groups = [g for g in methods(result) if g["method"] != "none"]
    has_control = any(v["name"] == result.get("control") for v in result["variants"])
    return groups if len(result["variants"]) > 6 and len(groups) > 1 and has_control else None


def per_class(result: dict, variant: dict) -> list[dict]:
    """Test accuracy per class over seeds, from the confusion matrices; class names from the result.
    `by_seed`: seed -> the class's accuracy, for class_ties."""
    names = result["data"]["classes"]
    runs = [r for r in ok_runs(variant) if r["final"].get("confusion")]
    out = []
    for i, name in enumerate(names):
        rows = {r["seed"]: r["final"]["confusion"][i] for r in runs}
        by = {seed: row[i] / sum(row) for seed, row in rows.items() if sum(row)}
        out.append({"name": name, "acc": summary(by.values()), "by_seed": by})
    return out


def class_ties(classes: list[dict], i: int) -> list[dict]:
    """The classes (per_class rows) that classes[i] cannot be told apart from: their
    seed-paired difference in accuracy (the same runs) has a 95% interval that includes zero. A
    ranking of classes says 'followed by' only where the next one differs."""
    me = classes[i]
    return [c for c in classes if c is not me
            and not stats.excludes_zero(stats.paired_difference(me["by_seed"], c["by_seed"])["ci95"])]


def param_changes(result: dict) -> list[tuple[str, str]]:
    """(parameter, value) where every variant differs from the base RunSpec the result records."""
    default = result["base"]
    params = [v["params"] for v in result["variants"]]
    shared = {k: params[0][k] for k in params[0] if all(p.get(k) == params[0][k] for p in params)}
    return [(k, v) for k, v in shared.items() if k in default and default[k] != v]


def restamp_changes(sections: list) -> list[dict]:
    """The engine changes accepted without retraining (experiments/restamp.py), one per change (its
    base commit and files), with the results it was checked on: a change is checked on many
    results at once, and a row per result repeated the change's facts on every row."""
    changes: dict = {}
    for s in sections:
        for r in (s.result or {}).get("provenance", {}).get("restamps", []):
            key = (r.get("from_commit"), tuple(r.get("changed_files", [])))
            c = changes.setdefault(key, {"from_commit": r.get("from_commit"), "files": list(key[1]),
                                         "checked": (r.get("started") or "")[:10], "seconds": 0.0, "results": [],
                                         "against_code": 0})
            c["against_code"] += len(r.get("compared_with_code_here", []))   # runs matched with the code before
            c["checked"] = min(filter(None, (c["checked"], (r.get("started") or "")[:10])), default="")
            c["seconds"] += r.get("wall_seconds") or 0.0
            c["results"].append({"name": s.path.name, "retrained": len(r.get("checked_runs", [])),
                                 "runs": r.get("runs_in_result")})
    return sorted(changes.values(), key=lambda c: c["checked"])


def distinct(sections: list, *path: str) -> list:
    """Sorted distinct values of result[path...] (e.g. provenance, packages, torch) over the loaded results."""
    out = set()
    for s in sections:
        if s.result:
            node = s.result
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                out.add(node if isinstance(node, (str, int, float, bool)) else json.dumps(node))
    return sorted(out, key=str)


def concurrent(section, sections: list) -> list[str]:
    """File names of the other results whose computation overlapped this one's in time on the
    same machine (platform and CPU count, as the provenance records them): their wall-clock
    training times shared the cores, so they compare the cost of two models only roughly."""
    def window(result):
        p = result["provenance"]
        try:
            start = datetime.fromisoformat(p["started"])
            return start, start + timedelta(seconds=float(p["wall_seconds"])), (p.get("platform"), p.get("cpu_count"))
        except (KeyError, TypeError, ValueError):
            return None
    mine = window(section.result) if section and section.result else None
    if not mine:
        return []
    others = [(s.path.name, window(s.result)) for s in sections if s is not section and s.result]
    return sorted(name for name, w in others if w and w[2] == mine[2] and w[0] < mine[1] and mine[0] < w[1])


def elapsed_seconds(provenances: list[dict]) -> float:
    """Seconds during which at least one of these commands ran: the union of their windows
    [started, started + wall_seconds]. Commands that ran side by side count once, so this is
    less than the sum of their wall times (a window without both fields is left out)."""
    windows = []
    for p in provenances:
        try:
            start = datetime.fromisoformat(p["started"])
            windows.append((start, start + timedelta(seconds=float(p["wall_seconds"]))))
        except (KeyError, TypeError, ValueError):
            continue
    total, end = 0.0, None
    for start, stop in sorted(windows):
        if end is None or start > end:
            total, end = total + (stop - start).total_seconds(), stop
        elif stop > end:
            total, end = total + (stop - end).total_seconds(), stop
    return total


def by_precision(sections: list) -> dict[str, list]:
    """{precision: [sections]} from the specs the result files record, so the Method section can
    say which experiments left the base precision instead of leaving each section to say it."""
    out = {}
    for s in sections:
        for precision in sorted({v["params"].get("precision") for v in s.variants} - {None}):
            out.setdefault(precision, []).append(s)
    return out


def measure(variants: list[dict], fn) -> list[dict]:
    """[{variant, value: fn(variant)}] for each variant, e.g. measure(sec.variants, gap)."""
    return [{"variant": v, "value": fn(v)} for v in variants]


def order(items: list[dict], key: str = "value", reverse: bool = False) -> list[dict]:
    """Items sorted by the mean of the summary at the dotted path `key` (missing means last)."""
    def mean(item):
        for part in key.split("."):
            item = item.get(part) if isinstance(item, dict) else None
        return None if not isinstance(item, dict) or _na(item.get("mean")) else item["mean"]
    have = [i for i in items if mean(i) is not None]
    return sorted(have, key=mean, reverse=reverse) + [i for i in items if mean(i) is None]


def gpu_agreement(check: dict) -> dict:
    """The GPU check's comparison of each variant's mean test accuracy with the committed CPU result:
    how many agree within two standard errors of the difference, which do not (largest first), how
    many GPU means lie below the CPU's and the mean difference (a shared offset shows there).
    Variants that repeat another experiment's setup (the same spec and seeds in the catalog) are
    listed under `repeats` and counted once under `setups` / `setups_agree`: they are no new check."""
    rows = [{"experiment": e, **r} for e, rs in check["agreement"].items() for r in rs if r["agrees"] is not None]
    outside = sorted((r for r in rows if not r["agrees"]), key=lambda r: -abs(r["diff"]))
    first: dict = {}
    repeats = []
    for r in rows:
        exp = EXPERIMENTS.get(r["experiment"])
        spec = exp.specs().get(r["variant"]) if exp else None
        key = (spec, exp.seeds) if spec else (r["experiment"], r["variant"])
        if key in first:
            repeats.append({**r, "repeats": first[key]})
        else:
            first[key] = r
    return {"n": len(rows), "agree": len(rows) - len(outside), "outside": outside,
            "below": sum(r["diff"] < 0 for r in rows), "mean_diff": summary([r["diff"] for r in rows])["mean"],
            "repeats": repeats, "setups": len(first), "setups_agree": sum(bool(r["agrees"]) for r in first.values())}


def gpu_time(check: dict) -> dict:
    """Where the GPU check's study spent its time, summed over experiments (each population records
    its build, training steps, per-epoch evaluation and finishing: stacked.StackedRun.train), its
    two slowest experiments, and the memory-cap step's outcome per cap: populations as trained after
    splits, or the refusal or failure it ended with. Empty parts where the check predates them."""
    phases: dict = {}
    for exp in check.get("experiments", {}).values():
        for name, seconds in exp.get("phase_seconds", {}).items():
            phases[name] = phases.get(name, 0.0) + seconds
    timed = [(name, e["seconds"]) for name, e in check.get("experiments", {}).items() if "seconds" in e]
    caps = [{"share": t["share"], "populations": len(t["populations"]), "smallest": min(t["populations"]),
             "identical": t["against_uncapped"]["bit_identical"], "runs": t["against_uncapped"]["runs"],
             "largest_difference": t["against_uncapped"]["largest_train_loss_difference"]} if "populations" in t
            else {"share": t["share"], "refused": t.get("does_not_fit"), "error": t.get("error")}
            for t in check.get("memory_cap", {}).get("tries", [])]
    return {"phases": phases, "slowest": sorted(timed, key=lambda nt: -nt[1])[:2], "caps": caps}


def uneven_epochs(variants: list[dict]) -> bool:
    """Whether some variant's runs trained different numbers of epochs (early stopping, divergence):
    only then does a curve's late epoch average fewer seeds than its first, and its caption says so."""
    return any(len({len(r["history"]) for r in v["runs"]}) > 1 for v in variants)


HELPERS = {"summary": summary, "best_variant": best_variant, "gap": gap, "diff": diff, "reach": reach,
           "stopping": stopping, "last_epoch": last_epoch, "first_layer": first_layer, "methods": methods,
           "method_of": method_of, "per_class": per_class, "class_ties": class_ties, "param_changes": param_changes, "ok_runs": ok_runs,
           "order": order, "measure": measure, "weight_count": weight_count, "verdict": verdict,
           "against_control": against_control, "above_controls": above_controls, "comparison": comparison, "paired": paired,
           "unpaired": unpaired, "single_view": single_view, "plateau": plateau, "views_gain": views_gain,
           "twin": twin, "with_and_without": with_and_without, "binomial_se": stats.binomial_se,
           "gpu_agreement": gpu_agreement, "gpu_time": gpu_time, "uneven_epochs": uneven_epochs,
           "curve_panels": curve_panels}
