"""Time of the default method per 300x300 image, one thread, CPU time (issue 11 goal: <= 150 ms).

* `segment_image` with every default on 30 CellaVision images (the U-net initialiser with its
  diameter estimate, both solves, the nucleus rule);
* the same pipeline seeded by the leave-one-source-out U-net trained on wbc-d1 only
  (`runs/loso-wp-wbc-d1`, `vptv train --config benchmarks/configs/train-loso-wp-train-wbc-d1.json`)
  on every third CellaVision image: images of a source the network never saw.

Run by hand on a quiet machine: `python benchmarks/time_default.py` (writes /tmp/ev/time_default.json).
"""

import time, glob, json, numpy as np, torch, subprocess
torch.set_num_threads(1)
from skimage.io import imread
from napari_vptv.api import segment_image
from napari_vptv.nn.weights import load_model
from napari_vptv.nn.predict import predict_cells
from napari_vptv.core.adapt import adapted_segment
from napari_vptv.core.cell_rules import drop_cells_without_nucleus
files = sorted(glob.glob('/work/shared/data/wbc/images/*.png'))
imgs = [imread(f)[..., :3] for f in files]
segment_image(imgs[0])
t = []
for im in imgs[1:31]:
    c = time.process_time(); segment_image(im); t.append(time.process_time() - c)
t = np.array(t) * 1e3
model, meta = load_model('/work/main/runs/loso-wp-wbc-d1')
def unseen(img):
    pred = predict_cells(model, meta, img, augment=1)
    r = adapted_segment(img, pred.probabilities, diameter=pred.diameter)
    return drop_cells_without_nucleus(r.labels)[0]
u = []
for im in imgs[::3]:
    c = time.process_time(); unseen(im); u.append(time.process_time() - c)
u = np.array(u) * 1e3
head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
out = dict(commit=head, load=list(__import__('os').getloadavg()),
           default_segment_image_wbc_30_images_cpu_ms=dict(mean=t.mean(), median=float(np.median(t)), p90=float(np.percentile(t, 90)), max=t.max()),
           unseen_wbc_d1_only_unet_30_images_cpu_ms=dict(mean=u.mean(), median=float(np.median(u)), p90=float(np.percentile(u, 90)), max=u.max()))
print(json.dumps(out, indent=1))
__import__('os').makedirs('/tmp/ev', exist_ok=True)
json.dump(out, open('/tmp/ev/time_default.json', 'w'), indent=1)
