"""A small HTML builder for the report: one self-contained page, figures as relative links.

Every number shown in a table is a :class:`Num`, rendered as
``<td data-json="a.b.0.c" data-value="0.98" data-format="pct">98.00%</td>``: the path of the
value in ``results.json``, the exact value and the format, so the page can be checked against
the JSON.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence

FORMATS = ("pct", "seconds", "num", "int")


def format_value(value: float, fmt: str) -> str:
    """The text shown for ``value`` in format ``fmt`` (pct: 0.981 -> '98.10%'; seconds:
    '1.23 s'; int: '42'; num: 4 significant digits)."""
    if fmt == "pct":
        return f"{100 * value:.2f}%"
    if fmt == "seconds":
        return f"{value:.2f} s"
    if fmt == "int":
        return f"{int(value)}"
    return f"{value:.4g}"


@dataclass
class Num:
    """A number from results.json: ``value`` at ``path`` (dot-separated keys and list indices)."""

    value: float
    path: str
    fmt: str = "num"

    def td(self, extra_class: str = "") -> str:
        cls = f"num {extra_class}".strip()
        return (f'<td class="{cls}" data-json="{html.escape(self.path)}" '
                f'data-value="{self.value!r}" data-format="{self.fmt}">'
                f"{format_value(self.value, self.fmt)}</td>")


def esc(text: Any) -> str:
    return html.escape(str(text))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: Optional[str] = None,
          highlight: Optional[set] = None) -> str:
    """An HTML table; cells are Num (numbers from the JSON) or text. ``highlight``: row indices
    drawn in bold (the best results)."""
    highlight = highlight or set()
    out = ['<table>']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cls = ' class="best"' if i in highlight else ""
        cells = [c.td() if isinstance(c, Num) else f"<td>{esc(c)}</td>" for c in row]
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def figure(src: str, caption: str, alt: str, narrow: bool = False) -> str:
    cls = ' class="narrow"' if narrow else ""
    return (f'<figure{cls}><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(alt)}" '
            f'loading="lazy"></a><figcaption>{caption}</figcaption></figure>')


def card(title: str, value: Num, note: str) -> str:
    return (f'<div class="card"><div class="card-title">{esc(title)}</div>'
            f'<div class="card-value" data-json="{esc(value.path)}" data-value="{value.value!r}" '
            f'data-format="{value.fmt}">{format_value(value.value, value.fmt)}</div>'
            f'<div class="card-note">{note}</div></div>')


CSS = """
:root { --ntk: #d1495b; --nngp: #00798c; --ink: #1d2433; --muted: #5b6475; --line: #e3e6ec;
        --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: var(--ink); background: var(--bg); }
header { background: linear-gradient(120deg, #1d2433, #2f3b55); color: #fff; padding: 36px 0 30px; }
header h1 { margin: 0 0 6px; font-size: 30px; letter-spacing: -0.5px; }
header p { margin: 0; color: #c9d1e3; }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 28px; }
nav { background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 2; }
nav a { display: inline-block; padding: 11px 14px 10px 0; color: var(--muted); text-decoration: none;
        font-size: 14px; margin-right: 8px; }
nav a:hover { color: var(--ink); }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; margin: 24px 0;
          padding: 24px 30px; }
h2 { margin: 0 0 6px; font-size: 23px; }
h3 { margin: 24px 0 6px; font-size: 18px; }
p.lead { color: var(--muted); margin-top: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 16px;
         margin: 24px 0 4px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px 20px; }
.card-title { color: var(--muted); font-size: 13px; text-transform: uppercase; letter-spacing: .6px; }
.card-value { font-size: 32px; font-weight: 650; margin: 2px 0; }
.card-note { color: var(--muted); font-size: 14px; }
.ntk { color: var(--ntk); } .nngp { color: var(--nngp); }
table { border-collapse: collapse; margin: 12px 0 8px; font-size: 15px; min-width: 60%; }
caption { text-align: left; color: var(--muted); font-size: 14px; padding-bottom: 6px; }
th { text-align: left; font-weight: 600; border-bottom: 2px solid var(--ink); padding: 6px 14px 6px 0; }
td { border-bottom: 1px solid var(--line); padding: 6px 14px 6px 0; vertical-align: top; }
td.num { font-variant-numeric: tabular-nums; text-align: right; }
tr.best td { font-weight: 650; background: #fff6e0; }
figure { margin: 16px 0 10px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px;
             background: #fff; }
figure img { max-height: 900px; }
figure.narrow img { max-width: 700px; }
p.config { color: var(--muted); font-size: 14px; }
figcaption { color: var(--muted); font-size: 14.5px; margin-top: 6px; max-width: 900px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
.status { display: inline-block; font-size: 12.5px; padding: 1px 9px; border-radius: 20px;
          margin-left: 8px; vertical-align: middle; font-weight: 600; }
.status.ok { background: #e3f4e8; color: #1f7a3a; }
.status.failed { background: #fde8e8; color: #a4262c; }
.status.skipped { background: #eef0f4; color: var(--muted); }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13.5px; }
pre { background: #f1f3f7; padding: 10px 14px; border-radius: 6px; overflow-x: auto; }
footer { color: var(--muted); font-size: 14px; padding: 10px 0 40px; }
"""


def page(title: str, subtitle: str, nav: List[tuple], body: str, footer: str) -> str:
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in nav)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><div class="wrap"><h1>{esc(title)}</h1><p>{subtitle}</p></div></header>
<nav><div class="wrap">{links}</div></nav>
<main class="wrap">
{body}
</main>
<footer class="wrap">{footer}</footer>
</body>
</html>
"""
