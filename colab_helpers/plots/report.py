"""The one self-contained HTML report builder: a title, a line of context, then sections of tables and figures.

Every report of the package (a sweep's, the spelling study's) is one HTML file that opens anywhere, offline: figures
are embedded as base64 PNG, tables are pandas' HTML. A section's body is a part or a list of parts: a DataFrame
(a table), a figure (anything with ``png()``, e.g. from :func:`~colab_helpers.plots.base.new_figure`) or a string
of HTML.
"""

from __future__ import annotations

import base64
import html
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_text

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:13px}\n"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} img{max-width:100%}"
)


def figure_html(figure: Any, alt: str) -> str:
    """Return an ``<img>`` tag holding ``figure`` (anything with ``png()``, or PNG bytes) as a base64 PNG."""
    png = figure if isinstance(figure, bytes) else figure.png()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table_html(frame: Any, *, index: bool = False) -> str:
    """Return ``frame`` (a pandas DataFrame) as an HTML table, or an italic "(none)" when it is None or empty."""
    if frame is None or frame.empty:
        return "<p><i>(none)</i></p>"
    return frame.to_html(index=index)


def _part_html(part: Any, heading: str) -> str:
    if isinstance(part, str):
        return part
    if part is None or hasattr(part, "to_html"):
        return table_html(part)
    if isinstance(part, bytes) or hasattr(part, "png"):
        return figure_html(part, heading)
    raise TypeError(f"a report section holds DataFrames, figures or HTML strings, got {type(part).__name__}")


def html_report(title: str, sections: Mapping[str, Any], *, intro: str = "") -> str:
    """Return a self-contained HTML page: ``title``, "Written <time>." and ``intro``, then one ``<h2>`` per section.

    ``sections`` maps each heading to its body: a DataFrame (shown without its index; pass
    ``table_html(frame, index=True)`` to keep it), a figure (embedded as PNG), an HTML string, or a list of these.
    ``title`` and ``intro`` are plain text (escaped).
    """
    body = []
    for heading, content in sections.items():
        parts = content if isinstance(content, list | tuple) else [content]
        body.append(f"<h2>{html.escape(heading)}</h2>" + "\n".join(_part_html(part, heading) for part in parts))
    context = f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}." + (f" {intro}" if intro else "")
    return "\n".join([
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(context)}</p>",
        *body,
        "</body></html>",
        "",
    ])  # fmt: skip


def write_html_report(path: str | os.PathLike[str], title: str, sections: Mapping[str, Any], *,
                      intro: str = "") -> Path:  # fmt: skip
    """Write :func:`html_report` to ``path`` atomically (a crash never leaves half a page); return the path."""
    return atomic_write_text(path, html_report(title, sections, intro=intro))


__all__ = ["figure_html", "html_report", "table_html", "write_html_report"]
