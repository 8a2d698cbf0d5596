# Shared by the launcher tests (tests/scripts/*_test.sh): paths, the tiny
# run's flags, timing and checks. Sourced; expects REPO and BUILD set.

# The tiny preset, shrunk to a few seconds a run on 2 shared cores: short
# sequences and batches over the test corpus (tests/scripts/tiny_dataset.sh).
tiny_run_flags() {
  local data=$1 steps=$2
  echo --set data.dataset_dir="$data" --set model.vocab_size=320 \
    --set model.seq_length=32 --set train.micro_batch_size=2 \
    --set train.global_batch_size=8 --set train.train_steps="$steps" \
    --set schedule.warmup_steps=2 --set train.eval_interval=3 --set train.eval_batches=2 \
    --set logging.log_interval=1 --set checkpoint.interval=3 --set checkpoint.keep_last=0
}

# FAIL_LOG (optional): the log of the job a test waits on; a failure shows
# its tail (why the job never got where the test expected).
fail() {
  if [[ -n ${FAIL_LOG:-} && -f $FAIL_LOG ]]; then tail -n 40 "$FAIL_LOG"; fi
  echo "FAIL: $*"
  exit 1
}

# Seconds since the epoch, with a fraction.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The newest step N with RUN/checkpoints/step_N/COMPLETE (0 when none).
newest_complete() {
  local run=$1 best=0 d n
  for d in "$run"/checkpoints/step_*/COMPLETE; do
    [[ -e $d ]] || continue
    n=${d%/COMPLETE}
    n=${n##*step_}
    ((n > best)) && best=$n
  done
  echo "$best"
}

# Number of "loss" records in RUN/metrics.jsonl.
logged_steps() {
  if [[ -f $1/metrics.jsonl ]]; then grep -c '"loss"' "$1/metrics.jsonl" || true; else echo 0; fi
}

# Waits up to SECONDS for COMMAND to succeed; fails the test otherwise.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local start
  start=$(now)
  until "$@"; do
    if awk -v s="$(since "$start")" -v l="$seconds" 'BEGIN { exit !(s > l) }'; then
      fail "waited $seconds s for $what"
    fi
    sleep 0.2
  done
}
