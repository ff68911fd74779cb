"""Typography of the rendered report (issue 15), measured on the output: in the PDF, code keeps its
indentation when a line wraps and is never stretched by the justified text around it, and cross-
references, citations and URLs are links; in the HTML, the table of contents stays in reach while
reading and display math is set in a math font; tables keep their captions in view, scroll only when
the window is too narrow for them and do not split a number, an interval or a name across lines, in
the HTML and in the PDF. One render of test_report's fixture results, whose commands are made as
long as real ones (they wrap), and for the tables also one of the repository's own results/."""
from __future__ import annotations

import base64
import html
import re
import shutil
import statistics
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest

import report.sources
from experiments import results
from test_report import ROOT, DevTools, needs_chromium, needs_poppler, render, write_fixture

pytestmark = pytest.mark.slow   # its own render of the fixture (about 25 s)

LONG_COMMAND = ("python -m experiments run {name} --out results/{name}.json --if-stale --skip-unavailable "
                "--since 2026-11-25T21:01:57+00:00")


@pytest.fixture(scope="module")
def typeset(tmp_path_factory):
    base = tmp_path_factory.mktemp("typography")
    res = base / "results"
    res.mkdir()
    for name, obj in write_fixture(res).items():
        if obj.get("provenance", {}).get("command"):
            obj["provenance"]["command"] = LONG_COMMAND.format(name=name)
            results.write_atomic(res / f"{name}.json", obj)
    # The quoted code is the engine's, whose lines fit a code block; a copy of it with one long
    # comment line inside a quoted function gives the wrapping tests a line that must wrap.
    engine = base / "project" / "experiments"
    shutil.copytree(ROOT / "experiments", engine, ignore=shutil.ignore_patterns("__pycache__"))
    penalties = engine / "penalties.py"
    text = penalties.read_text()
    assert "    for w in weights:\n" in text
    penalties.write_text(text.replace("    for w in weights:\n", "    # " + "a comment long enough to wrap in "
                                      "the PDF's code block, so that the typography tests see a wrapped line "
                                      "and its hanging indent\n    for w in weights:\n", 1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.sources, "ENGINE", engine)
        mp.setattr(report.sources, "ROOT", engine.parent)
        assert render(res, base / "out") == 0
    out = base / "out"
    return {"out": out, "pdf": out / "report.pdf", "html": out / "report.html",
            "markdown": (out / "build" / "report.md").read_text(encoding="utf-8")}


# --- the PDF's words and where they are ------------------------------------------------------------

class Word:
    def __init__(self, page: int, x0: float, y0: float, x1: float, y1: float, text: str):
        self.page, self.x0, self.y0, self.x1, self.y1, self.text = page, x0, y0, x1, y1, text

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def same_line(self, other: Word) -> bool:
        return self.page == other.page and abs(self.center[1] - other.center[1]) < 3

    def __repr__(self):
        return f"{self.text!r}@p{self.page + 1}({self.x0:.1f},{self.y0:.1f})"


def pdf_words(pdf: Path) -> tuple[list[list[Word]], list[float]]:
    """Every page's words in reading order (pdftotext -bbox: points, origin top left) and the
    pages' heights."""
    out = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages, heights = [], []
    for number, page in enumerate(out.split("<page ")[1:]):
        heights.append(float(re.search(r'height="([\d.]+)"', page).group(1)))
        pages.append([Word(number, *map(float, m.group(1, 2, 3, 4)), html.unescape(m.group(5))) for m in re.finditer(
            r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', page)])
    return pages, heights


class PdfText:
    """The words of a PDF, and where a text of the markdown is set in it."""

    def __init__(self, pdf: Path):
        self.pages, self.heights = pdf_words(pdf)
        self.lines = [lines_of(words) for words in self.pages]
        self._joined = []                 # per page: the words' text run together, and each character's word
        for words in self.pages:
            owner = [i for i, w in enumerate(words) for _ in w.text]
            self._joined.append(("".join(w.text for w in words), owner))

    def line_of(self, word: Word) -> list[Word]:
        return next(line for line in self.lines[word.page] if any(w is word for w in line))

    def find(self, spaced: str) -> list[tuple[list[Word], list[int], list[int]]]:
        """Every place where `spaced` (words separated by spaces, from the markdown) is set: the words
        that hold it and, for each but the first, how many spaces the source has before it (0: the PDF
        split a word of the source, e.g. at a line break) and where in `spaced`, spaces left out, it
        starts. The first and last word may carry punctuation of the text around it (a parenthesis, a
        comma), never a letter or digit."""
        target = "".join(spaced.split())
        spaces_before, count = [], 0              # per character of target: spaces before it in the source
        for ch in spaced.strip():
            if ch.isspace():
                count += 1
            else:
                spaces_before.append(count)
                count = 0
        found = []
        for words, (joined, owner) in zip(self.pages, self._joined):
            start = joined.find(target)
            while start >= 0:
                end = start + len(target)
                first, last = owner[start], owner[end - 1]
                if not (start > 0 and owner[start - 1] == first and joined[start - 1].isalnum()) and \
                        not (end < len(joined) and owner[end] == last and joined[end].isalnum()):
                    offsets = [owner.index(i, start) - start for i in range(first + 1, last + 1)]
                    found.append((words[first:last + 1], [spaces_before[o] for o in offsets], offsets))
                start = joined.find(target, start + 1)
        return found


def char_width(words: list[Word], spaced: str) -> float | None:
    """Width of one character of a monospaced source, from the words set wholly from it."""
    tokens = set(spaced.split())
    widths = [(w.x1 - w.x0) / len(w.text) for w in words if w.text in tokens and len(w.text) >= 2]
    return statistics.median(widths) if widths else None


def lines_of(words: list[Word]) -> list[list[Word]]:
    """Words in reading order, grouped into the lines they are set on."""
    lines = []
    for w in words:
        if lines and w.same_line(lines[-1][-1]):
            lines[-1].append(w)
        else:
            lines.append([w])
    return lines


def fenced_code(markdown: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.M | re.S)]


# --- 1 and 2: code in the PDF ----------------------------------------------------------------------

def words_of(typeset) -> PdfText:
    if "words" not in typeset:
        typeset["words"] = PdfText(typeset["pdf"])
    return typeset["words"]


def code_lines_in_pdf(typeset) -> list[dict]:
    """Every line of a code block (blank and one-character lines aside) where the PDF sets it: as
    whole PDF lines, so that a line found inside another line or in the prose does not count."""
    text = words_of(typeset)
    placed = []
    for number, block in enumerate(fenced_code(typeset["markdown"])):
        for line in block:
            for words, spaces, _ in text.find(line) if line.strip() else ():
                cw = char_width(words, line)
                if cw is None or text.line_of(words[0])[0] is not words[0] \
                        or text.line_of(words[-1])[-1] is not words[-1]:
                    continue
                indent = len(line) - len(line.lstrip(" "))
                placed.append({"block": number, "line": line, "indent": indent, "words": words,
                               "spaces": spaces, "cw": cw, "left": words[0].x0 - indent * cw})
    assert len(placed) >= 5, "the code blocks of the report are not in the PDF as the markdown has them"
    return placed


def block_edges(placed: list[dict]) -> dict[tuple[int, int], float]:
    """Each code block's left edge on each page: where its lines start, less their indentation."""
    edges = {}
    for p in placed:
        edges.setdefault((p["block"], p["words"][0].page), []).append(p["left"])
    return {key: statistics.median(lefts) for key, lefts in edges.items()}


@needs_poppler
def test_pdf_wrapped_code_lines_keep_their_indentation(typeset):
    """A code line too long for its block wraps; the continuation starts right of the line's own
    indentation (a hanging indent), never back at the block's left edge."""
    placed = code_lines_in_pdf(typeset)
    edges = block_edges(placed)
    wrapped, bad = 0, []
    for p in placed:
        first, *rest = lines_of(p["words"])
        edge = edges[(p["block"], first[0].page)]
        for cont in rest:
            wrapped += 1
            if cont[0].x0 < edge + (p["indent"] + 0.9) * p["cw"]:
                bad.append(f"{p['line'].strip()[:60]!r}: its continuation {cont[0]!r} starts "
                           f"{(cont[0].x0 - edge) / p['cw']:.1f} characters from the block's edge, "
                           f"the line itself {p['indent']}")
    assert wrapped, "no code line of the fixture wraps in the PDF, so this test sees nothing: it needs a quoted " \
                    "line longer than a code block is wide (about 100 characters)"
    assert not bad, "wrapped code lines lose their indentation:\n" + "\n".join(bad)


@needs_poppler
def test_pdf_code_blocks_are_left_aligned_and_not_stretched(typeset):
    """Every line of a code block starts at the block's edge plus its indentation, and two words are
    as far apart as the source's spaces between them, each one character wide: not stretched, and
    not shrunk either (justified, a line slightly too long would fit by narrower spaces)."""
    placed = code_lines_in_pdf(typeset)
    edges = block_edges(placed)
    bad = []
    for p in placed:
        words, cw = p["words"], p["cw"]
        if abs(p["left"] - edges[(p["block"], words[0].page)]) > 0.15 * cw:
            bad.append(f"{p['line'].strip()[:60]!r} starts {(p['left'] - edges[(p['block'], words[0].page)]) / cw:+.1f}"
                       f" characters off its indentation")
        for a, b, spaces in zip(words, words[1:], p["spaces"]):
            if a.same_line(b) and abs((b.x0 - a.x1) - spaces * cw) > 0.01 * cw:    # shrunk ones too
                bad.append(f"{p['line'].strip()[:60]!r}: {b.x0 - a.x1:.2f} pt between {a.text!r} and "
                           f"{b.text!r}, {spaces} space(s) of {cw:.2f} pt in the source")
    assert not bad, "code set unevenly:\n" + "\n".join(bad)


@needs_poppler
def test_pdf_command_lines_are_ragged_right_and_break_between_words(typeset):
    """The appendix's commands (`name.json`: `python -m ...`) are left-aligned and unstretched:
    every space one character of code wide (the one after the colon a normal space), every wrapped
    line starting where the item starts, no line breaking inside an option or a path, nor between
    an option and its value."""
    items = re.findall(r"^- `([^`]+)`: `([^`]+ [^`]+)`\s*$", typeset["markdown"], re.M)
    assert len(items) >= 5, "no list of commands in the report"
    text = words_of(typeset)
    wrapped, bad = 0, []
    for name, command in items:
        places = text.find(f"{name}: {command}")
        assert places, f"the command of {name} is not in the PDF as the markdown has it"
        for words, spaces, offsets in places:
            cw = char_width(words, command)
            lines = lines_of(words)
            wrapped += len(lines) > 1
            for a, b, n, offset in zip(words, words[1:], spaces, offsets):
                gap, in_command = b.x0 - a.x1, offset > len(name) + 1      # after "name.json: "
                if not a.same_line(b):
                    if n == 0:
                        bad.append(f"{name}: the line breaks inside {a.text + b.text!r}")
                    elif a.text.startswith("--") and not b.text.startswith("-"):
                        bad.append(f"{name}: the line parts option {a.text!r} from its value {b.text!r}")
                elif gap > 1.3 * max(n, 1) * cw or (in_command and abs(gap - n * cw) > 0.15 * cw):
                    bad.append(f"{name}: {gap:.2f} pt between {a.text!r} and {b.text!r} "
                               f"(one character of code: {cw:.2f} pt)")
            bad += [f"{name}: wrapped line {line[0]!r} starts {line[0].x0 - lines[0][0].x0:+.1f} pt from the item"
                    for line in lines[1:] if abs(line[0].x0 - lines[0][0].x0) > 1]
    assert wrapped, "no command wraps, so this test sees no wrapped line (the fixture's commands are too short)"
    assert not bad, "commands set unevenly:\n" + "\n".join(bad)


@needs_poppler
def test_pdf_inline_code_in_justified_text_is_not_stretched(typeset):
    """Justified prose stretches its own spaces only: a space inside inline code stays one character
    wide on a stretched line too."""
    markdown = re.sub(r"^```.*?^```", "", typeset["markdown"], flags=re.M | re.S)
    spans = {" ".join(m.group(2).split()) for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", markdown, re.S)}
    spans = {span for span in spans if 2 <= len(span.split()) <= 6}
    text = words_of(typeset)
    natural = statistics.mode(round(b.x0 - a.x1, 1) for lines in text.lines for line in lines   # a plain space
                              for a, b in zip(line, line[1:]) if b.x0 > a.x1)
    checked, stretched, bad = 0, 0, []
    for span in sorted(spans):
        for words, spaces, _ in text.find(span):
            cw = char_width(words, span)
            if cw is None:
                continue
            line = text.line_of(words[0])
            prose = [b.x0 - a.x1 for a, b in zip(line, line[1:]) if not any(w is a or w is b for w in words)]
            for a, b, n in zip(words, words[1:], spaces):
                if a.same_line(b):
                    checked += 1
                    stretched += bool(prose) and statistics.median(prose) > natural + 0.5
                    if abs((b.x0 - a.x1) - n * cw) > 0.15 * cw:
                        bad.append(f"`{span}`: {b.x0 - a.x1:.2f} pt between {a.text!r} and {b.text!r} on "
                                   f"page {a.page + 1}, one character of code is {cw:.2f} pt")
    assert checked and stretched, f"no inline code with a space on a stretched line ({checked} checked): nothing to test"
    assert not bad, "inline code stretched by justification:\n" + "\n".join(bad)


# --- 3: links in the PDF ---------------------------------------------------------------------------

REF = rb"(\d+)\s+(\d+)\s+R"


def pdf_objects(data: bytes) -> dict[int, bytes]:
    """The objects of a PDF, number -> bytes between `obj` and `endobj` (streams cut off), including
    those packed in object streams (zlib). Enough for the link annotations; no general parser."""
    objects, pos, streams = {}, 0, []
    header = re.compile(rb"(\d+)\s+\d+\s+obj\b")
    while (m := header.search(data, pos)) is not None:
        body_start = m.end()
        end = data.find(b"endobj", body_start)
        stream = data.find(b"stream", body_start, end if end >= 0 else None)
        if stream >= 0 and (length := re.search(rb"/Length\s+(\d+)(?!\s+\d+\s+R)", data[body_start:stream])):
            begin = stream + len(b"stream") + (2 if data[stream + 6:stream + 8] == b"\r\n" else 1)
            raw = data[begin:begin + int(length.group(1))]
            end = data.find(b"endobj", begin + len(raw))
            if re.search(rb"/Type\s*/ObjStm", data[body_start:stream]):
                streams.append((data[body_start:stream], raw))
            objects[int(m.group(1))] = data[body_start:stream]
        else:
            objects[int(m.group(1))] = data[body_start:end]
        if end < 0:
            break
        pos = end + len(b"endobj")
    for head, raw in streams:
        if b"FlateDecode" not in head:
            continue
        content = zlib.decompress(raw)
        first = int(re.search(rb"/First\s+(\d+)", head).group(1))
        nums = list(map(int, content[:first].split()))
        pairs = list(zip(nums[::2], nums[1::2]))
        for k, (num, off) in enumerate(pairs):
            stop = first + pairs[k + 1][1] if k + 1 < len(pairs) else len(content)
            objects[num] = content[first + off:stop]
    return objects


def pdf_links(pdf: Path) -> tuple[list[dict], int]:
    """Link annotations: page, rectangle (points, origin bottom left), and either the page an internal
    destination leads to (None when it leads nowhere) or the URI. And the number of pages."""
    objs = pdf_objects(pdf.read_bytes())
    deref = lambda b: objs.get(int(m.group(1)), b"") if (m := re.fullmatch(REF, b.strip())) else b  # noqa: E731
    catalog = next(body for body in objs.values() if re.search(rb"/Type\s*/Catalog", body))
    pages = []

    def walk(num: int):
        body = objs[num]
        if re.search(rb"/Type\s*/Pages", body):
            for kid in re.findall(REF, re.search(rb"/Kids\s*\[([^\]]*)\]", body).group(1)):
                walk(int(kid[0]))
        else:
            pages.append(num)
    walk(int(re.search(rb"/Pages\s+" + REF, catalog).group(1)))

    named = {}

    def names(body: bytes):
        if (kids := re.search(rb"/Kids\s*\[([^\]]*)\]", body)) is not None:
            for kid in re.findall(REF, kids.group(1)):
                names(objs[int(kid[0])])
        if (entries := re.search(rb"/Names\s*\[(.*)\]", body, re.S)) is not None:
            for key, value in re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*(\d+\s+\d+\s+R|\[[^\]]*\])", entries.group(1)):
                named[key] = value
    if (tree := re.search(rb"/Dests\s*(<<.*?>>|" + REF + rb")", catalog, re.S)) is not None:
        names(deref(tree.group(1)))

    def page_of(dest: bytes) -> int | None:
        dest = deref(dest).strip()
        if (m := re.fullmatch(rb"\(((?:[^()\\]|\\.)*)\)|/(\S+)", dest)) is not None:
            dest = named.get(m.group(1) if m.group(1) is not None else m.group(2))
            if dest is None:
                return None
            dest = deref(dest).strip()
            if (d := re.search(rb"/D\s*(\[[^\]]*\])", dest)) is not None:
                dest = d.group(1)
        m = re.match(rb"\[\s*" + REF, dest)
        return pages.index(int(m.group(1))) if m and int(m.group(1)) in pages else None

    links = []
    for index, num in enumerate(pages):
        annots = re.search(rb"/Annots\s*(\[[^\]]*\]|" + REF + rb")", objs[num])
        if annots is None:
            continue
        for ref in re.findall(REF, deref(annots.group(1))):
            body = objs[int(ref[0])]
            if not re.search(rb"/Subtype\s*/Link", body):
                continue
            link = {"page": index, "rect": [float(v) for v in re.search(rb"/Rect\s*\[([^\]]*)\]", body).group(1).split()]}
            if (uri := re.search(rb"/URI\s*\(((?:[^()\\]|\\.)*)\)", body)) is not None:
                link["uri"] = uri.group(1).decode("latin-1")
            elif (dest := re.search(rb"/Dest\s*(\((?:[^()\\]|\\.)*\)|/[^\s/\[<(]+|\[[^\]]*\]|" + REF + rb")", body)) or \
                    (dest := re.search(rb"/S\s*/GoTo\s*/D\s*(\((?:[^()\\]|\\.)*\)|/[^\s/\[<(]+|\[[^\]]*\]|" + REF + rb")", body)):
                link["target"] = page_of(dest.group(1))
            else:
                link["target"] = None
            links.append(link)
    return links, len(pages)


def link_at(links: list[dict], word: Word, height: float) -> dict | None:
    x, y = word.center
    y = height - y                                   # PDF user space: origin bottom left
    return next((link for link in links if link["page"] == word.page
                 and link["rect"][0] <= x <= link["rect"][2] and link["rect"][1] <= y <= link["rect"][3]), None)


@needs_poppler
def test_pdf_references_citations_and_urls_are_links(typeset):
    """What the HTML links, the PDF links too, to the same place: every "Figure N", "Table N" and
    "Section N" to the page with that caption or heading, every author-date citation to the page
    with its entry in the reference list, every URL to itself. No link leads nowhere."""
    links, page_count = pdf_links(typeset["pdf"])
    internal = [link for link in links if "uri" not in link]
    assert internal, "the PDF has no links to places in itself"
    dangling = [link for link in internal if link["target"] is None]
    assert not dangling, f"links that lead nowhere: {dangling[:5]}"

    page = typeset["html"].read_text(encoding="utf-8")
    body = [(href, " ".join(re.sub(r"<[^>]+>", "", inner).split())) for href, inner in re.findall(
        r'<a href="([^"]+)"[^>]*>(.*?)</a>', re.sub(r'<nav id="TOC".*?</nav>', "", page, flags=re.S), re.S)
        if not re.fullmatch(r"#cb\d+-\d+|#TOC", href)]      # the anchors of highlighted code lines, "Contents"
    expected = Counter(tuple(label.split()) for href, label in body
                       if href.startswith("#") and re.fullmatch(r"(Figure|Table|Section) \d+(\.\d+)*", label))
    citations = sum(href.startswith("#ref-") for href, _ in body)
    urls = {html.unescape(href) for href, _ in body if href.startswith(("http://", "https://"))}
    titles = dict(re.findall(r'<span class="toc-section-number">([\d.]+)</span>\s*([^\s<]+)', page))
    assert expected and citations and urls, "the fixture report lacks cross-references, citations or URLs"
    assert len(internal) >= sum(href.startswith("#") for href, _ in body), \
        f"the PDF has fewer links to places in itself ({len(internal)}, its outline included) than the HTML's text"

    text = words_of(typeset)
    words = [w for words in text.pages for w in words]
    where = {}                  # ("Figure", "3") -> the page of its caption; ("Section", "3.8") -> of its heading
    size = statistics.median(w.y1 - w.y0 for w in words)
    for a, b in zip(words, words[1:]):
        if a.text in ("Figure", "Table") and re.fullmatch(r"\d+:", b.text):
            where[(a.text, b.text[:-1])] = a.page
        if titles.get(a.text) == b.text and a.y1 - a.y0 > 1.1 * size:       # a heading: larger type
            where[("Section", a.text)] = a.page
    found, cited, wrong = Counter(), 0, []
    for a, b in zip(words, words[1:]):
        link = link_at(links, a, text.heights[a.page])
        if link is None or "uri" in link:
            continue
        kind = a.text.lstrip("([")                                          # "(Table 9)"
        if kind in ("Figure", "Table", "Section") and (m := re.fullmatch(r"(\d+(?:\.\d+)*)[,.;:)\]]*", b.text)):
            key = (kind, m.group(1))
            found[key] += 1
            if link["target"] != where.get(key):
                wrong.append(f"{' '.join(key)} at {a!r} leads to page {link['target'] + 1}, its "
                             f"{'heading' if kind == 'Section' else 'caption'} is on page "
                             f"{where[key] + 1 if key in where else '(not found)'}")
        elif m := re.fullmatch(r"\(?(\d{4}[a-z]?|n\.d\.)\W*", a.text):       # the end of "Xiao et al. 2017a"
            cited += 1
            entry = re.compile(re.escape(m.group(1).rstrip(".")) + r"\.?[.,]?")        # "2017a." or "n.d."
            if not any(entry.fullmatch(w.text) for w in text.pages[link["target"]]):
                wrong.append(f"the citation at {a!r} leads to page {link['target'] + 1}, where no entry of "
                             f"{m.group(1)} is")
    assert found == expected, "cross-references the HTML links but the PDF does not (or more often): " + \
        str({" ".join(k): (expected[k], found[k]) for k in expected.keys() | found.keys() if expected[k] != found[k]})
    assert cited == citations, f"the HTML links {citations} citations, the PDF {cited}"
    assert not wrong, "links that lead to the wrong place:\n" + "\n".join(wrong[:10])
    pdf_urls = {link["uri"] for link in links if "uri" in link}
    assert urls <= pdf_urls, f"URLs the HTML links but the PDF does not: {sorted(urls - pdf_urls)[:5]}"
    url_words = [w for w in words if w.text.startswith(("http://", "https://"))]
    unlinked = [w for w in url_words if "uri" not in (link_at(links, w, text.heights[w.page]) or {})]
    assert url_words and not unlinked, f"URLs in the PDF's text that are not links: {unlinked[:5]}"
    assert all(link["target"] < page_count for link in internal)


# --- 4: the HTML's table of contents and math, in a headless browser ---------------------------------

def open_page(tools: DevTools, url: str, width: int, height: int) -> str:
    target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "DOM", "CSS"):
        tools.send(f"{domain}.enable", session=session)
    tools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                      "mobile": False}, session=session)
    tools.send("Page.navigate", {"url": url}, session=session)
    tools.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, 60)
    return session


