cd /work/main
for r in 1 2 3; do
  for v in head new; do
    if [ $v = head ]; then src=/tmp/wt-head/src; else src=/work/main/src; fi
    PYTHONPATH=$src .venv/bin/python benchmarks/time_default.py --data-root ../shared/data --loso-run runs/loso-wp-wbc-d1 --out /tmp/exp/td_${v}_$r.json > /dev/null 2>&1
    python3 -c "import json; d=json.load(open('/tmp/exp/td_${v}_$r.json')); print('$v', $r, round(d['default_segment_image_wbc_30_images_cpu_ms']['median'],1), round(d['unseen_wbc_d1_only_unet_30_images_cpu_ms']['median'],1), d['load_average_end'])"
  done
done
