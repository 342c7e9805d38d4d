"""WBC comparison: VPTV, the paper's baselines, learned networks and scikit-image peers.

Every method segments the 90 images of /work/shared/data/wbc into background (0),
cytoplasm (1) and nucleus (2). Unsupervised methods order their classes by
brightness (sum of RGB, darkest first) and are mapped nucleus <- darkest,
cytoplasm <- middle, background <- brightest (a fixed rule, no look at the truth).
Volume-constrained methods (VPTV, ADVP) get the training-average class fractions
computed from the masks, leave-one-out (the image's own mask is excluded).
Two-phase peers (Otsu, Chan-Vese, morphological Chan-Vese) only separate the cell
(cytoplasm + nucleus, the darker phase) from the background; they are scored on
that binary task ("cell" columns), which is also reported for every other method.

Per-image results are cached in ``experiments/cache/wbc/<method>.json`` (keyed by a
hash of the method's settings), so a rerun only computes what is missing.

    nice -n 10 python experiments/wbc.py [--quick] [--methods a,b] [--data DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, OUT, md_table, setup_threads  # noqa: E402

DATA = Path("/work/shared/data/wbc")
CLASSES = ("background", "cytoplasm", "nucleus")

#: solver settings (the paper's defaults: eps = 0.01, lambda = 0.02, c_i = |h - m_i|^2)
SETTINGS = {
    "kmeans": {},
    "emtv": {"tv_weight": 0.1},
    "tds": {"tv_weight": 0.02, "sigma": 2.0},
    "advp": {"tv_weight": 0.02, "sigma": 2.0},
    "vptv": {"epsilon": 0.01, "tv_weight": 0.02, "similarity": "mean"},
    "vptv-learned": {"preset": "wbc_preset(exact)", "folds": 5},
    "unet": {"weights": "napari_vptv/models/unet.pt"},
    "vptv-unet": {"weights": "napari_vptv/models/vptv-unet.pt", "volumes": "shipped defaults (model_metadata)"},
    "otsu": {},
    "multiotsu": {"classes": 3},
    "chan_vese": {"mu": 0.25, "max_num_iter": 200},
    "morph_chan_vese": {"num_iter": 100, "smoothing": 1},
    "random_walker": {"beta": 130, "mode": "cg_j", "seed_margin": 0.5},
    "slic_kmeans": {"n_segments": 600, "compactness": 10},
}
BINARY_ONLY = {"otsu", "chan_vese", "morph_chan_vese"}
LEARNED = {"unet", "vptv-unet"}
LABELS = {
    "kmeans": "k-means",
    "emtv": "EMTV",
    "tds": "TDS",
    "advp": "ADVP",
    "vptv": "VPTV (ours, unsupervised)",
    "vptv-learned": "VPTV + learned colour model (5-fold CV)",
    "unet": "U-net",
    "vptv-unet": "VPTVU-net",
    "otsu": "Otsu (skimage)",
    "multiotsu": "multi-Otsu (skimage)",
    "chan_vese": "chan_vese (skimage)",
    "morph_chan_vese": "morphological_chan_vese (skimage)",
    "random_walker": "random_walker seeded by k-means (skimage)",
    "slic_kmeans": "slic + k-means (skimage)",
}
ALL_METHODS = list(SETTINGS)
#: rough cost per image: cheap methods run first
RUN_ORDER = ["multiotsu", "otsu", "kmeans", "tds", "slic_kmeans", "random_walker", "unet", "vptv-unet",
             "vptv", "vptv-learned", "emtv", "chan_vese", "morph_chan_vese", "advp"]


#: package source files each method's result depends on (their contents are part of
#: the cache key, so a change of the solver invalidates the cached results)
_CORE = ["core/solver/segment.py", "core/solver/costs.py", "core/solver/reference.py", "core/solver/volumes.py"]
DEPENDS = {
    "kmeans": _CORE + ["core/scoring/baselines.py"],
    "emtv": _CORE + ["core/scoring/baselines.py"],
    "tds": _CORE + ["core/scoring/baselines.py"],
    "advp": _CORE + ["core/scoring/baselines.py"],
    "vptv": _CORE + ["core/scoring/baselines.py"],
    "vptv-learned": _CORE + ["core/scoring/baselines.py", "core/wbc/preset.py"],
    "unet": ["nn/weights.py", "nn/layer.py", "nn/unet.py", "models/unet.pt"],
    "vptv-unet": ["nn/weights.py", "nn/layer.py", "nn/unet.py", "models/vptv-unet.pt"],
    "random_walker": ["core/solver/costs.py"],
    "slic_kmeans": ["core/solver/costs.py"],
}


def _key(method):
    import napari_vptv

    root = Path(napari_vptv.__file__).resolve().parent
    parts = [method, SETTINGS[method], 2]
    deps = DEPENDS.get(method, [])
    if deps:
        h = hashlib.sha1()
        for rel in deps:
            f = root / rel
            h.update(rel.encode())
            h.update(f.read_bytes() if f.is_file() else b"missing")
        parts.append(h.hexdigest())
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:12]


def _dark_to_wbc(labels):
    """Brightness-ordered classes (0 = darkest) -> WBC labels (2 = nucleus)."""
    return (2 - np.asarray(labels)).astype(np.int32)


def _grey(img):
    from skimage.color import rgb2gray

    return rgb2gray(img)


def _binary_dark_is_cell(mask, grey):
    """Two-phase result -> WBC-style labels: the darker phase is the cell (label 1)."""
    mask = np.asarray(mask, bool)
    if mask.all() or (~mask).all():
        return np.zeros(mask.shape, np.int32)
    dark = mask if grey[mask].mean() < grey[~mask].mean() else ~mask
    return dark.astype(np.int32)


# --------------------------------------------------------------------------- #
# methods: (image uint8 RGB, context) -> WBC labels
# --------------------------------------------------------------------------- #
def run_method(method, img, ctx):
    from napari_vptv.core.scoring import baselines as B

    s = SETTINGS[method]
    vd = ctx["volumes_dark_first"]
    if method == "kmeans":
        return _dark_to_wbc(B.kmeans_segment(img, 3, channel_axis=-1).labels)
    if method == "emtv":
        return _dark_to_wbc(B.emtv_segment(img, 3, channel_axis=-1, **s).labels)
    if method == "tds":
        return _dark_to_wbc(B.tds_segment(img, 3, channel_axis=-1, **s).labels)
    if method == "advp":
        return _dark_to_wbc(B.advp_segment(img, 3, volumes=vd, channel_axis=-1, **s).labels)
    if method == "vptv":
        from napari_vptv.core.solver.segment import vptv_segment

        return _dark_to_wbc(vptv_segment(img, 3, volumes=vd, channel_axis=-1, **s).labels)
    if method == "vptv-learned":
        from napari_vptv.core.solver.segment import vptv_segment
        from napari_vptv.core.wbc.preset import wbc_preset

        return vptv_segment(img, **wbc_preset("exact", model=ctx["fold_model"])).labels.astype(np.int32)
    if method in LEARNED:
        from napari_vptv.nn.weights import predict_wbc

        return predict_wbc(img, method=method)[0].astype(np.int32)
    grey = _grey(img)
    if method == "otsu":
        from skimage.filters import threshold_otsu

        return (grey < threshold_otsu(grey)).astype(np.int32)
    if method == "multiotsu":
        from skimage.filters import threshold_multiotsu

        return _dark_to_wbc(np.digitize(grey, threshold_multiotsu(grey, classes=3)))
    if method == "chan_vese":
        from skimage.segmentation import chan_vese

        return _binary_dark_is_cell(chan_vese(grey, mu=s["mu"], max_num_iter=s["max_num_iter"]), grey)
    if method == "morph_chan_vese":
        from skimage.segmentation import morphological_chan_vese

        return _binary_dark_is_cell(
            morphological_chan_vese(grey, s["num_iter"], smoothing=s["smoothing"]), grey
        )
    if method == "random_walker":
        from skimage.segmentation import random_walker

        from napari_vptv.core.solver.costs import kmeans_init

        x = img.astype(np.float64) / 255.0
        pix = x.reshape(-1, 3)
        means, _ = kmeans_init(pix, 3, seed=0)
        d = np.sqrt(((pix[:, None] - means[None]) ** 2).sum(-1))
        srt = np.sort(d, axis=1)
        lab = d.argmin(1)
        confident = srt[:, 0] < s["seed_margin"] * srt[:, 1]
        markers = np.where(confident, lab + 1, 0).reshape(img.shape[:2])
        out = random_walker(x, markers, beta=s["beta"], mode=s["mode"], channel_axis=-1)
        return _dark_to_wbc(out - 1)
    if method == "slic_kmeans":
        from skimage.segmentation import slic

        from napari_vptv.core.solver.costs import kmeans_init, kmeans_labels

        x = img.astype(np.float64) / 255.0
        seg = slic(x, n_segments=s["n_segments"], compactness=s["compactness"], start_label=0, channel_axis=-1)
        n = seg.max() + 1
        cnt = np.bincount(seg.ravel(), minlength=n).astype(float)
        means = np.stack([np.bincount(seg.ravel(), x[..., c].ravel(), minlength=n) for c in range(3)], 1) / cnt[:, None]
        centres, _ = kmeans_init(means, 3, seed=0)
        return _dark_to_wbc(kmeans_labels(means, centres)[seg])
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------- #
def _score(labels, truth):
    from napari_vptv.core.scoring.metrics import evaluate

    e = evaluate(labels, truth, 3)
    cell = evaluate((labels > 0).astype(np.int32), (truth > 0).astype(np.int32), 2)
    return {
        "accuracy": e["accuracy"],
        "dice": e["dice"].tolist(),
        "volume_error": e["volume_error"].tolist(),
        "fractions": e["fractions"].tolist(),
        "cell_accuracy": cell["accuracy"],
        "cell_dice": float(cell["dice"][1]),
    }


def _learned_val_ids(method):
    try:
        from napari_vptv.nn.weights import MODELS_DIR, model_metadata

        if not (MODELS_DIR / f"{method}.pt").is_file():
            return None
        return [str(i) for i in model_metadata(method)["val_ids"]]
    except Exception:  # missing / unreadable metadata: the method is "pending"
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every 5th image only")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--ids", default=None, help="comma-separated image ids (smoke tests)")
    ap.add_argument("--timing", type=int, default=0, metavar="N",
                    help="only measure the CPU time of every method on the first N images (one process, "
                         "methods interleaved) into cache/wbc/_timing.json; the tables use it")
    ap.add_argument("--report-only", action="store_true", help="only write the tables from the cache")
    args = ap.parse_args(argv)
    setup_threads(1)

    from napari_vptv.core.io.files import load_wbc_dataset

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in SETTINGS:
            raise SystemExit(f"unknown method {m!r}; choose from {ALL_METHODS}")
    data = load_wbc_dataset(args.data)
    ids = [k for k, _, _ in data]
    fr = np.stack([np.bincount(m.ravel(), minlength=3) / m.size for _, _, m in data])
    eval_ids = ids[::5] if args.quick else ids
    if args.ids:
        eval_ids = [i.strip() for i in args.ids.split(",")]
    cache_dir = CACHE / "wbc"
    cache_dir.mkdir(parents=True, exist_ok=True)

    folds = {i: f for f, chunk in enumerate(np.array_split(np.arange(len(ids)), 5)) for i in chunk}
    fold_models = {}

    # import everything once, so that the first image's time is not an import time
    import skimage.filters  # noqa: F401
    import skimage.segmentation  # noqa: F401
    import torch  # noqa: F401

    import napari_vptv.core.scoring.baselines  # noqa: F401
    import napari_vptv.core.solver.segment  # noqa: F401
    import napari_vptv.core.wbc.preset  # noqa: F401

    if args.timing:
        measure_timing(methods, data, fr, folds, cache_dir, args.timing)
    elif not args.report_only:
        for method in sorted(methods, key=RUN_ORDER.index):
            path = cache_dir / f"{method}.json"
            cache = json.loads(path.read_text()) if path.is_file() else {}
            if cache.get("key") != _key(method):
                cache = {"key": _key(method), "settings": SETTINGS[method], "images": {}}
            todo = eval_ids
            if method in LEARNED:
                val = _learned_val_ids(method)
                if val is None:
                    print(f"[{method}] weights not found: pending", flush=True)
                    continue
                todo = [i for i in eval_ids if i in val] or [i for i in ids if i in val]
                cache["val_ids"] = val
            t_method = time.perf_counter()
            for n, (key, img, mask) in enumerate(data):
                if key not in todo or key in cache["images"]:
                    continue
                loo = (fr.sum(0) - fr[n]) / (len(ids) - 1)
                ctx = {"volumes_dark_first": loo[::-1].copy()}
                if method == "vptv-learned":
                    f = folds[n]
                    if f not in fold_models:
                        from napari_vptv.core.wbc.preset import fit_wbc_model

                        tr = [j for j in range(len(ids)) if folds[j] != f]
                        fold_models[f] = fit_wbc_model([data[j][1] for j in tr], [data[j][2] for j in tr])
                    ctx["fold_model"] = fold_models[f]
                t, c = time.perf_counter(), time.process_time()
                labels = run_method(method, img, ctx)
                dt, dc = time.perf_counter() - t, time.process_time() - c
                r = _score(labels, mask)
                r["time"] = dt
                r["cpu_time"] = dc
                cache["images"][key] = r
                path.write_text(json.dumps(cache))
                print(f"[{method}] {key} acc={r['accuracy']:.4f} cell_dice={r['cell_dice']:.4f} t={dt:.2f}s", flush=True)
            print(f"[{method}] done in {time.perf_counter() - t_method:.1f}s", flush=True)

    write_tables(methods, eval_ids, cache_dir, quick=args.quick)


def measure_timing(methods, data, fr, folds, cache_dir, n_images):
    """CPU seconds (``time.process_time``) per image of every method, on the same images.

    Wall-clock times of the main run depend on what else runs on the machine; the CPU
    time of one process is much less sensitive to it.
    """
    from napari_vptv.core.wbc.preset import fit_wbc_model

    path = cache_dir / "_timing.json"
    out = json.loads(path.read_text()) if path.is_file() else {}
    ids = [k for k, _, _ in data]
    for n in range(min(n_images, len(data))):
        key, img, _ = data[n]
        loo = (fr.sum(0) - fr[n]) / (len(ids) - 1)
        ctx = {"volumes_dark_first": loo[::-1].copy()}
        if "vptv-learned" in methods:
            tr = [j for j in range(len(ids)) if folds[j] != folds[n]]
            ctx["fold_model"] = fit_wbc_model([data[j][1] for j in tr], [data[j][2] for j in tr])
        for method in methods:
            if method in LEARNED and _learned_val_ids(method) is None:
                continue
            if key in out.get(method, {}):
                continue
            c, t = time.process_time(), time.perf_counter()
            run_method(method, img, ctx)
            out.setdefault(method, {})[key] = {"cpu_time": time.process_time() - c, "time": time.perf_counter() - t}
            path.write_text(json.dumps(out))
            print(f"[timing] {method} {key} cpu={out[method][key]['cpu_time']:.2f}s", flush=True)


def _mean(results, key):
    vals = [r[key] for r in results]
    return np.mean(np.asarray(vals, dtype=float), axis=0)


def write_tables(methods, eval_ids, cache_dir, quick=False):
    rows, summary, caches = [], {}, {}
    for method in methods:
        path = cache_dir / f"{method}.json"
        cache = json.loads(path.read_text()) if path.is_file() else {}
        caches[method] = cache
    # the classical methods are compared on the images that all of them have finished
    common = [i for i in eval_ids
              if all(i in caches[m].get("images", {}) for m in methods
                     if m not in LEARNED and caches[m].get("images"))]
    for method in methods:
        cache = caches[method]
        imgs = cache.get("images", {}) if cache.get("key") == _key(method) else {}
        if method in LEARNED:
            val = cache.get("val_ids") or _learned_val_ids(method)
            sel = [imgs[i] for i in (val or []) if i in imgs]
        else:
            sel = [imgs[i] for i in common if i in imgs]
        summary[method] = sel
    timing_path = cache_dir / "_timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}

    def cpu(method):
        v = [r["cpu_time"] for r in timing.get(method, {}).values()]
        return float(np.mean(v)) if v else np.nan

    ref = summary.get("vptv") or []
    ref_acc = float(_mean(ref, "accuracy")) if ref else np.nan
    ref_cell = float(_mean(ref, "cell_dice")) if ref else np.nan
    ref_c = cpu("vptv")
    n_timing = max((len(v) for v in timing.values()), default=0)
    header = ["method", "images", "pixel acc.", "Dice bg / cyto / nucleus", "volume error (bg/cyto/nuc)",
              "cell Dice", "wall time / image (s)", "CPU time / image (s)", "acc. ratio to VPTV",
              "CPU-time ratio to VPTV"]
    for method in methods:
        sel = summary[method]
        if not sel:
            cmd = ("python -m napari_vptv.nn.train ..., then python experiments/wbc.py --methods "
                   + method) if method in LEARNED else f"python experiments/wbc.py --methods {method}"
            rows.append([LABELS[method], 0, "pending", "", "", "", "", "", "", f"`{cmd}`"])
            continue
        acc = float(_mean(sel, "accuracy"))
        dice = _mean(sel, "dice")
        verr = _mean(sel, "volume_error")
        cell = float(_mean(sel, "cell_dice"))
        t = float(_mean(sel, "time"))
        binary = method in BINARY_ONLY
        n_label = f"{len(sel)}" + (" (val.)" if method in LEARNED else "")
        rows.append([
            LABELS[method], n_label,
            "(2-phase)" if binary else f"{acc:.4f}",
            "(2-phase)" if binary else " / ".join(f"{d:.3f}" for d in dice),
            "(2-phase)" if binary else " / ".join(f"{v:.3f}" for v in verr),
            f"{cell:.4f}", f"{t:.2f}", f"{cpu(method):.2f}",
            (f"{cell / ref_cell:.3f} (cell Dice)" if binary else f"{acc / ref_acc:.3f}"),
            f"{cpu(method) / ref_c:.3f}",
        ])
    tag = "_quick" if quick else ""
    text = (f"WBC, {len(common)} of {len(eval_ids)} images{' (every 5th, --quick)' if quick else ''} (those finished by "
            "every classical method); learned methods on their "
            "validation images only. Accuracy ratio: 3-class pixel accuracy / VPTV's (cell Dice for 2-phase "
            "methods). Wall time: mean over the evaluated images, measured on a shared, heavily loaded "
            f"machine; CPU time (`time.process_time`, one process, all methods on the same first {n_timing} "
            "images, `wbc.py --timing`) is the fairer cost measure, and the ratio uses it.\n\n"
            + md_table(header, rows))
    # the validation subset, for a like-for-like comparison with the networks
    val = None
    for m in LEARNED:
        v = _learned_val_ids(m)
        if v:
            val = v
    if val:
        vrows = []
        for method in methods:
            path = cache_dir / f"{method}.json"
            cache = json.loads(path.read_text()) if path.is_file() else {}
            imgs = cache.get("images", {}) if cache.get("key") == _key(method) else {}
            sel = [imgs[i] for i in val if i in imgs]
            if not sel or method in BINARY_ONLY:
                continue
            vrows.append([LABELS[method], len(sel), f"{float(_mean(sel, 'accuracy')):.4f}",
                          " / ".join(f"{d:.3f}" for d in _mean(sel, "dice")), f"{float(_mean(sel, 'time')):.2f}"])
        text += ("\nSame metrics on the networks' validation images only (ids " + ", ".join(val) + "):\n\n"
                 + md_table(["method", "images", "pixel acc.", "Dice bg / cyto / nucleus", "time / image (s)"], vrows))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"wbc_table{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
