"""The report's figures, drawn from result files alone, as the catalog entry of each experiment asks
(Experiment.figures): `draw_stale` redraws an experiment's figures only when their fingerprint (the
result file's bytes, this module's code, matplotlib's version) changed, recorded beside them in
<figures>/<name>.fingerprint. Fresh figures cost no matplotlib import.

Every curve is a mean over seeds with a band of its 95% Student's t interval; every accuracy has
95% interval error bars; n is in the legend or caption.  SVGs are deterministic (fixed hash salt, no date) so re-rendering from the
same results changes no byte.
"""
from __future__ import annotations

import base64
import hashlib
from importlib import metadata
from pathlib import Path

from experiments import results as results_mod
from experiments.catalog import EXPERIMENTS

from .analysis import best_variant, curve_panels, per_class, summary

plt = np = None   # matplotlib and numpy, imported by _plotting() only when a figure is drawn


def _plotting():
    global plt, np
    if plt is None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot
        import numpy
        plt, np = matplotlib.pyplot, numpy
        plt.rcParams.update({"svg.hashsalt": "fmreport", "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
                             "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100})


def _save(fig, out_dir: Path, name: str) -> Path:
    path = out_dir / name
    with results_mod.replacing(path) as tmp:    # a reader never sees half a figure
        fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return path


def _half_width(values) -> float:
    """Half the width of the 95% interval of the mean of `values` (analysis.summary, the report's
    one rule; 0 for one value)."""
    return _half(summary([float(v) for v in values]))


def _half(s: dict) -> float:
    return s["ci95"][1] - s["mean"] if s.get("ci95") else 0.0


def _curve(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Epochs, mean and 95%-interval half-width of `key` over the runs that did not diverge (runs
    may stop early: each epoch averages the runs that reached it)."""
    ok = [r for r in runs if not r["final"]["diverged"]]
    longest = max((len(r["history"]) for r in ok), default=0)
    mean, half = [], []
    for e in range(longest):
        vals = [r["history"][e][key] for r in ok if len(r["history"]) > e]
        mean.append(np.mean(vals))
        half.append(_half_width(vals))
    return np.arange(1, longest + 1), np.array(mean), np.array(half), len(ok)


def _plot_curves(variant: dict, color: str, ax_loss, ax_acc) -> None:
    """One variant's mean curves with their 95% bands: train (solid) and validation (dashed) loss
    on ax_loss, validation accuracy on ax_acc, labelled with its name and n."""
    for key, style, ax in (("train_loss", "-", ax_loss), ("val_loss", "--", ax_loss), ("val_acc", "-", ax_acc)):
        x, m, s, n = _curve(variant["runs"], key)
        if not n:
            continue
        scale = 100 if key.endswith("acc") else 1
        name = f"{variant['name']} (n={n})" if key == "val_acc" else None
        ax.plot(x, m * scale, style, color=color, label=name, lw=1.3)
        ax.fill_between(x, (m - s) * scale, (m + s) * scale, color=color, alpha=0.2, lw=0)


def curves(result: dict, out_dir: Path) -> Path:
    """Loss (train solid, validation dashed) and validation accuracy per epoch, per variant; one
    column per regularization method, each with the control, where one panel would crowd them
    (analysis.curve_panels)."""
    panels = curve_panels(result)
    if panels:
        return _curves_by_method(result, panels, out_dir)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(7.5, 3.0))
    for i, v in enumerate(result["variants"]):
        _plot_curves(v, f"C{i}", ax_loss, ax_acc)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss: train (solid), validation (dashed)")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy, mean, 95% interval")
    if len(result["variants"]) > 4:   # inside the axes, a long legend would hide the last epochs' curves
        fig.set_size_inches(9.0, 3.0)
        ax_acc.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    else:
        ax_acc.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, out_dir, f"{result['experiment']}-curves.svg")


def _curves_by_method(result: dict, panels: list[dict], out_dir: Path) -> Path:
    """curves() as small multiples: loss (top) and validation accuracy (bottom), one column per
    method, each holding the control (black) and the method's strengths, on shared axes."""
    control = next(v for v in result["variants"] if v["name"] == result["control"])
    cols = len(panels)
    # 2.6 inches a column: at the text's width the type stays near its set size (3.0 shrank it to ~5 pt);
    # the height keeps the page layout the 3.0 x 4.6 of three columns had
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 4.0), sharex=True, sharey="row", squeeze=False)
    for c, group in enumerate(panels):
        ax_loss, ax_acc = axes[0][c], axes[1][c]
        _plot_curves(control, "black", ax_loss, ax_acc)
        for i, v in enumerate(group["variants"]):
            _plot_curves(v, f"C{i}", ax_loss, ax_acc)
        ax_loss.set_title(group["method"])
        ax_acc.set(xlabel="epoch")
    # accuracy rises and levels off: room below the curves (the row shares its axis) holds each
    # column's legend, in the type size of the other figures, over no curve
    lo, hi = axes[1][0].get_ylim()
    axes[1][0].set_ylim(lo - 0.5 * (hi - lo), hi)
    for c in range(cols):
        axes[1][c].legend(loc="lower right", framealpha=0.85)
    axes[0][0].set(ylabel="loss\ntrain solid, val. dashed")
    axes[1][0].set(ylabel="validation accuracy (%)")
    fig.tight_layout()
    return _save(fig, out_dir, f"{result['experiment']}-curves.svg")


def accuracy(result: dict, out_dir: Path) -> Path:
    """Train, validation and test accuracy per variant: mean with 95%-interval error bars."""
    variants = result["variants"]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(variants) + 1.0))
    y = np.arange(len(variants))
    for j, (key, label) in enumerate((("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test"))):
        means = [100 * (v["summary"][key]["mean"] or np.nan) for v in variants]
        halves = [100 * _half_width([r["final"][key] for r in v["runs"] if not r["final"]["diverged"]])
                  for v in variants]
        ax.errorbar(means, y + (j - 1) * 0.22, xerr=halves, fmt="o", ms=4, capsize=3, label=label, color=f"C{j}")
    ax.set_yticks(y, [f"{v['name']} (n={v['summary']['test_acc']['n']})" for v in variants])
    ax.invert_yaxis()
    ax.set(xlabel="accuracy (%), mean over seeds with its 95% interval")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, f"{result['experiment']}-accuracy.svg")


