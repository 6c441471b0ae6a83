"""The contact sheet of a run: one ``index.html`` with every case, its target, status, time, uncertainty
and preview, failed cases with their error. Self-contained: inline style, images by relative path, no
script and nothing fetched from the network, so it opens from a mounted folder on an offline machine.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_atomic

#: The contact sheet's file name inside the QC folder.
SHEET_NAME = "index.html"

_STYLE = """
body { font-family: sans-serif; background: #111; color: #ddd; margin: 1.5em; }
h1 { font-size: 1.2em; } p.meta { color: #999; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
.card { background: #222; border-radius: 6px; padding: 0.6em; width: 420px; }
.card img { width: 100%; border-radius: 4px; }
.card h2 { font-size: 0.95em; margin: 0.2em 0 0.4em; }
.status { font-weight: bold; } .written, .skipped, .present { color: #7c7; }
.failed, .missing { color: #f77; } .ignored, .interrupted { color: #fc6; }
.error { color: #f99; font-size: 0.85em; white-space: pre-wrap; }
.note { color: #fc6; font-size: 0.85em; }
table { font-size: 0.85em; color: #bbb; } td { padding-right: 1em; }
"""


@dataclass(frozen=True)
class SheetEntry:
    """One case on the contact sheet.

    Attributes:
        case_id: The case.
        target: The synthesised sequence, when known.
        status: ``written``, ``skipped``, ``failed``, ... (a run's statuses), or ``present`` /
            ``missing`` for a folder of predictions.
        preview: The preview's file name in the sheet's folder, when there is one.
        elapsed_s: Time spent on the case, when known.
        uncertainty: Mean standard deviation of the draws inside the brain, when there are draws.
        error: Why the case failed (or was ignored).
        notes: Warnings about a case that was written all the same.
        scores: ``(name, value)`` rows of scores to show (the Dice of ``cwdm qc --segmenter``).
    """

    case_id: str
    target: str | None
    status: str
    preview: str | None = None
    elapsed_s: float | None = None
    uncertainty: float | None = None
    error: str | None = None
    notes: tuple[str, ...] = ()
    scores: tuple[tuple[str, str], ...] = ()


def write_sheet(path: Path, entries: Sequence[SheetEntry], title: str, meta: str = "") -> Path:
    """Write the contact sheet of ``entries`` to ``path`` (atomically); returns ``path``."""
    cards = [_card(entry) for entry in entries]
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="meta">{html.escape(summary)}'
        f"{'<br>' + html.escape(meta) if meta else ''}</p>\n"
        '<div class="grid">\n' + "\n".join(cards) + "\n</div>\n</body></html>\n"
    )
    return write_atomic(Path(path), page)


def _card(entry: SheetEntry) -> str:
    target = html.escape(entry.target or "-")
    parts = [f'<div class="card"><h2>{html.escape(entry.case_id)} &middot; {target}</h2>']
    if entry.preview:
        name = html.escape(entry.preview, quote=True)
        parts.append(f'<a href="{name}"><img src="{name}" alt="preview of {html.escape(entry.case_id)}"></a>')
    rows = [
        ("status", f'<span class="status {html.escape(entry.status)}">{html.escape(entry.status)}</span>')
    ]
    if entry.elapsed_s is not None:
        rows.append(("time", f"{entry.elapsed_s:.1f} s"))
    if entry.uncertainty is not None and math.isfinite(entry.uncertainty):
        rows.append(("uncertainty", f"{entry.uncertainty:.4f} (mean sd in the brain)"))
    rows += [(html.escape(name), html.escape(value)) for name, value in entry.scores]
    parts.append("<table>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>")
    if entry.error:
        parts.append(f'<div class="error">{html.escape(entry.error)}</div>')
    parts += [f'<div class="note">{html.escape(note)}</div>' for note in entry.notes]
    parts.append("</div>")
    return "".join(parts)
