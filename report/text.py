"""Markdown safety and number filters: every string a template prints is escaped unless it is
Markup, and every number goes through a filter (a bare number is an error)."""
from __future__ import annotations

import math
import re

from markupsafe import Markup

# Markdown safety: every string printed by a template is escaped unless it is Markup, i.e. made
# by a helper or filter below, or rendered by a template (whose own prints were escaped).

_MD_SPECIAL = re.compile(r"""([\\`*_{}\[\]()#+\-.!|<>&~^$@:"'=%])""")


_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def md_escape(text: str) -> str:
    """Literal text in pandoc Markdown: backslash before every special character, one line. An
    apostrophe inside a word ("AdamW's") is written typographic, as pandoc writes the prose's."""
    return _MD_SPECIAL.sub(r"\\\1", _APOSTROPHE.sub("\u2019", " ".join(str(text).split())))


def md(text) -> Markup:
    """Caption/label text given to a helper: Markup stays, a plain string is escaped."""
    return text if isinstance(text, Markup) else Markup(md_escape(text))


def finalize(value):
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return Markup(md_escape(value))
    raise TypeError(f"template printed {value!r} ({type(value).__name__}) without a filter: numbers go "
                    f"through pct/pm/num/sec/..., structures through a helper")


# ---------------------------------------------------------------------------------------------
# Number filters. Each returns Markup; None (a diverged run, a missing value) prints as "n/a".

def _na(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


NBSP = "\u00a0"   # keeps "89.12 ± 0.15%", "1.2 pp" and "12.3 s" on one line


def _minus(text: str) -> Markup:
    """A typographic minus sign (U+2212) instead of the hyphen in negative numbers."""
    return Markup(re.sub(r"-(?=\d)", "−", text))


def pct(x, digits: int = 2) -> Markup:
    """0.89123 -> 89.12%"""
    return Markup("n/a") if _na(x) else _minus(f"{100 * x:.{digits}f}%")


def pm(s: dict, digits: int = 2, scale: float = 100, unit: str = "%") -> Markup:
    """{mean, std, n} of a fraction -> "89.12 ± 0.15%" (sample std over n seeds)."""
    if not isinstance(s, dict) or _na(s.get("mean")):
        return Markup("n/a")
    std = s.get("std") or 0.0
    return _minus(f"{scale * s['mean']:.{digits}f}{NBSP}±{NBSP}{scale * std:.{digits}f}{unit.replace(' ', NBSP)}")


def ci(s: dict, digits: int = 2, scale: float = 100, unit: str = "%") -> Markup:
    """{mean, ci95} of a fraction -> "89.12% [88.95, 89.29]" (the 95% Student's t interval over
    seeds; just the mean where one seed gives no interval)."""
    if not isinstance(s, dict) or _na(s.get("mean")):
        return Markup("n/a")
    text = f"{scale * s['mean']:.{digits}f}{unit.replace(' ', NBSP)}"
    if s.get("ci95"):
        low, high = (scale * x for x in s["ci95"])
        text += f"{NBSP}[{low:.{digits}f}, {high:.{digits}f}]"
    return _minus(text)


def ci_pp(d: dict, digits: int = 2) -> Markup:
    """A paired difference {diff_mean, ci95} of fractions -> "+0.12 pp [−0.05, +0.29]"."""
    if not isinstance(d, dict) or _na(d.get("diff_mean")):
        return Markup("n/a")
    text = f"{100 * d['diff_mean']:+.{digits}f}{NBSP}pp"
    if d.get("ci95"):
        low, high = (100 * x for x in d["ci95"])
        text += f"{NBSP}[{low:+.{digits}f}, {high:+.{digits}f}]"
    return _minus(text)


def pmn(s: dict, digits: int = 1, unit: str = "") -> Markup:
    """{mean, std, n} of a plain quantity (epochs, seconds) -> "12.3 ± 0.4"."""
    return pm(s, digits, 1, unit)


def pp(x, digits: int = 2, sign: bool = False) -> Markup:
    """Difference of two fractions in percentage points: 0.0123 -> "1.23 pp" ("+1.23 pp" with sign)."""
    if _na(x):
        return Markup("n/a")
    return _minus(f"{100 * x:{'+' if sign else ''}.{digits}f}{NBSP}pp")


def num(x, digits: int = 0) -> Markup:
    """54000 -> "54,000"; 0.5 with digits=1 -> "0.5"."""
    return Markup("n/a") if _na(x) else _minus(f"{x:,.{digits}f}")


def g(x) -> Markup:
    """Compact general format for coefficients and learning rates: 1e-05, 0.001, 0.5."""
    return Markup("n/a" if _na(x) else md_escape(f"{x:g}"))


def sec(x, digits: int = 1) -> Markup:
    """seconds -> "12.3 s"."""
    return Markup("n/a" if _na(x) else f"{x:.{digits}f}{NBSP}s")


def duration(x) -> Markup:
    """Wall time: 75 -> "1 min 15 s", 3900 -> "1 h 05 min"."""
    if _na(x):
        return Markup("n/a")
    s = round(x)
    if s < 60:
        return Markup(f"{x:.1f}{NBSP}s")
    if s < 3600:
        return Markup(f"{s // 60}{NBSP}min {s % 60:02d}{NBSP}s")
    m = round(x / 60)
    return Markup(f"{m // 60}{NBSP}h {m % 60:02d}{NBSP}min")


def code(text) -> Markup:
    """Inline code whose content is shown verbatim (the fence is longer than any backtick run)."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


DEVICE_WORDS = {"cpu": "a CPU", "cuda": "a CUDA GPU"}   # torch's device types, as prose says them


def device(name) -> Markup:
    """A torch device type in words ("cpu" -> "a CPU"); another name stays code."""
    return Markup(DEVICE_WORDS[name]) if name in DEVICE_WORDS else code(name)


def yesno(x) -> Markup:
    return Markup("n/a" if x is None else ("yes" if x else "no"))


def upfirst(text: str) -> str:
    """First letter upper case, the rest untouched ("dropout rates" -> "Dropout rates", "AdamW" stays)."""
    return text[:1].upper() + text[1:]


def and_list(items, last: str = "and") -> Markup:
    """["a", "b", "c"] -> "a, b and c" (plain strings escaped, Markup kept); `last` "or": "a, b or c"."""
    items = [md(i) for i in items]
    return Markup(", ".join(items[:-1]) + f" {last} " + items[-1] if len(items) > 1 else "".join(items))


def quoted(name) -> Markup:
    """A variant's name in quotation marks, so a name with commas ("BN, lr=0.01") reads as one."""
    return Markup("“") + md(name) + Markup("”")


FILTERS = {"quoted": quoted, "pct": pct, "pm": pm, "ci": ci, "ci_pp": ci_pp, "pmn": pmn, "pp": pp, "num": num, "g": g, "sec": sec,
           "duration": duration, "code": code, "device": device, "yesno": yesno, "upfirst": upfirst, "and_list": and_list,
           # only for text a template rendered itself ({% set x | md %}...{% endset %}): its
           # prints were escaped already, so it must not be escaped again
           "md": lambda text: Markup(text)}
