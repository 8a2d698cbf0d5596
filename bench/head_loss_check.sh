#!/usr/bin/env bash
# train.fp32_logits and train.loss_chunk_tokens in one device call: builds
# the GPU model tests, the cross-entropy's, the CUDA graphs' trainer test
# and bench/train_step_bench in BUILD_DIR (default build-gpu, an already
# configured CUDA tree), runs the tests that cover them (they must pass,
# not skip), then times each preset's step (as configured: the unified
# strategy; micro-batch 8, global 64, CUDA graphs) with fp32 logits, bf16
# logits, and bf16 logits in chunks of 4096 tokens, and prints medians and
# peak memory side by side. With BIG=1 it then runs gpu_moe_125m at
# micro-batch 256 under train.recompute FULL (which ran out of memory with
# whole fp32 logits) with bf16 logits in chunks of 8192 tokens, for a few
# steps.
# usage: bench/head_loss_check.sh      (JOBS, default 16; STEPS, default 20)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test head_loss '^(core_cuda_embedding_ce|launch_trainer_cuda_graph)_test$' \
  core_cuda_embedding_ce_test launch_trainer_cuda_graph_test model_cuda_model_test train_step_bench
SCALEMOE_REQUIRE_GPU=1 timeout 400 "$build/tests/model/model_cuda_model_test" \
  --gtest_filter='*Bf16Options*:*Chunked*:*Bf16WithTheCpuRouting*' > "$build/head_loss_model.log" 2>&1 ||
  status=1
grep -E "^\[  (PASSED|FAILED) |cosine" "$build/head_loss_model.log"
rows=()
for p in gpu_moe_125m gpu_finegrained_64e; do
  for v in fp32 bf16 bf16_chunked; do
    sets=()
    [ "$v" != fp32 ] && sets+=(--set train.fp32_logits=false)
    [ "$v" = bf16_chunked ] && sets+=(--set train.loss_chunk_tokens=4096)
    log="$build/head_loss_${p}_$v.log"
    time_step "$log" "$p/$v" "$p" 'GEMM|embedding\+loss' "${sets[@]}"
    rows+=("$log")
  done
done
grep -h "^BENCH_JSON " "${rows[@]}" | cut -c12- | python3 -c '
import json, sys
runs = {r["label"]: r for r in map(json.loads, sys.stdin)}
print("\n%-28s %9s %8s %6s %9s" % ("preset/logits", "step ms", "vs fp32", "MFU", "peak GiB"))
for label, r in runs.items():
    base = runs.get(label.rsplit("/", 1)[0] + "/fp32")
    ratio = r["step_ms_median"] / base["step_ms_median"] if base else float("nan")
    print("%-28s %9.2f %8.3f %5.1f%% %9.2f" % (label, r["step_ms_median"], ratio,
                                               100 * r["mfu"], r["peak_gib"]))'
if [ "${BIG:-0}" = 1 ]; then
  log="$build/head_loss_big.log"
  timeout 240 "$build/bench/train_step_bench" --config configs/gpu_moe_125m.textproto \
    --set train.micro_batch_size=256 --set train.global_batch_size=256 \
    --set train.recompute=FULL --set train.fp32_logits=false --set train.loss_chunk_tokens=8192 \
    --set train.device_memory_gib=140 --steps 3 --warmup 1 --label big > "$log" 2>&1 ||
    { status=1; echo "micro-batch 256 FULL, chunked bf16 logits: $(tail -2 "$log")"; }
  grep -E "^big|^allocator" "$log"
fi
exit $status