def evaluate(tools: DevTools, session: str, expression: str):
    reply = tools.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                       session=session)
    assert "exceptionDetails" not in reply, reply["exceptionDetails"]
    return reply["result"].get("value")


SETTLE = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
# links to the table of contents or in it that a reader can see and click right now: inside the
# window, and the topmost element at their centre
REACHABLE = """
    Array.from(document.querySelectorAll('nav#TOC a[href^="#"], a[href="#TOC"]')).filter(a => {
      const r = a.getBoundingClientRect();
      if (!r.width || !r.height || r.bottom <= 0 || r.right <= 0 || r.top >= innerHeight || r.left >= innerWidth)
        return false;
      const x = Math.min(Math.max(r.left + r.width / 2, 0), innerWidth - 1);
      const y = Math.min(Math.max(r.top + r.height / 2, 0), innerHeight - 1);
      const hit = document.elementFromPoint(x, y);
      return hit === a || a.contains(hit);
    }).map(a => a.getAttribute('href'))"""


@needs_chromium
@pytest.mark.parametrize("width", [1400, 600])
def test_html_contents_stay_in_reach_after_scrolling(typeset, tmp_path, width):
    """At the end of the page, a link into the table of contents (wide window: the sidebar) or back
    to it (narrow window: the "Contents" link) is in view and clickable, and following it shows the
    table of contents. The page does not scroll sideways."""
    tools = DevTools(tmp_path / "profile")
    try:
        session = open_page(tools, typeset["html"].as_uri(), width, 800)
        evaluate(tools, session, "window.scrollTo(0, document.documentElement.scrollHeight)")
        evaluate(tools, session, SETTLE)
        scrolled = evaluate(tools, session, "[scrollY, document.documentElement.scrollHeight - innerHeight, "
                                            "document.documentElement.scrollWidth, innerWidth]")
        reachable = evaluate(tools, session, REACHABLE)
        shot = tools.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        (tmp_path / f"contents-{width}.png").write_bytes(base64.b64decode(shot))
        toc_in_view = None
        if reachable:
            href = reachable[0]
            evaluate(tools, session, f"document.querySelector('a[href=\"{href}\"]').click()")
            evaluate(tools, session, SETTLE)
            toc_in_view = evaluate(tools, session, """(() => {
                const toc = document.querySelector('nav#TOC').getBoundingClientRect();
                return toc.top < innerHeight && toc.bottom > 0 && toc.height > 0; })()""")
    finally:
        tools.close()
    scroll_y, max_scroll, scroll_width, inner_width = scrolled
    assert max_scroll > 2000 and scroll_y >= max_scroll - 1, f"not scrolled to the end: {scrolled}"
    assert reachable, f"at {width} px, scrolled to the end, no link to or in the table of contents is in view " \
                      f"(screenshot: {tmp_path / f'contents-{width}.png'})"
    assert toc_in_view, f"following {reachable[0]} does not show the table of contents"
    assert scroll_width <= inner_width, f"at {width} px the page scrolls sideways ({scroll_width} > {inner_width})"


