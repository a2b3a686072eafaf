#!/usr/bin/env bash
# Train several soi-mini variants in parallel on one GPU; print one summary line each.
# usage: bash training/mini/gpu_sweep.sh OUTDIR "name|--set ..." ...
set -u
out=$1; shift
mkdir -p "$out" /tmp/sweep
for spec in "$@"; do
  name=${spec%%|*}; sets=${spec#*|}
  PYTHONUNBUFFERED=1 python -m training.mini.train --out /tmp/sweep/$name --device cuda --eval-every 5 $sets \
    > /tmp/sweep/$name.log 2>&1 &
done
wait
for spec in "$@"; do
  name=${spec%%|*}
  echo "== $name"; grep -E '^\{"epoch' /tmp/sweep/$name.log | cut -c1-220; tail -2 /tmp/sweep/$name.log
done
tar -C /tmp/sweep -czf "$out/logs.tgz" $(cd /tmp/sweep && ls *.log */metrics.json)
for spec in "$@"; do
  name=${spec%%|*}
  [ -d /tmp/sweep/$name/bundle ] && tar -C /tmp/sweep/$name -czf "$out/$name.tgz" bundle
done
ls -la "$out"
