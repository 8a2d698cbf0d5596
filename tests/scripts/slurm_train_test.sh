#!/usr/bin/env bash
# scripts/slurm_train.sbatch on a real (one-node) Slurm cluster that this
# test starts (tests/scripts/slurm_cluster.sh): sbatch submits the script as
# users do, with its #SBATCH lines overridden for 1 node x 2 tasks without
# GPUs, for the tiny preset with experts split over the 2 ranks (ep=2). Run
# twice: ranks started by srun --mpi=pmix (the default), then by mpirun
# inside the allocation (SCALEMOE_LAUNCHER=mpirun). Each job must end
# COMPLETED with exit code 0:0 (scontrol), its output must show 2 ranks and
# the finished run, and its run directory must hold the resolved config,
# metrics.jsonl with a loss for each of the 6 steps and a COMPLETE
# checkpoint of step 6 written by 2 ranks. Skips (code 77, "SKIP: why")
# where the Slurm daemons cannot start.
#   tests/scripts/slurm_train_test.sh BUILD_DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "$1" && pwd)
source "$REPO/tests/scripts/slurm_cluster.sh"
source "$REPO/tests/scripts/launch_test_lib.sh"

T=$(mktemp -d /tmp/scalemoe_slurm.XXXXXX)
cleanup() {
  slurm_down
  rm -rf "$T"
}
trap cleanup EXIT
slurm_up "$T/slurm" || exit $?

bin=$BUILD/scalemoe
bash "$REPO/tests/scripts/tiny_dataset.sh" "$bin" "$T/data"
read -r -a flags <<<"$(tiny_run_flags "$T/data/dataset" 6) --set parallel.ep=2"

# Submits the sbatch script from the checkout with LAUNCHER; checks the job.
run_job() {
  local launcher=$1 run=$T/run_$1 id start
  start=$(now)
  id=$(cd "$REPO" && SCALEMOE_LAUNCHER=$launcher SCALEMOE_RUN_DIR=$run SCALEMOE_BIN=$bin \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 \
    --time=10 --output="$T/job-%j.out" \
    scripts/slurm_train.sbatch configs/tiny_cpu.textproto "${flags[@]}")
  echo "   job $id submitted"
  slurm_wait_job "$id" 240 || fail "job $id still ${JOB_STATE:-unknown} after 240 s"
  echo "   job $id: $JOB_STATE, exit code $JOB_EXIT, $(since "$start") s"
  local out=$T/job-$id.out
  sed 's/^/   | /' "$out" | grep -v '| step [0-9]' || true
  [[ $JOB_STATE == COMPLETED && $JOB_EXIT == 0:0 ]] || fail "job $id ended $JOB_STATE ($JOB_EXIT)"
  grep -q "launched by $launcher" "$out" || fail "the job was not launched by $launcher"
  grep -q "(2 ranks: tp=1 pp=1 dp=2 | etp=1 ep=2 edp=1" "$out" || fail "the run did not see 2 ranks"
  grep -q "done: 6 steps" "$out" || fail "the run did not report 6 steps done"
  [[ -f $run/config.textproto ]] || fail "no resolved config in $run"
  local steps
  steps=$(grep -o '"step":[0-9]*' "$run/metrics.jsonl" | sort -u | tr -d '"step:' | sort -n | tr '\n' ' ')
  [[ $(logged_steps "$run") -ge 6 && $steps == "1 2 3 4 5 6 " ]] ||
    fail "metrics.jsonl has steps '$steps', want 1..6"
  [[ $(newest_complete "$run") == 6 ]] || fail "no COMPLETE checkpoint of step 6"
  "$bin" inspect --checkpoint "$run/checkpoints/step_6" >"$T/inspect.txt" || fail "inspect step_6"
  grep -q "world_size=2 " "$T/inspect.txt" || fail "the checkpoint was not written by 2 ranks"
}

echo "== sbatch scripts/slurm_train.sbatch, ranks started by srun --mpi=pmix"
run_job srun
echo "== the same with SCALEMOE_LAUNCHER=mpirun (mpirun inside the allocation)"
run_job mpirun
echo "PASS"