@needs_chromium
def test_html_display_math_is_set_in_a_math_font(typeset, tmp_path):
    """Display math names math fonts in its stack, ending in a generic family (the page loads no font
    file), and where the system has a font with "Math" in its name, Chromium draws the math with one."""
    tools = DevTools(tmp_path / "profile")
    try:
        session = open_page(tools, typeset["html"].as_uri(), 1000, 800)
        family = evaluate(tools, session, "getComputedStyle(document.querySelector('math[display=\"block\"]')).fontFamily")
        root = tools.send("DOM.getDocument", {"depth": -1}, session=session)["root"]["nodeId"]
        node = tools.send("DOM.querySelector", {"nodeId": root, "selector": 'math[display="block"] mi'},
                          session=session)["nodeId"]
        used = tools.send("CSS.getPlatformFontsForNode", {"nodeId": node}, session=session)["fonts"]
    finally:
        tools.close()
    stack = [f.strip().strip('"') for f in family.split(",")]
    assert any("Math" in f for f in stack), f"no math font in the stack of display math: {family}"
    assert stack[-1] in ("math", "serif", "sans-serif"), f"the font stack does not end in a generic family: {family}"
    installed = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True).stdout \
        if shutil.which("fc-list") else ""
    if "Math" in installed:
        assert used and all("Math" in f["familyName"] for f in used), \
            f"display math is drawn with {[f['familyName'] for f in used]}, not a math font ({family})"


