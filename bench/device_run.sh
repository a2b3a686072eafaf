#!/usr/bin/env bash
# Runs on the lent GPU after the vLLM bundle is unpacked (see /work/shared/device-vllm.md):
#   bash bench/device_run.sh STEP...   steps: parity peer ours_mg ours_mg_fp8 ours_full vllm_gen hf
# Results (JSON + one log) go to $OUT; copy the JSON into bench/results/ afterwards.
. /root/stage/vllm-env.sh
export PYTHONPATH=$PWD:$PYTHONPATH TOKENIZERS_PARALLELISM=false
N=${N:-10000}
LOG=$OUT/device.log
for step in "$@"; do
  echo "=== $step $(date -u +%FT%TZ)" >>"$LOG"
  case $step in
    parity) timeout 300 python3 -m pytest -x -q -p no:cacheprovider tests/test_vllm_parity.py >>"$LOG" 2>&1 ;;
    peer|ours_mg|ours_full|vllm_gen) timeout 240 python3 bench/gpu_throughput.py --parts $step --n $N --chunk $N --out $OUT >>"$LOG" 2>&1 ;;
    ours_mg_fp8|peer_fp8) timeout 240 python3 bench/gpu_throughput.py --parts ${step%_fp8} --quant fp8 --n $N --chunk $N --out $OUT >>"$LOG" 2>&1 ;;
    hf) timeout 300 python3 bench/gpu_throughput.py --parts roofline,naive,hf_mg --out $OUT >>"$LOG" 2>&1 ;;
  esac
  echo "=== $step rc=$? $(date -u +%FT%TZ)" >>"$LOG"
done
grep -E "^RESULT|^===|passed|failed|Error|error:" "$LOG" | tail -60
