"""What a mask correction changed, per object: the table of the preview layer's
features and the summary of the Correct mask widget's status line."""

from __future__ import annotations

__all__ = ["changes_table", "report_summary"]


def _plane_status(entries):
    """One status for an id corrected plane by plane: ``"moved 2.1 px"`` if every plane
    moved (mean shift), else e.g. ``"moved 1.8 px (2 planes), kept (3 planes)"``."""
    if len(entries) == 1:
        return entries[0].status
    moved = [r.moved_px for r in entries if r.status.startswith("moved")]
    if len(moved) == len(entries):
        return f"moved {sum(moved) / len(moved):.1f} px"
    parts = [f"moved {sum(moved) / len(moved):.1f} px ({len(moved)} planes)"] if moved else []
    others = [r.status for r in entries if not r.status.startswith("moved")]
    for status in sorted(set(others)):
        n = others.count(status)
        parts.append(f"{status} ({n} plane{'s' if n > 1 else ''})")
    return ", ".join(parts)


def changes_table(report):
    """Per label id: area before / after (summed over planes in slice-by-slice mode),
    change in %, status ("moved 2.4 px", "kept" -- the given outline already lies on a
    plausible edge --, "no evidence"; with planes: per status the number of planes) --
    a ``pandas.DataFrame`` with an ``index`` column, as napari's ``Labels.features``
    expects."""
    import pandas as pd

    rows, entries = {}, {}
    for r in report:
        row = rows.setdefault(r.label, {"index": r.label, "area_before": 0, "area_after": 0})
        row["area_before"] += r.area_before
        row["area_after"] += r.area_after
        entries.setdefault(r.label, []).append(r)
    for label, row in rows.items():
        row["change_%"] = round(100.0 * (row["area_after"] - row["area_before"]) / max(row["area_before"], 1), 1)
        row["status"] = _plane_status(entries[label])
    return pd.DataFrame(
        sorted(rows.values(), key=lambda row: row["index"]),
        columns=["index", "area_before", "area_after", "change_%", "status"],
    )


def report_summary(table) -> str:
    """'; 12 objects, median area -8 %, mean area 1234 -> 1100 px, 9 moved, 3 kept as given'
    for the status line."""
    if not len(table):
        return ""
    moved = int(table["status"].str.startswith("moved").sum())
    kept = len(table) - moved
    return (
        f"; {len(table)} objects, median area {table['change_%'].median():+.0f} %, mean area "
        f"{table['area_before'].mean():.0f} -> {table['area_after'].mean():.0f} px, {moved} moved"
        + (f", {kept} kept as given" if kept else "")
    )
