"""The report renderer (report/build.py) on a small fixture result set written here, never trained:
sections, headline number, escaping, missing results, determinism, PDF text, and the HTML in a
headless browser (no console errors, no request to another host, every figure drawn)."""
from __future__ import annotations

import fcntl
import html.parser
import importlib.util
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from experiments import catalog, describe, results, stats

ROOT = Path(__file__).resolve().parent.parent
EVIL = "<script>alert(1)</script>*x*"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                              shutil.which("google-chrome")) if p and os.path.exists(p)), None)
needs_poppler = pytest.mark.skipif(not (shutil.which("pdftotext") and shutil.which("pdfinfo")),
                                   reason="pdftotext/pdfinfo not installed (apt-get install poppler-utils)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")


def load_build():
    spec = importlib.util.spec_from_file_location("report_build", ROOT / "report" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()


# --- fixture results: minimal valid result files, deterministic numbers --------------------------

def fake_run(seed: int, quality: float, epochs: int, rng: random.Random) -> dict:
    history = []
    for e in range(1, epochs + 1):
        acc = quality - 0.08 / e + 0.002 * rng.random()
        history.append({"epoch": e, "train_loss": 0.9 / e, "train_acc": acc + 0.02, "val_loss": 0.95 / e + 0.01,
                        "val_acc": acc, "test_loss": 0.97 / e + 0.01, "test_acc": acc - 0.004, "lr": 1e-3,
                        "seconds": 1.5 + 0.1 * rng.random()})
    last = history[-1]
    confusion = [[0] * 10 for _ in range(10)]
    for i in range(10):
        right = int(1000 * (quality - 0.03 * (i == 6)))
        confusion[i][i], confusion[i][(i + 1) % 10] = right, 1000 - right
    layers = [{"name": "1.weight", "size": 784 * 16, "l1": 100.0, "l2": 3.0,
               "frac_near_zero": 0.02 + 0.01 * rng.random(), "frac_exact_zero": 0.0},
              {"name": "3.weight", "size": 160, "l1": 5.0, "l2": 1.0, "frac_near_zero": 0.01, "frac_exact_zero": 0.0}]
    final = {**{k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")},
             "epochs": epochs, "best_epoch": epochs, "seconds": sum(h["seconds"] for h in history),
             "diverged": False, "confusion": confusion,
             "weights": {"zero_threshold": 1e-3, "layers": layers,
                         "first_layer": {"edges": [-0.2, 0.0, 0.2], "counts": [5, 7], "pixel_l1": [1.0] * 784}},
             "misclassified": [{"index": i, "true": 6, "pred": 0} for i in range(seed, seed + 24)]}
    return {"seed": seed, "history": history, "final": final}


def current_fingerprint(name: str, seeds: int) -> str:
    """The fingerprint this checkout gives the catalog's experiment `name` at `seeds` seeds, so the
    fixture counts as current (a test makes one stale on purpose)."""
    exp = catalog.EXPERIMENTS.get(name)
    return results.fingerprint(exp.specs(), list(range(seeds)), False) if exp else "0" * 64


def fake_result(name: str, variants: dict[str, dict], seeds: int = 2, epochs: int = 3) -> dict:
    rng = random.Random(name)
    out = []
    for i, (vname, params) in enumerate(variants.items()):
        runs = [fake_run(s, 0.86 + 0.01 * i, epochs, rng) for s in range(seeds)]
        out.append({"name": vname, "params": params, "runs": runs, "summary": results.summarize(runs)})
    result = results.restat({"schema_version": results.SCHEMA_VERSION, "experiment": name, "description": f"fixture for {name}",
            "fingerprint": current_fingerprint(name, seeds), "quick": False, "seeds": list(range(seeds)),
            "provenance": {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False,
                           "packages": {"torch": "2.14.1", "torchvision": "0.29.1", "numpy": "2.4.6", "tqdm": "4"},
                           "python": "3.11.7", "platform": "Linux-test", "device": "cpu", "cpu_count": 2,
                           "started": "2025-01-02T03:04:05+00:00", "wall_seconds": 123.4,
                           "command": f"python -m experiments run {name}"},
            "variants": out}, out[0]["name"])
    exp = catalog.EXPERIMENTS.get(name)
    return describe.describe(result, exp) if exp else result


def write_fixture(folder: Path) -> dict:
    """A result file for every catalog experiment (the report draws their figures from them)."""
    written = {}
    for name, exp in catalog.EXPERIMENTS.items():
        variants = {v: spec.as_dict() for v, spec in exp.specs().items()}
        if name == "dropout":
            variants[EVIL] = next(iter(exp.specs().values())).as_dict()
        written[name] = fake_result(name, variants)
        if name == "batchnorm":          # one run that diverged, as the engine records it
            last = written[name]["variants"][-1]
            last["runs"][0]["final"].update({k: None for k in results.SUMMARY_KEYS if k not in ("epochs", "seconds")},
                                            diverged=True, diverged_epoch=2)
            results.restat(written[name], written[name]["control"])
    best = catalog.RunSpec(width=1024, dropout=0.5, epochs=3).as_dict()
    written["best"] = fake_result("best", {"headline MLP": best}, seeds=5)
    for name, obj in written.items():
        results.write_atomic(folder / f"{name}.json", obj)
    return written


def render(results_dir: Path, out: Path, *flags: str) -> int:
    return build.main(["--results", str(results_dir), "--out", str(out), *flags])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    res = base / "results"
    res.mkdir()
    data = write_fixture(res)
    assert render(res, base / "out") == 0
    return {"base": base, "results": res, "data": data, "out": base / "out",
            "html": (base / "out" / "report.html").read_text(encoding="utf-8")}


class TextAndHeadings(html.parser.HTMLParser):
    """Visible text of an HTML page (scripts/styles dropped) and the text of its headings."""

    def __init__(self):
        super().__init__()
        self.text, self.headings, self._skip, self._heading = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "svg", "math"):
            self._skip += 1
        if re.fullmatch(r"h[1-6]", tag):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("script", "style", "svg", "math"):
            self._skip -= 1
        if re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.headings.append(" ".join("".join(self._heading).split()))
            self._heading = None

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)
            if self._heading is not None:
                self._heading.append(data)


def parse(page: str) -> TextAndHeadings:
    p = TextAndHeadings()
    p.feed(page)
    return p


def visible_text(page: str) -> str:
    return " ".join("".join(parse(page).text).split())


def section_titles() -> list[str]:
    essays = [re.search(r"^## (.*?) \{#", (ROOT / "report" / e).read_text(), re.M).group(1) for e in build.ESSAYS]
    return [*build.TOP_SECTIONS, *essays, *(catalog.EXPERIMENTS[n].heading for n in build.section_names())]