# --- 5: tables, in the PDF and in the HTML -----------------------------------------------------------

@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """The report of the repository's own results/ (a copy: a stale figure is redrawn there, not in
    results/figures), whose tables hold the real variant names and numbers."""
    if not any((ROOT / "results").glob("*.json")):
        pytest.skip("no results/*.json in this checkout")
    base = tmp_path_factory.mktemp("real")
    shutil.copytree(ROOT / "results", base / "results", ignore=shutil.ignore_patterns("*.tmp*", ".*"))
    assert render(base / "results", base / "out") == 0
    out = base / "out"
    return {"out": out, "pdf": out / "report.pdf", "html": out / "report.html",
            "markdown": (out / "build" / "report.md").read_text(encoding="utf-8")}


REPORTS = ["typeset", "real_report"]      # the fixture's report and the real one
# a mean or a difference with its 95% interval, as the report's filters write them in table cells:
# "89.61% [89.50, 89.71]", "−0.22 pp [−0.27, −0.17]" (a no-break space before the bracket)
INTERVAL = re.compile(r"[−+]?\d[\d.,]*(?:%|\s?pp)?\s\[[−+]?\d[\d.]*%?, [−+]?\d[\d.]*%?\]")


@needs_poppler
@pytest.mark.parametrize("which", REPORTS)
def test_pdf_table_intervals_and_headings_stay_on_one_line(request, which):
    """In the PDF's tables (8 pt, see typst-header.typ; the columns' widths come from the dashes of
    each pipe table's separator line) every interval of a cell is set on one line, never broken after
    its comma, and a heading's "[95% CI]" is not split either."""
    report = request.getfixturevalue(which)
    rows = [line.replace("**", "") for line in report["markdown"].splitlines() if line.startswith("|")]
    cells = sorted({m.group(0) for line in rows for m in INTERVAL.finditer(line)})
    assert len(cells) >= 20, f"the {which} report has few intervals in its tables: {cells}"
    text = words_of(report)
    size = statistics.median(w.y1 - w.y0 for words in text.pages for w in words)     # the body text's
    unplaced, split, placed = [], [], 0
    for cell in cells:
        in_tables = [words for words, _, _ in text.find(cell) if words[0].y1 - words[0].y0 < 0.85 * size]
        if not in_tables:
            unplaced.append(cell)
        for words in in_tables:
            placed += 1
            if len(lines_of(words)) > 1:
                split.append(" / ".join(" ".join(w.text for w in line) for line in lines_of(words)) +
                             f" (page {words[0].page + 1})")
    headings = [(a, b) for words in text.pages for a, b in zip(words, words[1:])
                if a.text.endswith("[95%") and b.text.startswith("CI]")]
    split += [f"{a.text} / {b.text} (page {a.page + 1})" for a, b in headings if not a.same_line(b)]
    assert not unplaced, f"intervals of the tables not found in the PDF's table type: {unplaced[:5]}"
    assert placed >= len(cells) and headings, "nothing to check: no interval or heading found in the PDF's tables"
    assert not split, f"{len(split)} table cells of the {which} PDF are broken across lines:\n" + "\n".join(split[:12])


