"""Tuning of the correction defaults (issue 12) on the tuning split only.

WBC tuning images and synthetic seeds 0-3; kinds identity, dilate3, erode3, dilate4,
shift3. Each argument is a JSON dict of correct_mask keyword arguments, e.g.::

    cd benchmarks && python tune_correct_nuclei.py {} {\"mask_weight\":0.25}
"""
import sys, json, numpy as np, itertools, time
sys.path.insert(0,'.')
import torch; torch.set_num_threads(1)
from bench_correct_nuclei import load, corrupt, scores
from napari_vptv.core.correct import correct_mask
sets=[]
for ds in ['wbc','synth']:
    for key,img,ch,grey,truth in load(ds,'tune','/work/shared/data'):
        sets.append((ds,key,img,ch,truth))
kinds=['identity','dilate3','erode3','dilate4','shift3']
grid=[json.loads(a) for a in sys.argv[1:]]
for p in grid:
    res={}
    t=time.time()
    for ds,key,img,ch,truth in sets:
        for j,k in enumerate(kinds):
            g=corrupt(truth,k,j)
            o=correct_mask(img,g,channel_axis=ch,**p)
            res.setdefault((ds,k),[]).append(scores(o,truth,g)['dice_fg'])
            if k=='identity' and ds=='wbc' and not p: print(key, (o>0).sum()/(truth>0).sum())
    print(p, ' '.join(f"{ds[:3]}:{k}={np.mean(v):.4f}" for (ds,k),v in res.items()), '%.0fs'%(time.time()-t), flush=True)
