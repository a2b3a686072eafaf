#!/usr/bin/env bash
# Train several soi-mini variants in parallel on one GPU; print one summary line each.
# usage: bash training/mini/gpu_sweep.sh OUTDIR "name|--set ..." ...
# Each run writes its log straight to OUTDIR/NAME.log and, as soon as it finishes, its
# metrics.json to OUTDIR/NAME.metrics.json and its bundle to OUTDIR/NAME.tgz, so the runs that
# finished still come back when the device call hits its time limit.
set -u
out=$1; shift
mkdir -p "$out" /tmp/sweep
for spec in "$@"; do
  name=${spec%%|*}; sets=${spec#*|}
  (
    PYTHONUNBUFFERED=1 ${PYTHON:-python3} -m training.mini.train --out /tmp/sweep/$name --device cuda --eval-every 5 $sets \
      > "$out/$name.log" 2>&1
    [ -f /tmp/sweep/$name/metrics.json ] && cp /tmp/sweep/$name/metrics.json "$out/$name.metrics.json"
    [ -d /tmp/sweep/$name/bundle ] && tar -C /tmp/sweep/$name -czf "$out/$name.tgz" bundle
  ) &
done
wait
for spec in "$@"; do
  name=${spec%%|*}
  echo "== $name"; grep -E '^\{"epoch' "$out/$name.log" | cut -c1-220; tail -2 "$out/$name.log"
done
ls -la "$out"
