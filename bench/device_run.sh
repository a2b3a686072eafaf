#!/usr/bin/env bash
# Runs on the lent GPU after the vLLM bundle is unpacked (see bench/RESULTS.md, "How it ran"):
#   bash bench/device_run.sh STEP...
# STEP is `parity` (tests/test_vllm_parity.py) or a part of bench/gpu_throughput.py, optionally
# with `@fp8` (e.g. `hf_mg_compile@fp8`). Each step runs in its own process with a time limit;
# results (JSON + device.log) go to $OUT; copy the JSON into bench/results/ afterwards.
# vLLM steps need the unpacked bundle; hf steps need only pydantic (wheels in /root/pyd).
[ -f /root/stage/vllm-env.sh ] && . /root/stage/vllm-env.sh
export PYTHONPATH=$PWD:/root/pyd${PYTHONPATH:+:$PYTHONPATH} TOKENIZERS_PARALLELISM=false
N=${N:-10000}
LIMIT=${LIMIT:-300}
LOG=$OUT/device.log
for step in "$@"; do
  echo "=== $step $(date -u +%FT%TZ)" >>"$LOG"
  part=${step%@*}; quant=""
  [ "$part" != "$step" ] && quant="--quant ${step#*@}"
  if [ "$part" = parity ]; then
    timeout "$LIMIT" python3 -m pytest -x -q -s -p no:cacheprovider tests/test_vllm_parity.py >>"$LOG" 2>&1
  else
    timeout "$LIMIT" python3 bench/gpu_throughput.py --parts "$part" $quant --n "$N" --chunk "$N" --out "$OUT" ${BENCH_ARGS:-} >>"$LOG" 2>&1
  fi
  echo "=== $step rc=$? $(date -u +%FT%TZ)" >>"$LOG"
done
grep -E "^RESULT|^===|passed|failed|Error|error:|agreement" "$LOG" | tail -60
