"""Regenerate every figure and table of the experiments (docs/experiments.md).

    python experiments/run_all.py [--quick] [--skip-wbc] [--background]

* Fig. 4 / Fig. 6 / colour example (``paper_figures.py``): about a minute.
* WBC comparison (``wbc.py``): CPU heavy. Per-image results are cached in
  ``experiments/cache/wbc/`` so a rerun only computes what is missing; ``--quick``
  uses every 5th image (18 of 90). ``--background`` starts it niced (nice 15) in the
  background with a log in ``experiments/logs/wbc.log`` and returns at once;
  rerun ``python experiments/wbc.py --report-only`` later to rewrite the table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-wbc", action="store_true")
    ap.add_argument("--background", action="store_true", help="run the WBC part niced in the background")
    args = ap.parse_args(argv)
    q = ["--quick"] if args.quick else []
    py = sys.executable
    subprocess.run(["nice", "-n", "10", py, str(HERE / "paper_figures.py"), *q], check=True)
    if args.skip_wbc:
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


if __name__ == "__main__":
    main()