def weights(result: dict, out_dir: Path) -> list[Path]:
    """First-layer weight histograms and per-pixel weight mass, one panel per variant (seed 0)."""
    variants = [v for v in result["variants"] if not v["runs"][0]["final"]["diverged"]
                and "first_layer" in v["runs"][0]["final"]["weights"]]
    if not variants:
        return []
    cols = min(5, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.55 * rows + 0.3), sharex=True, sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(variants):]:
        ax.axis("off")
    for ax, v in zip(axes.flat, variants):
        h = v["runs"][0]["final"]["weights"]["first_layer"]
        edges, counts = np.array(h["edges"]), np.array(h["counts"])
        ax.bar(edges[:-1], counts / counts.sum(), width=np.diff(edges), align="edge", color="C0")
        ax.set_yscale("log")
        ax.set_title(v["name"], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("weight value")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction")
    fig.tight_layout()
    paths = [_save(fig, out_dir, f"{result['experiment']}-histograms.svg")]

    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat[len(variants):]:
        ax.axis("off")
    for ax, v in zip(axes.flat, variants):
        mass = np.array(v["runs"][0]["final"]["weights"]["first_layer"]["pixel_l1"]).reshape(28, 28)
        image = ax.imshow(mass / mass.max(), cmap="magma", vmin=0, vmax=1)
        ax.set_title(v["name"], fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.colorbar(image, ax=axes, shrink=0.6, label="weight mass / the variant's largest")
    paths.append(_save(fig, out_dir, f"{result['experiment']}-pixels.svg"))
    return paths


def confusion(result: dict, out_dir: Path) -> list[Path]:
    """Test-set confusion matrix (summed over seeds) and per-class accuracy (mean, 95% interval)."""
    v = best_variant(result)   # the report's one rule: chosen on validation
    mats = np.array([r["final"]["confusion"] for r in v["runs"] if not r["final"]["diverged"]])
    total = mats.sum(0)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    norm = total / total.sum(1, keepdims=True)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(10):
        for j in range(10):
            if total[i, j]:
                ax.text(j, i, f"{100 * norm[i, j]:.0f}" if norm[i, j] >= 0.005 else "·", ha="center",
                        va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    classes = result["data"]["classes"]
    ax.set_xticks(range(10), classes, rotation=45, ha="right")
    ax.set_yticks(range(10), classes)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{v['name']}: % of each true class (test, {len(mats)} seeds pooled)")
    fig.tight_layout()
    paths = [_save(fig, out_dir, f"{result['experiment']}-confusion.svg")]

    by_class = per_class(result, v)      # the numbers the report's per-class text uses
    # dots, not bars: the axis spans the accuracies, not zero to 100, and a bar's length would mislead
    fig, ax = plt.subplots(figsize=(7.5, 2.3))
    means = [100 * c["acc"]["mean"] for c in by_class]
    ax.errorbar(range(10), means, yerr=[100 * _half(c["acc"]) for c in by_class] if len(mats) > 1 else None,
                fmt="o", ms=4, capsize=3, color="C0")
    for x, m in enumerate(means):   # the intervals are often narrower than the dots: the value itself
        ax.annotate(f"{m:.1f}", (x, m), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.margins(y=0.18)
    ax.set_xticks(range(10), classes, rotation=30, ha="right")
    ax.set(ylabel="test accuracy (%)", title=f"per-class test accuracy, mean and 95% interval over {len(mats)} seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, out_dir, f"{result['experiment']}-per-class.svg"))

    wrong = v["runs"][0]["final"].get("misclassified")
    if wrong:
        pixels = result.get("examples", {}).get("images", {})
        rows, cols = result["data"]["image_size"]
        fig, axes = plt.subplots(3, 8, figsize=(7.5, 3.8))
        for ax, item in zip(axes.flat, wrong):
            image = np.frombuffer(base64.b64decode(pixels[str(item["index"])]), dtype=np.uint8).reshape(rows, cols)
            ax.imshow(image, cmap="gray_r")
            ax.set_title(f"{classes[item['true']]}\n→ {classes[item['pred']]}", fontsize=7)
            ax.axis("off")
        for ax in axes.flat[len(wrong):]:
            ax.axis("off")
        fig.tight_layout()
        paths.append(_save(fig, out_dir, f"{result['experiment']}-misclassified.svg"))
    return paths


# (one variant's accuracy bars would only repeat its table row, so a single-variant result has none)
KINDS = {"curves": lambda r, d: [curves(r, d)],
         "accuracy": lambda r, d: [accuracy(r, d)] if len(r["variants"]) > 1 else [],
         "weights": weights, "confusion": confusion}


# The code a figure's pixels depend on: this file and the summaries it takes from the report's
# analysis and the statistics module.
FIGURE_CODE = (Path(__file__), Path(__file__).with_name("analysis.py"), results_mod.ENGINE_DIR / "stats.py")


def fingerprint(result_path: Path, kinds) -> str:
    """What an experiment's figures depend on: its result file, the figures it asks for, their code
    (FIGURE_CODE) and matplotlib's version (SVG bytes change with it)."""
    try:
        mpl = metadata.version("matplotlib")
    except metadata.PackageNotFoundError:
        mpl = None
    h = hashlib.sha256(Path(result_path).read_bytes())
    code = [results_mod._code_digest(path) for path in FIGURE_CODE]
    h.update(repr((sorted(kinds), code, mpl)).encode())
    return h.hexdigest()


def draw(result: dict, out_dir: Path, kinds) -> list[Path]:
    """Every figure of `kinds` (catalog figure kinds) for one result, as SVGs in `out_dir`."""
    _plotting()
    out_dir.mkdir(parents=True, exist_ok=True)
    return [p for kind in kinds for p in KINDS[kind](result, out_dir)]


def draw_stale(sections, out_dir: Path, log=print) -> list[Path]:
    """Redraw the figures of every loaded section whose figure fingerprint changed or one of whose
    figures is gone; return the SVGs drawn. The fingerprint file is written last, so an interrupted
    drawing is redone next time."""
    drawn = []
    for sec in sections:
        if sec.result is None:
            continue
        exp = EXPERIMENTS.get(sec.name)
        kinds = exp.figures if exp else ("curves", "accuracy")
        stamp = out_dir / f"{sec.name}.fingerprint"   # the key, then the names of the files drawn
        key = fingerprint(sec.path, kinds)
        recorded = stamp.read_text().split() if stamp.is_file() else []
        if recorded[:1] == [key] and all((out_dir / name).is_file() for name in recorded[1:]):
            continue
        paths = draw(sec.result, out_dir, kinds)
        results_mod.write_atomic(stamp, "\n".join([key, *(p.name for p in paths)]) + "\n")
        log(f"drew {len(paths)} figure(s) of {sec.path.name} into {out_dir}")
        drawn += paths
    return drawn
