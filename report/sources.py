"""Source code quoted by name from the real modules at render time, never copied."""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from markupsafe import Markup

from .config import ENGINE, ROOT, ReportError
from .text import code


def _code_block(lines: list[str]) -> str:
    text = textwrap.dedent("\n".join(lines)).rstrip()
    fence = "`" * max(3, max((len(r) + 1 for r in re.findall(r"`{3,}", text)), default=3))
    return f"{fence}python\n{text}\n{fence}"


def _where(path: Path, first: int, last: int, function: str = "") -> str:
    lines = f"line {first}" if first == last else f"lines {first}–{last}"
    inside = f" in {code(function + '()')}" if function else ""
    return f"{code(path.relative_to(ROOT).as_posix())}{inside}, {lines}"


def quote_functions(module: str, *names: str) -> Markup:
    """The source of top-level functions (with decorators) of experiments/<module>, by name."""
    path = ENGINE / module
    lines = path.read_text().splitlines()
    defs = {n.name: n for n in ast.parse("\n".join(lines)).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    parts = []
    for name in names:
        if name not in defs:
            raise ReportError(f"{path.relative_to(ROOT)} has no function {name}(); update the report's "
                              f"code section (templates/report.md.j2)")
        node = defs[name]
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        parts.append(f"{_where(path, first, node.end_lineno)}:\n\n{_code_block(lines[first - 1:node.end_lineno])}")
    return Markup("\n\n".join(parts))


def quote_uses(module: str, function: str, attribute: str = "penalties", also: tuple = ("objective",),
               calls: tuple = ("l1_penalty", "l2_penalty", "soft_threshold_")) -> Markup:
    """The statements of `function` that use `attribute`.X (or assign a name in `also`), as
    contiguous spans of the innermost statement lists that hold them (an `if` is kept whole). Each
    of `attribute`.`calls` must be among them: a refactor that moves one into a helper would
    otherwise leave the report quoting lines that no longer show it, without an error."""
    path = ENGINE / module
    lines = path.read_text().splitlines()
    fn = next((n for n in ast.walk(ast.parse("\n".join(lines))) if isinstance(n, ast.FunctionDef)
               and n.name == function), None)
    if fn is None:
        raise ReportError(f"{path.relative_to(ROOT)} has no function {function}()")

    def mentions(node) -> bool:
        return any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == attribute
                   or isinstance(n, ast.Name) and n.id in also and isinstance(n.ctx, ast.Store)
                   for n in ast.walk(node))

    spans = []

    def visit(body: list) -> None:
        marked = []
        for stmt in body:
            if not mentions(stmt):
                continue
            inner = [b for f in ("body", "orelse", "finalbody") for b in [getattr(stmt, f, None)] if b]
            if isinstance(stmt, (ast.For, ast.While, ast.With, ast.Try)) and inner:
                for b in inner:
                    visit(b)
            else:
                marked.append(stmt)
        if marked:
            spans.append((marked[0].lineno, marked[-1].end_lineno))

    visit(fn.body)
    if not spans:
        raise ReportError(f"{path.relative_to(ROOT)}: {function}() no longer uses {attribute}.*")
    spans.sort()
    quoted = "\n".join(line for a, b in spans for line in lines[a - 1:b])
    missing = [c for c in calls if f"{attribute}.{c}(" not in quoted]
    if missing:
        raise ReportError(f"{path.relative_to(ROOT)}: {function}() no longer calls {', '.join(f'{attribute}.{c}' for c in missing)} "
                          f"itself, so the report's quote of it would not show how the penalties are applied: quote "
                          f"the function that does now (templates/report.md.j2, quote_uses)")
    parts = [f"{_where(path, a, b, function)}:\n\n{_code_block(lines[a - 1:b])}" for a, b in spans]
    return Markup("\n\n".join(parts))
