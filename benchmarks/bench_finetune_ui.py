"""Does the viewer stay usable while "Train on my images" trains? (Goal: events
processed at least every 200 ms.)

Opens a real napari viewer (run under Xvfb) with the package's 3 sample images and
their masks as Labels layers, starts the widget's training (``--steps`` steps of
``--batch`` patches from the shipped U-net) and records the gaps between the ticks of
a 20 ms ``QTimer`` in the GUI thread until the worker ends. Run by hand::

    xvfb-run -a python benchmarks/bench_finetune_ui.py --out benchmarks/results/finetune_ui.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.environ["NAPARI_VPTV_MODELS_DIR"] = tempfile.mkdtemp(prefix="vptv-ui-bench-")
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_vptv._finetune_widget import pair_choices
    from napari_vptv.core.io.samples import load_sample
    from napari_vptv.nn.finetune import FinetuneRecipe
    from napari_vptv.nn.sources import mask_to_labels

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(show=True)
    for n in ("wbc_001", "wbc_004", "wbc_016"):
        image, mask = load_sample(n)
        viewer.add_image(image[..., :3], name=n, rgb=True)
        viewer.add_labels(mask_to_labels(mask).astype(np.int32), name=f"{n} corrected")
    _, w = viewer.window.add_plugin_dock_widget("napari-vptv", "Train on my images")
    w.pairs.value = [d for _, d in pair_choices(viewer.layers) if d[1].name == f"{d[0].name} corrected"]
    w.model_name.value, w.base.value = "ui-bench", "unet"
    w.keep_anyway.value = True
    w.train_options = {"recipe": FinetuneRecipe(batch=args.batch), "steps": args.steps, "threads": args.threads}
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    app = QApplication.instance()
    timer.start(20)
    t0 = time.perf_counter()
    w._relay.qobject.step.connect(
        lambda *a: setattr(w, "_first_step_at", getattr(w, "_first_step_at", None) or time.perf_counter())
    )
    w.train()
    while w.worker is not None:
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    gaps = np.diff(ticks) * 1000.0
    out = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "steps": args.steps,
        "batch": args.batch,
        "threads": args.threads,
        "training_seconds": time.perf_counter() - t0,
        "steps_seen": len(w.losses),
        "status": w.status.value,
        "tick_ms": 20,
        "n_ticks": len(ticks),
        "max_gap_ms": float(gaps.max()),
        "p99_gap_ms": float(np.percentile(gaps, 99)),
        "median_gap_ms": float(np.median(gaps)),
        "gaps_over_200ms": int((gaps > 200).sum()),
        "max_gap_at_s": float(ticks[int(gaps.argmax())] - t0),  # since Train was pressed
        "first_step_at_s": w._first_step_at - t0 if getattr(w, "_first_step_at", None) else None,
        "load_average_1min": os.getloadavg()[0],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    viewer.close()


if __name__ == "__main__":
    main()