# Every table of the page, measured: the scrolling box around it (boxes.lua), its caption where it is
# drawn (before and after the box is scrolled to its right end), and the cells set on more than one
# line (the tops of their text's line boxes).
TABLES = """(async () => {
  const settle = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const rect = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right}; };
  const lines = cell => {
    const tops = [];
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const range = document.createRange();
      range.selectNodeContents(n);
      for (const r of range.getClientRects()) if (r.width > 0) tops.push(r.top);
    }
    tops.sort((a, b) => a - b);
    return tops.reduce((count, top, i) => count + (i > 0 && top - tops[i - 1] > 6), tops.length ? 1 : 0);
  };
  const tables = Array.from(document.querySelectorAll('table')).map(t => {
    const box = t.parentElement, caption = t.querySelector('caption');
    return {id: t.id, caption: caption ? caption.textContent.slice(0, 50) : null,
            box: box.matches('div.table-scroll') ? box : t, el: caption, t,
            cells: Array.from(t.querySelectorAll('tbody td')).map(td => ({
              text: td.textContent.trim(), first: td.cellIndex === 0, lines: lines(td)}))};
  });
  const where = () => tables.map(x => x.el && {caption: rect(x.el), sw: x.el.scrollWidth, cw: x.el.clientWidth,
      box: {left: x.box.getBoundingClientRect().left + x.box.clientLeft,
            right: x.box.getBoundingClientRect().left + x.box.clientLeft + x.box.clientWidth}});
  const before = where();
  tables.forEach(x => { x.scroll = [x.box.scrollWidth, x.box.clientWidth]; x.box.scrollLeft = x.box.scrollWidth; });
  await settle();
  const after = where();
  return {innerWidth, pageWidth: document.documentElement.scrollWidth,
          tables: tables.map((x, i) => ({id: x.id, caption: x.caption, scroll: x.scroll, cells: x.cells,
                                         before: before[i], after: after[i]}))};
})()"""