def pdf_text(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return " ".join(unicodedata.normalize("NFKC", out).split())


# --- tests ----------------------------------------------------------------------------------------

def test_every_section_heading_is_in_the_html(rendered):
    headings = parse(rendered["html"]).headings
    for title in section_titles():
        assert any(h == title or re.fullmatch(r"[\d.]+ " + re.escape(title), h) for h in headings), \
            f"no heading {title!r} in {headings}"


def test_headline_number_is_the_fixture_value_through_the_same_filter(rendered):
    summary = rendered["data"]["best"]["variants"][0]["summary"]["test_acc"]
    expected = str(build.ci(summary))
    assert "\u00a0[" in expected                                 # kept on one line with its interval
    assert f"test accuracy of {' '.join(expected.split())} (mean and 95% interval" in visible_text(rendered["html"])
    assert str(build.pct(build.ORIGINAL_STUDY_TEST_ACC, 0)) in rendered["html"]


def test_strings_from_results_are_escaped(rendered):
    page = rendered["html"]
    assert "<script>alert" not in page
    assert "<em>x</em>" not in page
    assert EVIL in visible_text(page)      # shown literally, not interpreted
    assert "&lt;script&gt;alert(1)&lt;/script&gt;*x*" in page


def test_numbering_agrees_and_references_resolve(rendered):
    page = rendered["html"]
    assert "??" not in page
    assert re.search(r'<a href="#sec-regularization">Section 3\.\d+</a>', page), "@sec-regularization not linked"
    assert "@sec-" not in page
    for ident in re.findall(r'href="#((?:fig|tbl|sec)-[\w-]+)"', page):
        assert f'id="{ident}"' in page, f"link to #{ident} has no target"
    captions = re.findall(r"<figcaption>(Figure \d+):", page)
    assert captions == [f"Figure {i}" for i in range(1, len(captions) + 1)]
    typ = (rendered["out"] / "build" / "report.typ").read_text()
    assert "#set figure(numbering: none)" in typ


@pytest.mark.slow
def test_missing_result_shows_a_box_and_strict_fails(rendered, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(rendered["results"], res)
    (res / "dropout.json").unlink()
    (res / "depth.json").write_text("{ not json")
    assert render(res, tmp_path / "out") == 0
    page = visible_text((tmp_path / "out" / "report.html").read_text())
    assert "Result missing or invalid:" in page and "run make results/dropout.json" in page
    assert "not valid JSON" in page
    proc = subprocess.run([sys.executable, str(ROOT / "report" / "build.py"), "--results", str(res),
                           "--out", str(tmp_path / "strict"), "--strict"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Result missing or invalid:" in proc.stderr and "dropout.json" in proc.stderr
    assert not (tmp_path / "strict" / "report.html").exists()


@pytest.mark.slow
def test_transfer_not_run_is_a_note_and_strict_accepts_it(rendered, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(rendered["results"], res)
    (res / "transfer.json").unlink()              # make all skipped it: no weights, no GPU
    assert render(res, tmp_path / "out", "--strict") == 0
    page = visible_text((tmp_path / "out" / "report.html").read_text())
    section = page[page.index("Transfer learning The assignment this study extends"):]
    assert "Not run on the machine that built this report" in section
    assert "make results/transfer.json" in section and "Result missing" not in page
    assert "Transfer learning: not run here" in page           # the summary's list says so too
    assert "transfer.json not run" in page                     # and the provenance appendix
    (res / "transfer.json").write_text("{ truncated")       # a broken file is still an error
    assert render(res, tmp_path / "strict", "--strict") == 1


@pytest.mark.slow
@needs_poppler
def test_rendering_twice_gives_the_same_html_and_pdf_text(rendered, tmp_path):
    assert render(rendered["results"], tmp_path / "again") == 0
    assert (tmp_path / "again" / "report.html").read_bytes() == (rendered["out"] / "report.html").read_bytes()
    assert pdf_text(tmp_path / "again" / "report.pdf") == pdf_text(rendered["out"] / "report.pdf")


@needs_poppler
def test_pdf_has_the_headline_every_section_and_pages(rendered):
    text = pdf_text(rendered["out"] / "report.pdf")
    summary = rendered["data"]["best"]["variants"][0]["summary"]["test_acc"]
    assert " ".join(str(build.ci(summary)).split()) in text
    assert EVIL in text
    for title in section_titles():
        assert title in text, f"section {title!r} not in the PDF text"
    info = subprocess.run(["pdfinfo", str(rendered["out"] / "report.pdf")], capture_output=True, text=True).stdout
    assert int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1)) > 3


def test_html_loads_nothing_from_other_hosts(rendered):
    class Resources(html.parser.HTMLParser):
        found = []

        def handle_starttag(self, tag, attrs):
            for key, value in attrs:
                if value and (key == "src" or key in ("href", "srcset", "poster") and tag != "a"):
                    self.found.append((tag, value[:60]))
    p = Resources()
    p.feed(rendered["html"])
    remote = [r for r in p.found if re.match(r"\s*(https?:)?//", r[1])]
    assert not remote, f"resources from other hosts: {remote}"
    assert "mathjax" not in rendered["html"].lower() and "@import" not in rendered["html"]


# --- in a headless browser, through the DevTools protocol over a pipe ---------------------------

class DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # move the child's ends above fd 9 so that placing them on 3 and 4 cannot overwrite each other
        high_r, high_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        # the browser reads commands on fd 3 and writes replies and events on fd 4
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(high_r, 3), os.dup2(high_w, 4)))
        os.close(high_r)
        os.close(high_w)
        self._buffer, self._id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self._id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait(self, match, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if match(msg):
                    return msg
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


@needs_chromium
def test_html_in_headless_chromium(rendered, tmp_path):
    url = (rendered["out"] / "report.html").as_uri()
    tools = DevTools(tmp_path / "profile")
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Page.navigate", {"url": url}, session=session)
        tools.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, 60)
        figures = tools.send("Runtime.evaluate", {"returnByValue": True, "expression": """
            Array.from(document.querySelectorAll('figure img')).map(i => ({
                id: i.closest('figure').id, w: i.naturalWidth, h: i.naturalHeight, done: i.complete}))"""},
            session=session)["result"]["value"]
        width = tools.send("Runtime.evaluate", {"returnByValue": True, "expression":
                           "[document.documentElement.scrollWidth, window.innerWidth]"}, session=session)
        # display math and every element around it: nothing that scrolls (a scroll bar on an equation)
        math_scrolls = tools.send("Runtime.evaluate", {"returnByValue": True, "expression": """
            Array.from(document.querySelectorAll('math[display="block"]')).flatMap(m => [m, m.parentElement])
              .filter(e => { const s = getComputedStyle(e);
                return (e.scrollHeight > e.clientHeight + 1 && /auto|scroll/.test(s.overflowY)) ||
                       (e.scrollWidth > e.clientWidth + 1 && /auto|scroll/.test(s.overflowX)); })
              .map(e => e.outerHTML.slice(0, 80))"""}, session=session)["result"]["value"]
        math_count = tools.send("Runtime.evaluate", {"returnByValue": True, "expression":
                                """document.querySelectorAll('math[display="block"]').length"""},
                                session=session)["result"]["value"]
    finally:
        tools.close()

    events = [e for e in tools.events if e.get("sessionId") == session]
    errors = [e["params"] for e in events if e["method"] == "Runtime.exceptionThrown"
              or e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
              or e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert not errors, f"console errors: {errors}"
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert requests and all(re.match(r"(file|data|about):", u) for u in requests), \
        f"requests to other hosts: {[u for u in requests if not re.match(r'(file|data|about):', u)]}"
    assert figures and len(figures) == rendered["html"].count('<figure id="fig-')
    broken = [f for f in figures if not (f["done"] and f["w"] > 0 and f["h"] > 0)]
    assert not broken, f"figures not drawn: {broken}"
    scroll_width, inner_width = width["result"]["value"]
    assert scroll_width <= inner_width, "the page scrolls sideways"
    assert math_count > 0 and not math_scrolls, f"display math with a scroll bar: {math_scrolls}"


def test_if_stale_skips_an_up_to_date_report(rendered, capsys):
    html = rendered["out"] / "report.html"
    before = html.stat().st_mtime_ns
    assert render(rendered["results"], rendered["out"], "--if-stale") == 0
    assert "up to date" in capsys.readouterr().out
    assert html.stat().st_mtime_ns == before


@pytest.mark.slow
def test_quarto_renderer_without_quarto_is_a_clear_error(rendered, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))          # no quarto (and nothing else) on PATH
    assert render(rendered["results"], tmp_path / "q", "--renderer", "quarto") == 1
    assert "quarto" in capsys.readouterr().err
    assert (tmp_path / "q" / "build" / "report.md").exists()


@needs_poppler
def test_nothing_in_the_pdf_runs_past_the_margins(rendered, tmp_path):
    """Every word lies inside the text area (tables, code and long names included)."""
    bbox = tmp_path / "bbox.html"
    subprocess.run(["pdftotext", "-bbox", str(rendered["out"] / "report.pdf"), str(bbox)], capture_output=True,
                   check=True)
    margin = float(build.TYPST_PAGE["margin"]["x"].removesuffix("cm")) / 2.54 * 72    # points
    outside = []
    for number, page in enumerate(bbox.read_text().split("<page ")[1:], 1):
        width = float(re.search(r'width="([\d.]+)"', page).group(1))
        for x0, x1, word in re.findall(r'<word xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)"[^>]*>([^<]*)<', page):
            if float(x0) < margin - 3 or float(x1) > width - margin + 3:    # 3 pt: hanging punctuation
                outside.append((number, word, x0, x1))
    assert not outside, f"text outside the margins: {outside[:10]}"


def test_a_diverged_run_is_shown_and_left_out_of_the_summary(rendered):
    variant = rendered["data"]["batchnorm"]["variants"][-1]
    assert variant["summary"]["test_acc"]["n"] == 1 and variant["summary"]["diverged"] == 1
    text = re.sub(r"<[^>]+>", "", rendered["html"])
    assert "1 (1 diverged)" in text
    assert "Runs that diverged" in text


def test_last_epoch_summarises_the_single_view_numbers():
    rng = random.Random(0)
    variant = {"runs": [fake_run(s, 0.9, 3, rng) for s in range(3)]}
    variant["runs"][0]["final"]["test_acc"] = 0.99             # a final number the history does not have
    expected = [r["history"][-1]["test_acc"] for r in variant["runs"]]
    got = build.last_epoch(variant, "test_acc")
    assert got["n"] == 3 and got["mean"] == pytest.approx(sum(expected) / 3)
    variant["runs"][1]["final"]["diverged"] = True             # diverged runs are left out, as everywhere
    assert build.last_epoch(variant, "test_acc")["n"] == 2


def test_with_and_without_pairs_the_variants_of_each_learning_rate():
    exp = catalog.EXPERIMENTS["batchnorm"]
    variants = [{"name": n, "params": s.as_dict()} for n, s in exp.specs().items()]
    pairs = build.with_and_without(variants, "batchnorm")
    assert [p["lr"] for p in pairs] == list(dict.fromkeys(v["params"]["lr"] for v in variants))
    assert all(p["with"]["params"]["batchnorm"] and not p["without"]["params"]["batchnorm"]
               and p["with"]["params"]["lr"] == p["without"]["params"]["lr"] == p["lr"] for p in pairs)
    lowest = min(p["lr"] for p in pairs)
    assert [p["lr"] for p in build.with_and_without(variants, "batchnorm", lowest)] == [lowest]
    # a rate with only one of the two has no pair
    assert build.with_and_without([v for v in variants if v["params"]["batchnorm"]], "batchnorm") == []


def test_single_view_reads_the_history_only_where_the_final_figure_averages_views():
    rng = random.Random(1)
    runs = [fake_run(s, 0.9, 3, rng) for s in range(3)]
    for run in runs:
        run["final"]["test_acc"] = run["history"][-1]["test_acc"] + 0.004      # as five views would
    last = [r["history"][-1]["test_acc"] for r in runs]
    assert build.single_view({"params": {"test_time_shifts": True}, "runs": runs}) == last
    assert build.single_view({"params": {}, "runs": runs}) == [r["final"]["test_acc"] for r in runs]


def depth_with_val_accs(val: dict[str, list[float]]) -> dict:
    """A depth result whose variants have these per-seed validation accuracies."""
    exp = catalog.EXPERIMENTS["depth"]
    obj = fake_result("depth", {v: s.as_dict() for v, s in exp.specs().items()}, seeds=3)
    for v in obj["variants"]:
        for run, acc in zip(v["runs"], val[v["name"]]):
            run["final"]["val_acc"] = acc
    return results.restat(obj, exp.control_variant)


def test_plateau_is_the_smallest_depth_no_deeper_one_beats():
    flat = depth_with_val_accs({"1 hidden": [0.80, 0.81, 0.82], "2 hidden": [0.85, 0.86, 0.87],
                                "3 hidden": [0.851, 0.859, 0.871], "4 hidden": [0.849, 0.861, 0.870]})
    pl = build.plateau(flat["variants"], "depth")
    assert pl["at"]["name"] == "2 hidden"
    assert [(st["lower"]["name"], st["higher"]["name"]) for st in pl["after"]] == [("2 hidden", "3 hidden"), ("3 hidden", "4 hidden")]
    assert pl["before"][0]["diff"]["differs"] and not any(st["diff"]["differs"] for st in pl["after"])
    rising = depth_with_val_accs({"1 hidden": [0.80, 0.81, 0.82], "2 hidden": [0.82, 0.83, 0.84],
                                  "3 hidden": [0.84, 0.85, 0.86], "4 hidden": [0.86, 0.87, 0.88]})
    pl = build.plateau(rising["variants"], "depth")
    assert pl["at"]["name"] == "4 hidden" and pl["after"] == [] and len(pl["before"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("case", ["tie", "clear gap"])
def test_words_follow_the_paired_statistics(tmp_path, case):
    low = {"1 hidden": [0.850, 0.852, 0.851], "2 hidden": [0.860, 0.861, 0.862]}
    if case == "tie":     # 3 and 4 hidden: seeds overlap, the paired interval includes zero
        val = {**low, "3 hidden": [0.890, 0.880, 0.895], "4 hidden": [0.893, 0.885, 0.890]}
    else:                 # 4 hidden is ahead of 3 hidden by 1.0-1.2 points on every seed
        val = {**low, "3 hidden": [0.880, 0.881, 0.879], "4 hidden": [0.890, 0.893, 0.890]}
    res = tmp_path / "results"
    res.mkdir()
    results.write_atomic(res / "depth.json", depth_with_val_accs(val))
    assert render(res, tmp_path / "out") == 0
    page = visible_text((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    depth = page[page.index("Does a deeper network"):]
    if case == "tie":
        assert "On validation accuracy no variant is best at 3 seeds" in depth
        assert "“3 hidden” cannot be told apart from “4 hidden”" in depth
        assert "best variant is" not in depth
    else:
        assert "On validation accuracy the best variant is 4 hidden" in depth
        assert "no variant is best" not in depth and "cannot be told apart" not in depth
    # the answer says where depth stops helping, then (as the Summary's line) compares every
    # variant with the control, 2 hidden
    answer = depth[depth.index("Answer."):]
    if case == "tie":
        assert answer.startswith("Answer. Validation accuracy rises with depth up to 3 hidden")
        assert "and then it plateaus (seed-paired, 3 seeds): 4 hidden against 3 hidden" in answer
        assert "No deeper network beats 3 hidden beyond seed noise" in answer
    else:
        assert answer.startswith("Answer. Validation accuracy rises with depth up to 4 hidden")
        assert "plateaus" not in answer
    # names quoted (a name may hold commas), the control in parentheses, grouped by direction
    finding = "gainst the control (“2 hidden”) in validation accuracy, “3 hidden” ("
    assert f"enough. A{finding}" in answer and f"Depth: a{finding}" in page
    assert "are above it beyond seed noise; “1 hidden” (" in answer


@pytest.mark.slow
def test_the_answer_says_when_nothing_differs_from_the_control(tmp_path):
    val = {"1 hidden": [0.860, 0.870, 0.865], "2 hidden": [0.865, 0.862, 0.868],
           "3 hidden": [0.862, 0.869, 0.864], "4 hidden": [0.868, 0.861, 0.866]}
    res = tmp_path / "results"
    res.mkdir()
    results.write_atomic(res / "depth.json", depth_with_val_accs(val))
    assert render(res, tmp_path / "out") == 0
    page = visible_text((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    assert ("enough. No variant differs from the control (“2 hidden”) in validation accuracy beyond seed noise "
            "at 3 seeds") in page
    assert "Answer. Validation accuracy does not rise with depth (seed-paired, 3 seeds): 2 hidden against 1 hidden" in page
    assert "No deeper network beats 1 hidden beyond seed noise, so at this width and training length 1 hidden layer is enough" in page
    assert "no variant is best at 3 seeds" in page and "best variant is" not in page


def test_the_method_names_the_sections_that_leave_the_base_precision(rendered):
    """The fixture's results are fp32 where the catalog says so and bf16 (the base) elsewhere: the
    Method section links every section that leaves the base precision, by what its result records."""
    by = {}
    for name, result in rendered["data"].items():
        for precision in {v["params"]["precision"] for v in result["variants"]} - {"bf16"}:
            by.setdefault(precision, set()).add(name)
    assert "fp32" in by
    html = rendered["html"]
    start = html.index("Precision is one of those")
    paragraph = " ".join(html[start:html.index("</p>", start)].split())
    assert "instead of <code>bf16</code> autocast" in paragraph
    pieces = re.split(r"<code>(fp32|auto)</code>", paragraph.split("instead of")[0])   # sections, then their precision
    said = {precision: set(re.findall(r'href="#sec-([a-z0-9_]+)"', part))
            for precision, part in zip(pieces[1::2], pieces[0::2])}
    assert said == by


def test_the_proximal_variants_are_also_set_against_no_penalty(rendered):
    """l1_proximal's control has the spec and seeds of a `regularization` variant: the section says
    what that control costs against no penalty there, from that file's comparisons."""
    reg, prox = rendered["data"]["regularization"], rendered["data"]["l1_proximal"]
    ctl = next(v for v in prox["variants"] if v["name"] == prox["control"])
    twin = next(v for v in reg["variants"] if v["params"] == ctl["params"])
    cost = next(c for c in reg["comparisons"] if c["variant"] == twin["name"] and c["metric"] == "val_acc")
    page = " ".join(visible_text(rendered["html"]).split())
    assert f"Its spec and seeds are those of {twin['name']} in Section" in page
    assert f"which differs from no penalty there by {' '.join(str(build.ci_pp(cost)).split())} in validation accuracy" in page


def test_an_experiment_adds_its_own_sentence_to_its_summary_bullet(rendered):
    """templates/summary/NAME.md.j2, where it exists, extends that experiment's Summary bullet."""
    page = " ".join(visible_text(rendered["html"]).split())
    summary = page[page.index("What each experiment found"):page.index("Data and method", page.index("What each experiment found"))]
    bullets = {name: summary[summary.index(catalog.EXPERIMENTS[name].title + ":"):] for name in ("batchnorm", "l1_proximal")}
    assert "the network with batch normalization reaches" in bullets["batchnorm"].split("L1, L2 and weight decay:")[0]
    assert "of the first-layer weights exactly at zero" in bullets["l1_proximal"].split("Data augmentation:")[0]


@pytest.mark.slow
def test_the_long_penalties_say_how_far_they_narrow_the_gap(rendered, tmp_path):
    """regularization_long's Answer and Summary bullet name the variant with the narrowest mean
    train-validation gap, unless that is the control: the fixture's (control narrowest), and a copy
    whose last variant fits its training images less."""
    def said(page):
        return " ".join(visible_text(page).split()).count("The penalties narrow the gap between train and validation accuracy from")
    result = json.loads(json.dumps(rendered["data"]["regularization_long"]))
    gaps = {v["name"]: sum(r["final"]["train_acc"] - r["final"]["val_acc"] for r in v["runs"]) for v in result["variants"]}
    assert min(gaps, key=gaps.get) == result["control"] and said(rendered["html"]) == 0
    last = result["variants"][-1]
    for run in last["runs"]:
        run["final"]["train_acc"] = run["final"]["val_acc"] + 0.001
    last["summary"] = results.summarize(last["runs"])
    res = tmp_path / "results"
    res.mkdir()
    results.write_atomic(res / "regularization_long.json", results.restat(result, result["control"]))
    assert render(res, tmp_path / "out") == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert said(page) == 2 and f"with “{last['name']}”, but" in " ".join(visible_text(page).split())


@pytest.mark.slow
def test_the_cnn_and_the_headline_compare_on_the_same_views_with_welchs_interval(rendered, tmp_path):
    """Both on the image alone (the last epoch's history) and, where both average five views at test
    time, on those: Welch's interval of two independent groups of runs, no seed pairing."""
    from experiments import stats
    res = tmp_path / "results"
    shutil.copytree(rendered["results"], res)
    objs = {n: json.loads((res / f"{n}.json").read_text()) for n in ("cnn", "best")}
    for name, bonus in (("cnn", 0.003), ("best", 0.001)):       # five views beat one by a little
        v = objs[name]["variants"][0]
        v["params"]["test_time_shifts"] = True
        for run in v["runs"]:
            run["final"]["test_acc"] = run["history"][-1]["test_acc"] + bonus
            run["final"]["val_acc"] = run["history"][-1]["val_acc"] + bonus / 2
        v["summary"] = results.summarize(v["runs"])
        results.write_atomic(res / f"{name}.json", results.restat(objs[name], objs[name]["control"]))
    assert render(res, tmp_path / "out") == 0
    page = visible_text((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    cnn, mlp = (objs[n]["variants"][0]["runs"] for n in ("cnn", "best"))
    one = stats.unpaired_difference([r["history"][-1]["test_acc"] for r in cnn], [r["history"][-1]["test_acc"] for r in mlp])
    five = stats.unpaired_difference([r["final"]["test_acc"] for r in cnn], [r["final"]["test_acc"] for r in mlp])
    assert one["ci95"] != five["ci95"]
    said = lambda d: " ".join(str(build.ci_pp(d)).split())     # noqa: E731 (as visible_text spaces it)
    assert (f"differs from the headline MLP\u2019s by {said(one)}, and over the same five views by "
            f"{said(five)}") in page                      # (pandoc curls the apostrophes)
    assert "these 95% intervals are Welch\u2019s" in page and "not evaluated with test-time shifts" not in page
    gains = [build.views_gain(objs[n]["variants"][0]) for n in ("best", "cnn")]      # +0.1 and +0.3 pp
    assert [round(g["diff_mean"], 6) for g in gains] == [0.001, 0.003]
    # validation first (it may choose), test second (it only reports)
    val_gains = [build.views_gain(objs[n]["variants"][0], "val_acc") for n in ("best", "cnn")]
    assert (f"the five views add {said(val_gains[0])} in validation accuracy to the MLP and {said(val_gains[1])} "
            f"to the CNN (on test accuracy {said(gains[0])} and {said(gains[1])})") in page


def test_strict_build_fails_on_a_result_without_statistics(rendered, tmp_path, capsys):
    res = tmp_path / "results"
    shutil.copytree(rendered["results"], res)
    old = json.loads((res / "depth.json").read_text())
    del old["comparisons"]
    for v in old["variants"]:
        del v["summary"]["val_acc"]["ci95"]
    (res / "depth.json").write_text(json.dumps(old))
    assert render(res, tmp_path / "out", "--strict") != 0
    assert "restat" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stale_result_is_marked_with_the_command_that_remakes_it(rendered, tmp_path, capsys):
    res = tmp_path / "results"
    shutil.copytree(rendered["results"], res)
    old = json.loads((res / "dropout.json").read_text())
    old["fingerprint"] = "f" * 64                      # made by other engine code
    (res / "dropout.json").write_text(json.dumps(old))
    assert "Stale result" not in visible_text(rendered["html"])
    assert render(res, tmp_path / "out") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "is stale" in line]
    assert len(warned) == 1 and "dropout.json is stale" in warned[0] and "make results/dropout.json" in warned[0]
    page = visible_text((tmp_path / "out" / "report.html").read_text())
    assert page.count("Stale result") == 1
    stale = page[page.index("Stale result"):]
    assert stale.index("dropout.json") < stale.index("make results/dropout.json") < 400



def test_a_broken_catalog_entry_fails_a_strict_build_and_is_named_in_its_section(rendered, monkeypatch, capsys):
    """A typo in an entry makes no result current: the section says the entry is invalid and why
    (not merely "stale"), and a strict build (make all) exits 1 naming it."""
    import dataclasses
    from report.render import render_markdown
    from report.sections import load_sections
    broken = dataclasses.replace(catalog.EXPERIMENTS["dropout"], control="no dropuot")
    monkeypatch.setitem(catalog.EXPERIMENTS, "dropout", broken)
    assert render(rendered["results"], rendered["base"] / "never", "--strict") == 1
    err = capsys.readouterr().err
    assert "error: experiments/catalog.py: experiment 'dropout': control 'no dropuot' is not one of its " \
           "variants" in err and "did you mean 'no dropout'?" in err
    assert not (rendered["base"] / "never").exists()
    markdown, _ = render_markdown(load_sections(rendered["results"]), rendered["results"])
    assert markdown.count("**Invalid catalog entry.**") == 1 and "Stale result" not in markdown

def test_front_matter_abstract_cite_and_reproduce_come_from_the_results(rendered):
    page = visible_text(rendered["html"])
    head = rendered["data"]["best"]["variants"][0]["summary"]["test_acc"]
    started = rendered["data"]["best"]["provenance"]["started"]
    assert f"Results of {started[:10]}, made at commit 0123456789ab ({len(rendered['data'])} result files)" in page
    abstract = page[page.index("Abstract."):page.index("Reproduce.")]
    assert " ".join(str(build.ci(head)).split()) in " ".join(abstract.split())    # the headline from best.json
    assert len(abstract.split()) <= 150
    # the count of differing variants after Holm's correction, and their direction, from the
    # fixture's comparisons (holm_family's own test checks the correction)
    from report import analysis
    from report.sections import section_names
    rows = [c for r in rendered["data"].values() for c in r.get("comparisons", []) if c["metric"] == "val_acc" and c["n"]]
    differ = [c for c in rows if c["ci95"] and (c["ci95"][0] > 0 or c["ci95"][1] < 0)]
    holm = analysis.holm_family([r for n, r in rendered["data"].items() if n != "best"])
    assert holm["m"] == len(rows) and holm["differ"] == len(differ)
    up = holm["up"]
    flat = " ".join(abstract.split())
    assert f"compare each of the {len(rows)} variants with its control, seed by seed, with Holm’s correction" in flat
    # above it: how many, and against which control (a control may itself be regularized): the two
    # experiments with the most such variants by name, the others counted
    above = flat.split(f"After the correction, {up} lie above their control beyond seed noise")[1].split(
        f", {holm['kept'] - up} below it")[0]
    assert (f"and {holm['m'] - holm['kept']} cannot be told apart from it ({holm['differ'] - holm['kept']} of which "
            "differ only at 95% uncorrected)") in flat
    # what the experiments vary, each once, and where no variant beat training without regularizers
    from experiments.catalog import EXPERIMENTS
    subjects = list(dict.fromkeys(EXPERIMENTS[n].subject for n in holm["compared"]))
    assert f"controlled experiments on {', '.join(subjects[:-1])} and {subjects[-1]} (Section" in flat
    beaten = {EXPERIMENTS[n].subject for n in holm["beaten"]}
    unbeaten = list(dict.fromkeys(EXPERIMENTS[n].subject for n in holm["unbeaten"] if EXPERIMENTS[n].subject not in beaten))
    assert holm["unbeaten"] and f"No setting of {', '.join(unbeaten[:-1])} or {unbeaten[-1]} is above training " \
        "without it." in flat, (holm["unbeaten"], flat)
    named, rest, others = analysis.above_controls([rendered["data"][n] for n in section_names()
                                                   if n in rendered["data"]], lost=holm["lost"])
    assert named and all(f"{n} against “{c}”" in above for n, c in named), above
    assert sum(n for n, _ in named) + rest == up
    assert (f"{rest} against the controls of {others} other experiments" in above) == (others > 1), above
    assert "Cite as." in page and "@misc{fmreport" in page and "make reproduce" in page
    from report.config import LICENSES
    license = page[page.index("License."):page.index("Abstract.")]
    assert all(name in license and what in license for what, name, _ in LICENSES)
    assert all(f'href="{url}"' in rendered["html"] for _, _, url in LICENSES)
    from experiments import data
    assert all(digest in page for digest in data.SHA256.values())


def test_the_abstract_names_the_two_experiments_with_most_variants_above_their_control():
    from report import analysis

    def result(control: str, diffs: list[float]) -> dict:
        return {"experiment": control, "comparisons": [
            {"metric": "val_acc", "n": 10, "control": control, "variant": f"v{i}", "diff_mean": d,
             "ci95": [d - 0.001, d + 0.001] if d else [-0.001, 0.001]} for i, d in enumerate(diffs)]}
    results_ = [result("a", [0.01, -0.01]), result("b", [0.02, 0.01, 0.03]),
                result("c", [0.0]), result("d", [0.01]), result("e", [0.01, -0.02])]
    got = analysis.above_controls(results_)
    assert got == ([(3, "b"), (1, "a")], 2, 2)     # b the most; a before d and e, catalog order among equals
    assert analysis.above_controls([result("a", [-0.01])]) == ([], 0, 0)
    # what Holm's correction leaves within noise is not counted: b keeps 1, d none
    assert analysis.above_controls(results_, lost={"b": ["v0", "v2"], "d": ["v0"]}) == ([(1, "a"), (1, "b")], 1, 1)


def test_unbeaten_controls_are_those_without_regularizers_that_no_variant_beats_after_holm():
    """The abstract's 'No setting of ... is above training without it': an experiment counts where its
    control has every regularizer off, some variant switches one on, and none lies above the control
    once Holm's correction is applied; depth-like sweeps (nothing to switch on) and penalised
    controls (l1_proximal's) never do."""
    from report import analysis
    control = [0.879, 0.880, 0.881] * 3 + [0.879]   # 10 seeds, +-0.1 pp

    def result(name: str, params: dict, variants: dict[str, tuple[dict, float]]) -> dict:
        """_seed_results's control and variants `d` above it (each seed otherwise), with their params."""
        out = _seed_results(name, control, **{v: [c + d for c in control[1:] + control[:1]]
                                              for v, (_, d) in variants.items()})
        for v, p in zip(out["variants"], [params, *(p for p, _ in variants.values())]):
            v["params"] = p
        return {**out, "control": "control"}
    off = {"depth": 2, "dropout": 0.0, "l1": 0.0, "augment": "none", "optimizer": "adam"}
    results_ = [
        result("depth", off, {"deep": ({**off, "depth": 3}, 0.0)}),                       # no regularizer: never
        result("dropout", off, {"d": ({**off, "dropout": 0.5}, -0.02)}),                  # below: unbeaten
        result("penalty", off, {"wd": ({**off, "optimizer": "adamw", "weight_decay": 0.1}, 0.0)}),   # a tie
        result("aug", off, {"flip": ({**off, "augment": "flip"}, 0.02)}),                 # above: beaten
        result("prox", {**off, "l1": 1e-4}, {"p": ({**off, "l1": 1e-3, "l1_proximal": True}, -0.01)}),
    ]
    assert [analysis.unregularized_control(r) for r in results_] == [False, True, True, True, False]
    holm = analysis.holm_family(results_)
    assert holm["compared"] == ["depth", "dropout", "penalty", "aug", "prox"]
    assert holm["unbeaten"] == ["dropout", "penalty"] and holm["beaten"] == ["aug"]


def test_the_regularizers_are_runspec_fields_off_by_default():
    """unregularized_control reads a control's params by REGULARIZERS: each must be a RunSpec field
    whose default is its 'off' value, so a base spec counts as training without regularizers."""
    import dataclasses
    from experiments.catalog import RunSpec
    from report.analysis import REGULARIZERS
    defaults = {f.name: f.default for f in dataclasses.fields(RunSpec)}
    assert {k: defaults.get(k, "not a field") for k in REGULARIZERS} == REGULARIZERS


def test_the_baseline_table_cites_entries_of_the_bibliography(rendered):
    bib = (ROOT / "report" / "references.bib").read_text()
    keys = {key for _, _, key in build.BASELINES} | {"assignment"}
    assert all(re.search(rf"@\w+{{{key},", bib) for key in keys)
    html = rendered["html"]
    table = html[html.index('id="tbl-baselines"'):]
    table = table[:table.index("</table>")]
    for key in keys:                       # citeproc turned each citation into a link to its entry
        assert f'href="#ref-{key}"' in table and f'id="ref-{key}"' in html
    page = visible_text(html)
    assert "Table 1 puts both of this study" in page   # cited in the text


@pytest.mark.slow
def test_a_full_disk_while_rendering_keeps_the_previous_report(rendered, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(rendered["out"], out)
    before = {n: (out / n).read_bytes() for n in ("report.html", "report.pdf")}
    from report import render as render_mod
    real = render_mod.run_tool

    def full_disk(cmd, cwd):
        if "typst" in cmd:                # the HTML was written (to its temp file); the disk is full now
            raise OSError(28, "No space left on device", str(cwd / "report.typ"))
        return real(cmd, cwd)
    monkeypatch.setattr(render_mod, "run_tool", full_disk)
    assert render(rendered["results"], out) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "report.typ" in err
    assert {n: (out / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []    # no temp files left


@pytest.mark.slow
def test_a_second_build_of_one_report_waits_for_the_first(rendered, tmp_path):
    """Two `make all` reaching the report together: the second render waits for the holder of the
    report's lock (named in its log) instead of removing the first one's files."""
    import threading
    from experiments import locks
    out = tmp_path / "out"
    logged, done = [], []
    with locks.exclusive(out / "report.html"):                   # the first build, still rendering
        worker = threading.Thread(target=lambda: done.append(
            build.build(rendered["results"], out, tmp_path / "work", log=logged.append)))
        worker.start()
        time.sleep(2)
        assert not done and not (out / "report.html").exists()
        assert any(line.startswith("waiting:") and "report.html" in line for line in logged)
    worker.join(120)
    assert done == [0] and (out / "report.html").exists() and (out / "report.pdf").exists()


def test_figures_are_redrawn_when_the_summaries_they_use_change(rendered, monkeypatch):
    """The figure fingerprint covers analysis.py and stats.py, whose intervals the figures draw."""
    from report import figures
    result = rendered["results"] / "depth.json"
    before = figures.fingerprint(result, ["curves"])
    real = results._code_digest
    for changed in ("analysis.py", "stats.py"):
        monkeypatch.setattr(results, "_code_digest", lambda p, c=changed: "edited" if Path(p).name == c else real(p))
        assert figures.fingerprint(result, ["curves"]) != before
    monkeypatch.setattr(results, "_code_digest", real)
    assert figures.fingerprint(result, ["curves"]) == before


@pytest.mark.slow
def test_the_gpu_bench_is_shown_beside_the_cpu_figures(rendered, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(rendered["results"], res)
    cpu = json.loads((ROOT / "results" / "bench.json").read_text())
    shutil.copyfile(ROOT / "results" / "bench.json", res / "bench.json")
    assert render(res, tmp_path / "before") == 0
    assert "Its figures are not measured yet" in visible_text((tmp_path / "before" / "report.html").read_text())
    gpu = {**cpu, "device_name": "NVIDIA H200", "population_members": 32, "member_epoch_ms": 3.7,
           "bf16_peak_fraction": 0.21, "study_seconds": 42.0,
           "time_to_89": {**cpu["time_to_89"], "mean_seconds": 0.8},
           "time_to_89_population": {"seeds": 5, "test_acc": [0.89] * 5, "mean_test_acc": 0.8912, "wall_seconds": 1.4},
           "provenance": {**cpu["provenance"], "packages": {**cpu["provenance"]["packages"], "torch": "2.11.0"}}}
    (res / "bench-cuda.json").write_text(json.dumps(gpu))
    assert render(res, tmp_path / "out") == 0
    page = visible_text((tmp_path / "out" / "report.html").read_text())
    assert "one epoch of one member, a member-epoch, of the base MLP in a population of 32 costs 3.7 ms" in page
    assert "reaches 21.0% of the card" in page and "sets the GPU bench (NVIDIA H200" in page
    assert "on a GPU not measured yet" not in page and "on one NVIDIA H200, 42.0 s in one process" in page   # Reproduce box
    table = re.search(r'<table[^>]*>(?:(?!</table>).)*NVIDIA H200.*?</table>', (tmp_path / "out" / "report.html").read_text(), re.S)
    cells = [visible_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", table.group(0), re.S)]
    rows = {cells[i]: cells[i + 1:i + 3] for i in range(0, len(cells), 3)}
    assert rows["The recipe’s 5 seeds as one population"] == ["—", "1.4 s"]
    assert rows["Member-epoch in a population of 32"] == ["—", "3.7 ms"]
    assert rows["Fixed 89% recipe (15 epochs), a seed trained alone: mean over 5 seeds"][1] == "0.80 s"
    assert rows["The whole study: every experiment make all runs"][1] == "42.0 s"
    assert "The whole study on the GPU" not in page
    (res / "bench-cuda.json").write_text(json.dumps({**gpu, "study_lanes": 4}))
    (res / "gpu-check.json").write_text(json.dumps({**GPU_CHECK, "lanes": 4, "lanes_against_one_lane": {
        "experiment": "depth", "runs": 40, "bit_identical": 31, "largest_train_loss_difference": 0.00042}}))
    assert render(res, tmp_path / "lanes") == 0
    page = visible_text((tmp_path / "lanes" / "report.html").read_text())
    assert "on one NVIDIA H200, 42.0 s in one process, 4 experiments at a time" in page
    assert "took 42.0 s on the card, 4 experiments at a time, each in its own thread and CUDA stream (gpu_check --lanes)" in page
    assert "(summed over the lanes, so they overlap and add up to more than the study’s wall time)" in page
    assert "Its run in the study, beside the other lanes, against the first of those two runs alone: 31 of 40 runs " \
           "bit for bit (the largest training-loss difference 0.0004: while several streams are active cuBLAS may " \
           "pick other kernels)." in page
    assert "<p>Capped at a share of the card" in (tmp_path / "lanes" / "report.html").read_text()   # its own paragraph
    (res / "bench-cuda.json").write_text(json.dumps(gpu))
    (res / "gpu-check.json").write_text(json.dumps(GPU_CHECK))
    assert render(res, tmp_path / "checked") == 0
    page = visible_text((tmp_path / "checked" / "report.html").read_text())
    assert "took 42.0 s on the card" in page and "the run that measured the figures above" in page
    assert "Its fp32 matrix multiplies ran on the card’s tensor cores in TF32 (FMREPORT_MATMUL=tf32, the " \
           "setting gpu_probe timed faster), which rounds their inputs to a 10-bit mantissa; the CPU’s are true fp32." in page
    assert "2 of 3 differ from it by less than two standard errors of the difference; outside are depth / 2 hidden " \
           "(−0.30 pp, two standard errors 0.20 pp)." in page
    assert "2 of the 3 GPU means lie below the CPU’s; the mean difference over all 3 is −0.10 pp" in page
    cpu_torch = json.loads((res / "depth.json").read_text())["provenance"]["packages"]["torch"]
    assert f"differ in more than the device (and in PyTorch: {cpu_torch} for the CPU results, " \
           "2.11.0 on the card)" in page
    assert "depth repeated 39 of 40 runs bit for bit" in page and "40 of 40; each such deterministic rerun of its 40 runs took 12.1 s on average, against 8.5 s and 9.0 s for the " \
        "two runs without that setting" in page
    assert "training steps (CUDA-graph captures included: 1.5 s) took 29.0 s" in page and "evaluation 4.0 s" in page
    assert "6.0 s (of which the final evaluation 1.0 s, the records 2.5 s and saving 0.5 s)" in page
    assert "the slowest experiments were depth (30.0 s) and cnn (12.0 s)" in page
    assert "gpu-check.json predates recording its provenance; that check ran the study whose time bench-cuda.json " \
           "reports, then the bench." in page
    assert "at 50%, it trained in 3 populations (down to 2 members), 0 of 40 runs bit for bit as uncapped, " \
           "the largest training-loss difference 0.0017; at 25%, a run alone did not fit (one run alone" in page


GPU_CHECK = {"device": "cuda", "quick": False, "study_seconds": 42.0,
             "settings": {"FMREPORT_CONV": "split", "FMREPORT_CUDNN_BENCHMARK": "0", "FMREPORT_INPUTS": "host",
                          "FMREPORT_MATMUL": "tf32", "from": "gpu_probe's fastest (build/gpu-check/gpu-probe.json)"},
             "agreement": {"depth": [
                 {"variant": "1 hidden", "diff": 0.001, "two_se": 0.002, "agrees": True},
                 {"variant": "2 hidden", "diff": -0.003, "two_se": 0.002, "agrees": False},
                 {"variant": "3 hidden", "diff": -0.001, "two_se": 0.002, "agrees": True},
                 {"variant": "4 hidden", "agrees": None, "why": "no committed or no finished runs"}]},
             "repeatability": {"experiment": "depth", "runs": 40, "bit_identical": 39, "seconds": [9.0, 8.5]},
             "deterministic": {"experiment": "depth", "runs": 40, "bit_identical": 40, "seconds": [12.2, 12.0]},
             "experiments": {"depth": {"seconds": 30.0, "phase_seconds": {"build": 1.0, "steps": 20.0, "evaluate": 3.0,
                                                                         "finish": 5.0, "finish.evaluate": 1.0, "steps.capture": 1.5,
                                                                         "finish.records": 2.5, "finish.save": 0.5}},
                             "cnn": {"seconds": 12.0, "phase_seconds": {"build": 0.5, "steps": 9.0, "evaluate": 1.0,
                                                                       "finish": 1.0}}},
             "memory_cap": {"tries": [
                 {"share": 0.5, "populations": [5, 5, 2],
                  "against_uncapped": {"runs": 40, "bit_identical": 0, "largest_train_loss_difference": 0.00173}},
                 {"share": 0.25, "does_not_fit": "one run alone (1 hidden, seed 0) does not fit"}]}}


def test_the_gpu_check_is_read_only_when_complete_and_summarised_by_one_rule(tmp_path):
    from report import analysis, sections
    assert sections.load_gpu_check(tmp_path) is None                       # absent
    (tmp_path / "gpu-check.json").write_text(json.dumps({**GPU_CHECK, "quick": True}))
    assert sections.load_gpu_check(tmp_path) is None                       # a quick run is no measurement
    (tmp_path / "gpu-check.json").write_text(json.dumps({k: v for k, v in GPU_CHECK.items() if k != "study_seconds"}))
    assert sections.load_gpu_check(tmp_path) is None                       # cut off before the study ended
    (tmp_path / "gpu-check.json").write_text(json.dumps(GPU_CHECK))
    a = analysis.gpu_agreement(sections.load_gpu_check(tmp_path))
    assert (a["n"], a["agree"], a["below"]) == (3, 2, 2)                   # the row without a comparison is left out
    assert [r["variant"] for r in a["outside"]] == ["2 hidden"] and abs(a["mean_diff"] + 0.001) < 1e-12
    assert (a["setups"], a["setups_agree"], a["repeats"]) == (3, 2, [])


def test_the_study_time_counts_commands_that_ran_side_by_side_once():
    """The Reproduce box's time is the union of the commands' windows, not the sum of their wall
    times: two overlapping hours count 1.5 h, a window inside another adds nothing, and a result
    without a start or wall time is left out."""
    from report import analysis
    p = lambda start, wall: {"started": f"2026-01-01T{start}:00+00:00", "wall_seconds": wall}  # noqa: E731
    windows = [p("10:30", 3600), p("10:00", 3600), p("10:10", 60), p("13:00", 600), {"started": None}, {}]
    assert analysis.elapsed_seconds(windows) == 5400 + 600
    assert analysis.elapsed_seconds([]) == 0


def test_crowded_weight_penalty_curves_get_one_column_per_method():
    """More than six variants in two or more methods: one column per method, each with the control;
    fewer variants, or variants of one kind (depth), stay in one panel."""
    from report import analysis
    v = lambda name, **params: {"name": name, "params": params, "runs": [], "summary": {}}  # noqa: E731
    many = {"control": "none", "variants": [v("none"), *(v(f"L1 {x}", l1=x) for x in (1e-5, 3e-5, 1e-4)),
                                            *(v(f"L2 {x}", l2=x) for x in (1e-4, 1e-3, 1e-2))]}
    panels = analysis.curve_panels(many)
    assert [(p["method"], len(p["variants"])) for p in panels] == [("L1 penalty in the loss", 3),
                                                                    ("L2 penalty in the loss", 3)]
    assert analysis.curve_panels({**many, "variants": many["variants"][:5]}) is None
    assert analysis.curve_panels({"control": "2", "variants": [v(str(d), depth=d) for d in range(1, 9)]}) is None
    assert analysis.curve_panels({**many, "control": "absent"}) is None


def test_devices_are_named_in_words():
    from report import text
    assert (text.device("cpu"), text.device("cuda"), text.device("mps")) == ("a CPU", "a CUDA GPU", "`mps`")


def test_a_variant_that_repeats_another_experiments_setup_counts_once():
    """`augmentation` / none is `depth` / 2 hidden (same spec, same seeds) and `l1_proximal`'s
    control is `regularization` / L1 0.0001: the agreement lists them but counts each setup once."""
    from report import analysis
    row = lambda variant, agrees: {"variant": variant, "diff": -0.001, "two_se": 0.002, "agrees": agrees}  # noqa: E731
    a = analysis.gpu_agreement({"agreement": {
        "depth": [row("1 hidden", True), row("2 hidden", False)], "augmentation": [row("none", False), row("flip", True)],
        "regularization": [row("L1 0.0001", True)], "l1_proximal": [row("L1 penalty 1e-4", True)]}})
    assert (a["n"], a["agree"], a["setups"], a["setups_agree"]) == (6, 4, 4, 3)
    assert [(r["experiment"], r["variant"], r["repeats"]["experiment"], r["repeats"]["variant"])
            for r in a["repeats"]] == [("augmentation", "none", "depth", "2 hidden"),
                                       ("l1_proximal", "L1 penalty 1e-4", "regularization", "L1 0.0001")]


def test_every_figure_and_table_is_cited_in_the_text_and_captions_differ(rendered):
    md = (rendered["out"] / "build" / "report.md").read_text()
    ids = set(re.findall(r"\{#((?:fig|tbl)-[\w-]+)", md))
    figure_captions = re.findall(r"^!\[(.*)\]\(figures/[^)]*\)\{#fig-", md, flags=re.M)
    table_captions = re.findall(r"^: (.*) \{#tbl-[\w-]+\}\s*$", md, flags=re.M)
    body = "\n".join(line for line in md.splitlines()
                     if not line.startswith("![") and not re.match(r"^: .*\{#tbl-", line))
    assert ids and len(figure_captions) + len(table_captions) == len(ids)
    assert sorted(i for i in ids if f"](#{i})" not in body) == []          # each cited outside its caption
    texts = [re.sub(r"^(Figure|Table) \d+: ", "", c) for c in figure_captions + table_captions]
    assert len(texts) == len(set(texts)), "two captions say the same"


@pytest.mark.slow
def test_a_new_catalog_entry_gets_its_section_without_other_edits(tmp_path):
    """Issue 16: an experiment is one catalog entry. A scratch copy of the code gains a toy
    experiment in catalog.py alone; its result renders as a generic section (table, figures drawn
    from the result, comparison with its control) in the place the catalog gives it."""
    copy = tmp_path / "project"
    for folder in ("experiments", "report", "templates"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "report.html", "report.pdf"))
    entry = ('\nEXPERIMENTS["toy"] = Experiment(name="toy", title="A toy width sweep", control="narrow",\n'
             '    description="a toy experiment added by a test", variants={"narrow": {"width": 64}, "wide": {"width": 512}})\n')
    with open(copy / "experiments" / "catalog.py", "a") as f:
        f.write(entry)
    toy = catalog.Experiment(name="toy", title="A toy width sweep", control="narrow", description="x",
                             variants={"narrow": {"width": 64}, "wide": {"width": 512}})
    obj = fake_result("toy", {n: s.as_dict() for n, s in toy.specs().items()})
    obj["fingerprint"] = results.fingerprint(toy.specs(), obj["seeds"], False)   # what the copy computes
    res = tmp_path / "results"
    results.write_atomic(res / "toy.json", describe.describe(obj, toy))
    proc = subprocess.run([sys.executable, "report/build.py", "--results", str(res), "--out", str(tmp_path / "out")],
                          cwd=copy, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    page = visible_text((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    heading = re.search(r"\d+\.\d+ A toy width sweep Fixture for toy\.", page)   # its question
    assert heading, "no section for the new catalog entry"
    section = page[heading.start():]
    assert "Stale result" not in section[:2000] and "figure missing" not in section[:4000].lower()
    assert "narrow" in section[:3000] and "wide" in section[:3000] and "Answer." in section[:6000]
    assert sorted(p.name for p in (res / "figures").glob("toy-*.svg")) == ["toy-accuracy.svg", "toy-curves.svg"]


def test_a_typst_layout_that_does_not_converge_is_an_error(tmp_path):
    """Page numbers, links and floats of a layout that did not converge are an unfinished attempt's:
    compile_pdf refuses it, and leaves no PDF. (A page-dependent figure rule once did this.)"""
    pytest.importorskip("typst")
    from report import render as render_mod
    ok, unstable = tmp_path / "ok.typ", tmp_path / "unstable.typ"
    ok.write_text("= Title\nSome text.\n")
    # as many page breaks as the document's final page count: each attempt adds a page
    unstable.write_text("#context { for _ in range(counter(page).final().first()) { pagebreak() } }\nText.\n")
    render_mod.compile_pdf(ok, tmp_path / "ok.pdf", tmp_path, None)
    assert (tmp_path / "ok.pdf").read_bytes().startswith(b"%PDF")
    import typst
    if not hasattr(typst, "compile_with_warnings"):
        pytest.skip("this typst-py reports no warnings")
    with pytest.raises(render_mod.ReportError, match="did not converge"):
        render_mod.compile_pdf(unstable, tmp_path / "unstable.pdf", tmp_path, None)
    assert not (tmp_path / "unstable.pdf").exists()


def test_restamps_are_listed_once_per_change_with_the_results_it_was_checked_on():
    from types import SimpleNamespace
    from report import analysis

    def section(name, *restamps):
        return SimpleNamespace(path=Path(name), result={"provenance": {"restamps": list(restamps)}})
    change = {"from_commit": "a" * 40, "changed_files": ["data.py"], "started": "2026-11-27T06:37:02+00:00"}
    other = {"from_commit": "b" * 40, "changed_files": ["data.py", "train.py"], "started": "2026-11-26T01:00:00+00:00"}
    rows = analysis.restamp_changes([
        section("depth.json", {**change, "checked_runs": ["1", "2"], "runs_in_result": 20, "wall_seconds": 60.0},
                {**other, "checked_runs": ["1"], "runs_in_result": 20, "wall_seconds": 5.0}),
        section("cnn.json", {**change, "checked_runs": ["1"], "runs_in_result": 10, "wall_seconds": 30.0,
                             "compared_with_code_here": ["1"]}),
        SimpleNamespace(path=Path("transfer.json"), result=None)])
    assert [r["from_commit"][0] for r in rows] == ["b", "a"]            # by the day they were checked
    assert rows[1]["results"] == [{"name": "depth.json", "retrained": 2, "runs": 20},
                                  {"name": "cnn.json", "retrained": 1, "runs": 10}]
    assert rows[1]["seconds"] == 90.0 and rows[1]["checked"] == "2026-11-27" and rows[0]["files"] == ["data.py", "train.py"]
    assert (rows[0]["against_code"], rows[1]["against_code"]) == (0, 1)   # matched with the code before it, not stored
    undated = {"from_commit": "c" * 40, "changed_files": ["models.py"], "checked_runs": ["1"], "runs_in_result": 1}
    rows = analysis.restamp_changes([section("depth.json", undated), section("cnn.json", {**undated, "started": "2026-11-28T09:00"})])
    assert rows[0]["checked"] == "2026-11-28"                           # the day of the entry that has one


def test_a_refactor_that_moves_the_penalty_calls_out_of_fit_stops_the_quote(tmp_path, monkeypatch):
    """The report quotes the lines of train.fit that apply the penalties. A refactor that moves a
    call into a helper would have left the quote without it, silently; now the build names it."""
    from report import sources
    from report.config import ReportError
    engine = tmp_path / "experiments"
    engine.mkdir()
    text = (ROOT / "experiments" / "train.py").read_text()
    moved = text.replace("objective = objective + spec.l1 * penalties.l1_penalty(weights)",
                         "objective = objective + spec.l1 * l1_term(weights)")
    assert moved != text
    (engine / "train.py").write_text(moved)
    monkeypatch.setattr(sources, "ENGINE", engine)
    monkeypatch.setattr(sources, "ROOT", tmp_path)
    with pytest.raises(ReportError, match=r"fit\(\) no longer calls penalties\.l1_penalty itself"):
        sources.quote_uses("train.py", "fit")
    (engine / "train.py").write_text(text)
    assert "penalties.l2_penalty(weights)" in sources.quote_uses("train.py", "fit")


def _seed_results(name: str, control: list[float], **variants: list[float]) -> dict:
    """A result with just what holm_family reads: per-seed validation accuracies and comparisons."""
    def variant(vname, values):
        return {"name": vname, "runs": [{"seed": s, "final": {"val_acc": v, "diverged": False}}
                                        for s, v in enumerate(values)]}
    vs = [variant("control", control)] + [variant(v, values) for v, values in variants.items()]
    return {"experiment": name, "variants": vs, "comparisons": results.comparisons(vs, "control")}


def test_holm_family_corrects_over_every_experiments_comparisons_together():
    from report import analysis
    control = [0.80, 0.81, 0.82, 0.83, 0.84]
    # paired differences: far (p ~ 1e-6), borderline (p = 0.030: beyond noise at 95% alone, not at
    # 5% / 2 once the far one is rejected), and none at all
    far = [c + d for c, d in zip(control, (0.050, 0.051, 0.049, 0.050, 0.052))]
    near = [c + d for c, d in zip(control, (0.004, 0.001, 0.006, 0.001, 0.004))]
    a = _seed_results("a", control, far=far, near=near)
    b = _seed_results("b", control, same=list(control))
    family = analysis.holm_family([a, b])
    assert stats.paired_p_value(dict(enumerate(near)), dict(enumerate(control))) == pytest.approx(0.0299, abs=1e-4)
    assert family == {"m": 3, "differ": 2, "kept": 1, "up": 1, "lost": {"a": ["near"]},
                      "compared": ["a", "b"], "beaten": ["a"], "unbeaten": []}   # no params: nothing regularized
    # alone, the borderline one would be kept: 0.030 <= 5% / 1 once the far one is rejected
    assert analysis.holm_family([_seed_results("a", control, far=far, near=near)]) == \
        {"m": 2, "differ": 2, "kept": 2, "up": 2, "lost": {}, "compared": ["a"], "beaten": ["a"], "unbeaten": []}


def test_the_report_marks_what_holms_correction_does_not_keep(rendered):
    from report import analysis
    page = visible_text(rendered["html"])
    data = {n: r for n, r in rendered["data"].items() if n != "best"}
    family = analysis.holm_family(list(data.values()))
    assert family["m"] and family["lost"] and family["kept"] < family["differ"]    # the fixture has both kinds
    assert f"it keeps {family['kept']} of the {family['differ']} differences beyond seed noise" in page
    lost = {v for names in family["lost"].values() for v in names}
    for v in lost - {v for v in lost if "<" in v}:     # the fixture's HTML-escaping name aside
        assert re.search(f"“{re.escape(v)}” " + r"\([^()]*\)[^;]*? at 95% uncorrected, but not after Holm’s correction", page), v
    # a difference the correction keeps carries no mark (names found in one experiment only)
    names = [v["name"] for r in data.values() for v in r["variants"]]
    kept = [c["variant"] for r in data.values() for c in (analysis.against_control(r) or {"differ": []})["differ"]
            if c["variant"] not in lost and names.count(c["variant"]) == 1]
    assert kept
    for v in kept:
        assert not re.search(f"“{re.escape(v)}” " + r"\([^()]*\)[^;]*? at 95% uncorrected, but not after Holm", page), v


def test_a_ranking_of_classes_names_the_ones_it_cannot_tell_apart():
    from report import analysis

    def cls(name, accs):
        return {"name": name, "by_seed": dict(enumerate(accs))}
    classes = [cls("Shirt", [0.76, 0.75, 0.77]), cls("Coat", [0.86, 0.85, 0.87]),
               cls("Pullover", [0.861, 0.855, 0.868]), cls("Bag", [0.98, 0.985, 0.982])]
    # Coat against Pullover: differences -0.001, -0.005, +0.002 include zero; Shirt and Bag differ every seed by far
    assert [c["name"] for c in analysis.class_ties(classes, 1)] == ["Pullover"]
    assert analysis.class_ties(classes, 0) == [] and analysis.class_ties(classes, -1) == []


def test_the_penalty_table_says_when_each_methods_best_strength_is_its_weakest(rendered):
    """The grid of strengths brackets nothing where every method's highest mean is at its weakest
    strength: the fixture's (means rise with strength) does not say so; the published report says it
    exactly where its committed result has it so."""
    from report import analysis
    sentence = "for every method that is the weakest strength tried"

    def at_edge(result):
        groups = [g for g in analysis.methods(result) if g["weakest"] is not None]
        return bool(groups) and all(g["strength"] == g["weakest"] for g in groups)
    assert not at_edge(rendered["data"]["regularization"]) and sentence not in visible_text(rendered["html"])
    committed = json.loads((ROOT / "results" / "regularization.json").read_text())
    published = visible_text((ROOT / "report" / "report.html").read_text(encoding="utf-8"))
    assert (sentence in published) == at_edge(committed)
