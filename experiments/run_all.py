"""Regenerate every figure and table of the experiments (docs/experiments.md).

    python experiments/run_all.py [--quick] [--skip-wbc] [--background]

* Fig. 4 / Fig. 6 / colour example (``paper_figures.py``): about a minute.
* WBC comparison (``wbc.py``): CPU heavy. Per-image results are cached in
  ``experiments/cache/wbc/`` so a rerun only computes what is missing; ``--quick``
  uses every 5th image (18 of 90). ``--background`` starts it niced (nice 15) in the
  background with a log in ``experiments/logs/wbc.log`` and returns at once;
  rerun ``python experiments/wbc.py --report-only`` later to rewrite the table.
* Finally the tables are copied into ``docs/experiments.md`` (between its markers);
  ``python experiments/run_all.py --docs-only`` does only that.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "experiments.md"
#: marker in docs/experiments.md -> table file in experiments/output/
TABLES = {
    "FIG4_TABLE": "fig4_table.md",
    "FIG6_TABLE": "fig6_table.md",
    "COLOUR_TABLE": "fig5_colour_table.md",
    "WBC_TABLE": "wbc_table.md",
    "WBC_QUICK_TABLE": "wbc_table_quick.md",
}


def fill_docs(quick: bool = False) -> None:
    """Copy the current tables into docs/experiments.md (between the markers)."""
    import re

    text = DOC.read_text()
    for key, name in TABLES.items():
        table = HERE / "output" / name
        if not table.is_file():
            continue
        body = table.read_text().strip()
        text = re.sub(rf"<!-- {key} -->.*?<!-- /{key} -->", lambda m, key=key, body=body: f"<!-- {key} -->\n{body}\n<!-- /{key} -->",
                      text, flags=re.S)
    DOC.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-wbc", action="store_true")
    ap.add_argument("--background", action="store_true", help="run the WBC part niced in the background")
    ap.add_argument("--docs-only", action="store_true", help="only copy the tables into docs/experiments.md")
    args = ap.parse_args(argv)
    if args.docs_only:
        fill_docs(args.quick)
        return
    q = ["--quick"] if args.quick else []
    py = sys.executable
    subprocess.run(["nice", "-n", "10", py, str(HERE / "paper_figures.py"), *q], check=True)
    if args.skip_wbc:
        fill_docs(args.quick)
        return
    cmd = ["nice", "-n", "15", py, str(HERE / "wbc.py"), *q]
    if args.background:
        (HERE / "logs").mkdir(exist_ok=True)
        log = open(HERE / "logs" / "wbc.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (HERE / "logs" / "wbc.pid").write_text(str(p.pid))
        print(f"WBC comparison running in the background (pid {p.pid}), log: {HERE / 'logs' / 'wbc.log'}")
    else:
        subprocess.run(cmd, check=True)
    fill_docs(args.quick)


if __name__ == "__main__":
    main()