@needs_chromium
@pytest.mark.parametrize("which", REPORTS)
def test_html_tables_keep_captions_in_view_and_cells_whole(request, tmp_path, which):
    """At 1400 px (the sidebar layout) and at 700 px: no table's caption is clipped, before or after
    its table is scrolled sideways to the end (the caption stays in the window and in the table's
    box); at 1400 px no table that fits the window scrolls sideways (none of the real report's), the
    free space right of the text being used instead;
    no interval, name or other token of a cell (a file name, a commit hash) is split across lines, nor
    a short first-column label ("1 hidden"). The page itself never scrolls sideways."""
    report = request.getfixturevalue(which)
    tools = DevTools(tmp_path / "profile")
    measured = {}
    try:
        for width in (1400, 700):
            session = open_page(tools, report["html"].as_uri(), width, 900)
            evaluate(tools, session, SETTLE)
            measured[width] = evaluate(tools, session, TABLES)
            shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False},
                              session=session)["data"]
            (tmp_path / f"tables-{width}.png").write_bytes(base64.b64decode(shot))
    finally:
        tools.close()
    bad = []
    for width, page in measured.items():
        assert len(page["tables"]) >= 10, f"the {which} report has few tables: {len(page['tables'])}"
        if page["pageWidth"] > page["innerWidth"]:
            bad.append(f"{width} px: the page scrolls sideways ({page['pageWidth']} > {page['innerWidth']})")
        for t in page["tables"]:
            name = f"{width} px, {t['id'] or t['caption']!r}"
            for when in ("before", "after"):
                c = t[when]
                if c is None:
                    continue
                cap, box = c["caption"], c["box"]
                if c["sw"] > c["cw"] + 1 or cap["left"] < max(box["left"], 0) - 1 or \
                        cap["right"] > min(box["right"], page["innerWidth"]) + 1:
                    bad.append(f"{name}: caption clipped {when} scrolling the table: caption {cap['left']:.0f}-"
                               f"{cap['right']:.0f} px, its box {box['left']:.0f}-{box['right']:.0f} px, "
                               f"text {c['sw']} px wide in {c['cw']} px")
            # a table that fits between its left edge and the window's (less a scroll bar and a margin)
            fits = t["before"] is None or t["scroll"][0] <= page["innerWidth"] - t["before"]["box"]["left"] - 40
            if width == 1400 and (fits or which == "real_report") and t["scroll"][0] > t["scroll"][1] + 1:
                bad.append(f"{name}: the table scrolls sideways ({t['scroll'][0]} px in {t['scroll'][1]} px)")
            for cell in t["cells"]:
                token = cell["text"] and not re.search(r"\s", cell["text"])
                short_label = cell["first"] and len(cell["text"]) <= 24
                if cell["lines"] > 1 and (token or short_label or INTERVAL.search(cell["text"])):
                    bad.append(f"{name}: the cell {cell['text']!r} is set on {cell['lines']} lines")
    assert not bad, f"tables of the {which} HTML (screenshots in {tmp_path}):\n" + "\n".join(bad[:15])


