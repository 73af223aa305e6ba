"""The cohort index page: one row per subject/session with its status, time, message and QC report link.

The table sorts by subject and session; clicking a column header re-sorts it (a 15-line inline script,
the only script of the QC pages; without JavaScript the page is the same table, unsorted by clicks).
Nothing is loaded from the network.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from .._atomic import atomic_write_text
from .report import THUMBNAIL_NAME, _e, _page
from .report import format_seconds as _time

__all__ = ["STATUSES", "write_index"]

STATUSES = ("ok", "failed", "skipped")

_SORT_SCRIPT = """
document.querySelectorAll("th.sortable").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], col = th.cellIndex;
    var asc = th.getAttribute("data-dir") !== "asc";
    th.setAttribute("data-dir", asc ? "asc" : "desc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-key") || "", y = b.cells[col].getAttribute("data-key") || "";
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _relative(target: str | os.PathLike, base: Path) -> str:
    """``target`` as a POSIX path relative to the folder ``base`` (relative targets are kept)."""
    p = Path(target)
    if p.is_absolute():
        p = Path(os.path.relpath(p, base))
    return PurePosixPath(*p.parts).as_posix()


def write_index(entries: Sequence[Mapping], path: str | os.PathLike, title: str = "GaussianSVR cohort QC") -> Path:
    """Write the cohort index page ``path`` (HTML, atomically); returns ``Path(path)``.

    ``entries``: one mapping per subject/session with ``subject``, ``session`` (or ``None``), ``status``
    (``"ok"``, ``"failed"`` or ``"skipped"``), ``report`` (the QC report's path relative to the index's
    folder, or absolute, or ``None``), ``time_s`` (or ``None``) and ``message`` (or ``None``); optional
    ``thumbnail`` (path like ``report``; default: ``thumbnail.png`` beside the report, when it exists).
    """
    path = Path(path)
    base = path.parent
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    counts = dict.fromkeys(STATUSES, 0)
    total = 0.0
    ordered = sorted(entries, key=lambda e: (str(e.get("subject") or ""), str(e.get("session") or "")))
    for e in ordered:
        status = str(e.get("status") or "unknown")
        counts[status] = counts.get(status, 0) + 1
        if isinstance(e.get("time_s"), (int, float)):
            total += float(e["time_s"])
        report = e.get("report")
        link, thumb = "&ndash;", ""
        if report:
            rel = _relative(report, base)
            exists = (base / rel).is_file()
            link = f'<a href="{_e(rel)}">report</a>' + ("" if exists else ' <span class="note">(missing)</span>')
            thumb_path = e.get("thumbnail") or str(PurePosixPath(rel).parent / THUMBNAIL_NAME)
            thumb_rel = _relative(thumb_path, base)
            if (base / thumb_rel).is_file():
                img = f'<img class="thumb" src="{_e(thumb_rel)}" alt="axial view">'
                thumb = f'<a href="{_e(rel)}">{img}</a>'
        elif e.get("thumbnail"):
            thumb_rel = _relative(e["thumbnail"], base)
            if (base / thumb_rel).is_file():
                thumb = f'<img class="thumb" src="{_e(thumb_rel)}" alt="axial view">'
        message = str(e.get("message") or "")
        short = message if len(message) <= 300 else message[:297] + "..."
        cls = f"status-{status}" if status in STATUSES else "status-skipped"
        t = e.get("time_s")
        rows.append(
            f'<tr data-status="{_e(status)}">'
            f"<td>{thumb}</td>"
            f'<td data-key="{_e(e.get("subject") or "")}">{_e(e.get("subject") or "")}</td>'
            f'<td data-key="{_e(e.get("session") or "")}">{_e(e.get("session") or "")}</td>'
            f'<td data-key="{_e(status)}"><span class="badge {cls}">{_e(status)}</span></td>'
            f'<td class="num" data-key="{float(t) if isinstance(t, (int, float)) else ""}">{_time(t)}</td>'
            f'<td data-key="{_e(short)}" title="{_e(message)}">{_e(short)}</td>'
            f"<td>{link}</td></tr>"
        )
    summary = " ".join(
        f'<div class="status-{_e(k)}"><b id="count-{_e(k)}">{v}</b>{_e(k)}</div>' for k, v in counts.items()
    )
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    head = "".join(
        f'<th class="sortable">{h}</th>' if h else "<th></th>"
        for h in ("", "subject", "session", "status", "time", "message", "")
    )
    body = f"""
<h1>{_e(title)}</h1>
<p class="sub">{len(ordered)} entries &middot; total time {_time(total)} &middot; written {_e(stamp)}. Click a column header to sort.</p>
<div class="summary">{summary}</div>
<table id="index"><thead><tr>{head}</tr></thead><tbody>
{''.join(rows)}
</tbody></table>
<footer>Self-contained page: inline style, local links, nothing loaded from the network.</footer>
<script>{_SORT_SCRIPT}</script>
"""
    atomic_write_text(path, _page(title, body))
    return path
