#!/usr/bin/env bash
# soi-small sweep on one lent GPU: convert the base from the carried GGUF, train every variant
# below at once (one process each; a 135M LoRA step leaves the GPU mostly idle), then pack the
# adapter the pre-registered rule of training/small/NOTES.md picks (and those named in RETURN,
# comma-separated), for the trip back.
#
#   bash training/small/gpu_sweep.sh GGUF OUT [VARIANT ...]     VARIANT = "name|--set k=v ..."
#
# Needs peft, transformers, torch (the GPU image has them) and gguf + pydantic on PYTHONPATH.
set -uo pipefail
GGUF=$1; OUT=$2; shift 2
WORK=${WORK:-/root/soi-small}
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -f "$WORK/base/config.json" ]; then
  ${PYTHON:-python3} - "$GGUF" "$WORK/base" <<'EOF' || exit 1
import sys, time
from pathlib import Path
from soi_batch.pretrained import SMOLLM2_135M, convert_gguf, sha256_file
t = time.perf_counter()
convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
digest = sha256_file(Path(sys.argv[2]) / "model.safetensors")
print(f"BASE converted in {time.perf_counter() - t:.1f} s; weights sha256 {digest} "
      f"({'same as' if digest == SMOLLM2_135M.weights_sha256 else 'DIFFERS from'} the CPU conversion)")
EOF
fi
pids=()
for v in "$@"; do
  name=${v%%|*}; sets=${v#*|}
  mkdir -p "$WORK/$name"
  # shellcheck disable=SC2086
  ${PYTHON:-python3} -m training.small.train --base "$WORK/base" --out "$WORK/$name" $sets > "$WORK/$name/log.txt" 2>&1 &
  pids+=($!)
done
nvidia-smi dmon -s u -d 5 > "$WORK/dmon.txt" 2>&1 &
dmon=$!
# stop stragglers at the deadline (device time is rationed); their per-epoch history is kept
deadline=$((SECONDS + ${DEADLINE:-480}))
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
while [ $SECONDS -lt $deadline ] && alive; do sleep 5; done
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { echo "deadline: stopping $p"; kill "$p"; }; done
for p in "${pids[@]}"; do wait "$p"; done
kill "$dmon" 2>/dev/null
${PYTHON:-python3} -m training.small.collect "$WORK" "$OUT" "$@"
