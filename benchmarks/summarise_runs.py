"""Append the summary of finished training runs to benchmarks/results/training_runs.json.

Usage: python benchmarks/summarise_runs.py runs/loso-wp-wbc runs/loso-wp-wbc-d1 ...
Each run folder's train_meta.json gives the config note, steps, wall time, commit and
the last native-scale validation (plain softmax of the backbone). A run already in
the file is replaced.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).parent / "results" / "training_runs.json"


def summary(run: Path) -> dict:
    meta = json.loads((run / "train_meta.json").read_text())
    cfg = meta["config"]
    return {
        "run": run.name,
        "config": cfg.get("note", ""),
        "input_norm": meta.get("input_norm", "none"),
        "augment_overrides": cfg.get("augment", {}),
        "steps": meta["steps_done"],
        "train_minutes": round(meta["train_seconds"] / 60, 1),
        "commit": meta["commit"],
        "final_validation_native_softmax": meta["history"][-1]["val"] if meta["history"] else None,
    }


def main(argv):
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    for r in argv:
        s = summary(Path(r))
        rows = [x for x in rows if x.get("run") != s["run"]] + [s]
    OUT.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
