"""A report as a list of blocks, rendered twice: self-contained HTML (images inlined as base64
data URIs, inline CSS, nothing fetched) and Markdown beside PNG files. One list, so the two
files always say the same thing."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from .plots import Figure

__all__ = ["Bullets", "Heading", "Image", "Paragraph", "Table", "to_html", "to_markdown"]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str
    strong: str = ""  # a bold lead-in


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    figure: Figure
    file: str  # path of the PNG relative to report.md


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1180px; margin: 24px auto;
       padding: 0 16px; color: #1b1b1b; line-height: 1.5; }
h1 { font-size: 1.9em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
table { border-collapse: collapse; margin: 12px 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; } th { background: #f3f3f3; }
figure { margin: 20px 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #333; font-size: 0.95em; margin-top: 4px; }
"""


def to_html(title: str, blocks: list) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level + 1}>{e(b.text)}</h{b.level + 1}>")
        elif isinstance(b, Paragraph):
            out.append("<p>" + (f"<strong>{e(b.strong)}</strong> " if b.strong else "") + f"{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode(b.figure.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.figure.title)}">'
                       f"<figcaption><strong>{e(b.figure.title)}.</strong> {e(b.figure.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(title: str, blocks: list) -> str:
    out = [f"# {title}"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * (b.level + 1)} {b.text}")
        elif isinstance(b, Paragraph):
            out.append((f"**{b.strong}** " if b.strong else "") + b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(map(_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(_cell, r)) + " |" for r in b.rows]
            out.append("\n".join(lines))
        else:
            out.append(f"![{b.figure.title}]({b.file})\n\n*{b.figure.title}.* {b.figure.caption}")
    return "\n\n".join(out) + "\n"
