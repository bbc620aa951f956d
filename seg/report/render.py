"""Rendering: tables and sections as data, turned into Markdown and HTML by Jinja2 templates
(seg/report/templates/: report.md.j2, index.html.j2; the HTML is autoescaped and self-contained)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    bold: set = field(default_factory=set)          # (row, col) cells to mark (the caption says why)
    caption: str = ""


@dataclass
class Section:
    """One task's part of the report: (kind, payload) blocks, kind in h3 / p / table / img / ul."""
    task: str
    blocks: list = field(default_factory=list)

    def h(self, text: str):
        self.blocks.append(("h3", text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, t: Table):
        self.blocks.append(("table", t))

    def image(self, path: Path | None, alt: str, out: Path):
        if path is not None:
            self.blocks.append(("img", (path.relative_to(out).as_posix(), alt)))

    def items(self, lines: Sequence[str]):
        if lines:
            self.blocks.append(("ul", list(lines)))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_row(row: Sequence[str], i: int, bold: set) -> str:
    cells = [f"**{_md_cell(c)}**" if (i, j) in bold and c != "–" else _md_cell(c) for j, c in enumerate(row)]
    return "| " + " | ".join(cells) + " |"


def _env(autoescape: bool) -> Environment:
    env = Environment(loader=PackageLoader("seg.report", "templates"), undefined=StrictUndefined,
                      autoescape=autoescape,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = _md_cell
    env.filters["slug"] = slug
    env.globals["md_row"] = _md_row
    return env


def render_markdown(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    return _env(False).get_template("report.md.j2").render(title=title, meta=meta, sections=sections)


def render_html(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    return _env(True).get_template("index.html.j2").render(title=title, meta=meta, sections=sections)


def markdown_table(table: Table) -> str:
    """One table in Markdown (the README's results table is written with it)."""
    return _env(False).get_template("table.md.j2").render(table=table).strip()


# ----------------------------------------------------------------------------------------------------
# number formats

def finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value, key: str = "", like: float | None = None) -> str:
    """A value for a table; `like` picks the decimals (a std is printed with its mean's decimals)."""
    if not finite(value):
        return "–"
    v = float(value)
    if key.startswith(("test/hd", "test/assd", "hd")):
        scale = abs(v if like is None or not finite(like) else like)
        return f"{v:.2f}" if scale < 100 else f"{v:.1f}"
    if key == "model/params":
        return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{int(v):,}"
    if key.startswith("time/") or key in ("run/duration_s", "best/epoch"):
        return f"{v:.1f}"
    return f"{v:.3f}"


def fmt_ci(mean, low, high, key: str = "") -> str:
    """'0.712 [0.690, 0.733]'; the mean alone when the CI is undefined (one unit)."""
    if not finite(mean):
        return "–"
    text = fmt(mean, key)
    return text + (f" [{fmt(low, key, like=mean)}, {fmt(high, key, like=mean)}]" if finite(low) else "")


def fmt_stat(stat: tuple[float, float, int], key: str) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    return fmt(mean, key) + (f" ± {fmt(std, key, like=mean)}" if finite(std) else "")


def signed(v, digits: int = 3) -> str:
    return f"{float(v):+.{digits}f}" if finite(v) else "–"


def fmt_p(v) -> str:
    if not finite(v):
        return "–"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"
