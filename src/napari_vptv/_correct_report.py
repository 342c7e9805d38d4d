"""What a mask correction changed, per object: the table of the preview layer's
features and the summary of the Correct mask widget's status line."""

from __future__ import annotations

__all__ = ["changes_table", "report_summary"]


def changes_table(report):
    """Per label id: area before / after (summed over planes in slice-by-slice mode),
    change in %, status ("corrected", or e.g. "kept: no contrast"; with planes: the
    kept planes' statuses and their count) -- a ``pandas.DataFrame`` with an
    ``index`` column, as napari's ``Labels.features`` expects."""
    import pandas as pd

    rows = {}
    for r in report:
        row = rows.setdefault(r.label, {"index": r.label, "area_before": 0, "area_after": 0, "kept": []})
        row["area_before"] += r.area_before
        row["area_after"] += r.area_after
        if r.status != "corrected":
            row["kept"].append(r.status)
    for row in rows.values():
        kept = row.pop("kept")
        row["change_%"] = round(100.0 * (row["area_after"] - row["area_before"]) / max(row["area_before"], 1), 1)
        row["status"] = ("corrected" if not kept else kept[0] if len(kept) == 1
                         else f"{', '.join(sorted(set(kept)))} ({len(kept)} planes)")
    return pd.DataFrame(sorted(rows.values(), key=lambda row: row["index"]),
                        columns=["index", "area_before", "area_after", "change_%", "status"])


def report_summary(table) -> str:
    """'; 12 objects, median area -8 %, mean area 1234 -> 1100 px, 1 kept as given' for the status line."""
    if not len(table):
        return ""
    kept = int((table["status"] != "corrected").sum())
    return (f"; {len(table)} objects, median area {table['change_%'].median():+.0f} %, mean area "
            f"{table['area_before'].mean():.0f} -> {table['area_after'].mean():.0f} px"
            + (f", {kept} kept as given" if kept else ""))