def blank_bands(pdf: Path, folder: Path) -> list[float]:
    """Per page but the last, the tallest run of blank rows (pixels lighter than 95% white across
    the whole width) as a fraction of the page height, from a 30 dpi greyscale rendering."""
    subprocess.run(["pdftoppm", "-r", "30", "-gray", str(pdf), str(folder / "page")], check=True)
    fractions = []
    for page in sorted(folder.glob("page-*.pgm"))[:-1]:
        data = page.read_bytes()
        width, height, _ = (int(v) for v in data.split(maxsplit=4)[1:4])
        pixels = data[len(data) - width * height:]
        inked = [i for i in range(height) if min(pixels[i * width:(i + 1) * width]) < 0.95 * 255]
        fractions.append(max(b - a for a, b in zip(inked, inked[1:])) / height)
    return fractions


@needs_poppler
@pytest.mark.parametrize("which", REPORTS)
def test_pdf_pages_are_not_left_part_empty_before_a_figure(request, which, tmp_path):
    """Figures float (typst-header.typ), so one that does not fit below its paragraph no longer
    leaves the rest of the page empty: in the text's flow, pages of the real report ended 20-40% blank."""
    bands = blank_bands(request.getfixturevalue(which)["pdf"], tmp_path)
    worst = max(range(len(bands)), key=bands.__getitem__)
    assert bands[worst] < 0.25, f"page {worst + 1} of {len(bands) + 1} is {bands[worst]:.0%} blank in one band"


@needs_poppler
def test_pdf_figures_stay_near_the_section_that_shows_them(real_report):
    """A floated figure is placed before the next (sub)section's heading (place.flush in
    typst-header.typ), and after its own heading or at the top of that heading's page: in the PDF's
    reading order its caption never follows a later section's heading. (Floated to page bottoms
    only, five of the real report's figures had drifted into the next subsection.)"""
    expected, order, section = {}, [], None
    for line in real_report["markdown"].splitlines():
        if m := re.match(r"#{1,2} (.+?)(?: \{[^}]*\})?$", line):
            section = m.group(1).replace("\\", "")
            order.append(section)
        for number in re.findall(r"!\[Figure (\d+):", line):
            expected[number] = section
    text = subprocess.run(["pdftotext", str(real_report["pdf"]), "-"], capture_output=True, text=True,
                          check=True).stdout
    headings = {m.group(1): m.start() for m in re.finditer(r"^\f?\d+(?:\.\d+)* (.+)$", text, re.M)
                if m.group(1) in set(order)}
    page_of = lambda pos: text.count("\f", 0, pos)   # noqa: E731
    captions = {m.group(1): m.start() for m in reversed(list(re.finditer(r"Figure (\d+):", text)))}
    assert len(expected) > 10 and set(captions) == set(expected)
    for number, own in expected.items():
        later = [headings[t] for t in order[order.index(own) + 1:] if t in headings]
        assert not later or captions[number] < min(later), f"Figure {number} comes after the section after {own!r}"
        assert captions[number] > headings[own] or page_of(captions[number]) == page_of(headings[own]), \
            f"Figure {number} is placed before {own!r}, on an earlier page"


# Where the lines of an element break: for each line after the first, the text either side of the
# break (found from the characters' rectangles), with the element's whole text.
LINE_BREAKS = """(el => {
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT), chars = [];
  let node, offset = 0;
  while ((node = walker.nextNode())) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange(); range.setStart(node, i); range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (rect && rect.width > 0) chars.push([offset + i, Math.round(rect.top)]);
    }
    offset += node.length;
  }
  const text = el.textContent, breaks = [];
  for (let i = 1; i < chars.length; i++)
    if (chars[i][1] > chars[i - 1][1] + 2) breaks.push(text.slice(chars[i - 1][0], chars[i][0] + 1));
  return [text, breaks];
})"""


@needs_chromium
def test_html_command_lines_break_only_between_words(typeset, tmp_path):
    """In a narrow window the appendix's long commands wrap, and only at their spaces: never after
    the hyphen of an option ("--if-" / "stale") or inside a path (boxes.lua, style.css)."""
    tools = DevTools(tmp_path / "profile")
    try:
        session = open_page(tools, typeset["html"].as_uri(), 600, 800)
        items = evaluate(tools, session, f"""Array.from(document.querySelectorAll('li'))
            .filter(li => li.textContent.includes('python -m experiments run')).map({LINE_BREAKS})""")
    finally:
        tools.close()
    assert len(items) >= 5 and any(breaks for _, breaks in items), "no command wraps at this width"
    bad = [(text, b) for text, breaks in items for b in breaks if not any(c.isspace() for c in b)]
    assert not bad, f"lines that break inside a word: {bad[:3]}"
