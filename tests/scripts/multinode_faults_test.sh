#!/usr/bin/env bash
# Faults across nodes: scripts/mpirun_multinode.sh on 2 nodes x 2 ranks
# (network namespaces, tests/scripts/netns_cluster.sh, each node on a launch
# network and a data network), the tiny preset with pp=2 ep=2, and then:
#   1. a rank on node2 is killed (SIGKILL): the whole job ends within 15 s,
#      non-zero, and mpirun's message names the rank and node2;
#   2. node2's link is cut mid-run (its veth taken down, MPI on the same
#      network): mpirun gives up on the node within NODE_TIMEOUT (10 s) + 15 s,
#      non-zero, naming node2; the newest complete checkpoint passes its
#      checksums and resumes on one host;
#   3. only node2's data link is cut (MPI messages on the data network, the
#      launcher's control traffic still up): every rank blocks in a
#      collective, parallel.collective_timeout_s (5 s) ends them within 5 + 15
#      s with the watchdog's message naming rank, node and call; the newest
#      complete checkpoint is intact and resumes on one host.
# Skips (code 77, "SKIP: why") where namespaces cannot be made.
#   tests/scripts/multinode_faults_test.sh BUILD_DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "$1" && pwd)
source "$REPO/tests/scripts/netns_cluster.sh"
source "$REPO/tests/scripts/launch_test_lib.sh"

T=$(mktemp -d /tmp/scalemoe_multinode_faults.XXXXXX)
cleanup() {
  cluster_down
  rm -rf "$T"
}
trap cleanup EXIT
cluster_up "$T/cluster" 2 data || exit $?

bin=$BUILD/scalemoe
bash "$REPO/tests/scripts/tiny_dataset.sh" "$bin" "$T/data"
config=$REPO/configs/tiny_cpu.textproto
# Long enough never to finish on its own before the fault.
read -r -a flags <<<"$(tiny_run_flags "$T/data/dataset" 200) --set parallel.pp=2 --set parallel.ep=2"

# Starts a run across node1 and node2 in the background (env: extra
# variables for the script); sets JOB (its pid) and LOG.
start_across() {
  local run=$1
  shift
  LOG=$run.log
  FAIL_LOG=$LOG
  cluster_exec node1 env RANKS_PER_NODE=2 MPI_NET="$CLUSTER_LAUNCH_NET" NODE_TIMEOUT=30 \
    OMPI_MCA_plm_rsh_agent="$REPO/tests/scripts/netns_rsh_agent.sh" SCALEMOE_BIN="$bin" "$@" \
    timeout 300 bash "$REPO/scripts/mpirun_multinode.sh" "$T/cluster/hostfile" 4 "$config" \
    "${flags[@]}" --run-dir "$run" ${TRAIN_FLAGS:-} >"$LOG" 2>&1 &
  JOB=$!
}
# COMMAND's answer while the job runs (for wait_for); fails at once,
# showing the job's log, when the job ended first.
while_job_runs() {
  "$@" && return 0
  kill -0 "$JOB" 2>/dev/null || fail "the job ended before: $*"
  return 1
}
# Waits for the job; sets RC and TOOK (seconds since $CUT).
finish() {
  RC=0
  wait "$JOB" || RC=$?
  FAIL_LOG=  # the test shows the finished job's log itself
  TOOK=$(since "$CUT")
  echo "   job exit code $RC, $TOOK s after the fault"
}
# Kills whatever is left in the nodes (a daemon cut off from mpirun) and
# restores the links, so the next fault starts clean.
reset_cluster() {
  local i pid
  for ((i = 1; i <= CLUSTER_NODES; ++i)); do
    for pid in $(ip netns pids "$(cluster_ns node$i)"); do kill -9 "$pid" 2>/dev/null || true; done
    cluster_mend node$i launch
    cluster_mend node$i data
  done
  cluster_await_links
}
# The newest complete checkpoint of RUN passes its checksums and training
# resumes from it on one host (one more step, saved).
expect_intact_and_resumable() {
  local run=$1 last
  last=$(newest_complete "$run")
  ((last >= 3)) || fail "no complete checkpoint in $run"
  "$bin" inspect --checkpoint "$run/checkpoints/step_$last" >"$T/inspect.txt" ||
    fail "inspect of step_$last"
  local bad
  bad=$(awk '/^files/ { f = 1; next } f && !/ OK$/' "$T/inspect.txt")
  [[ -z $bad ]] || fail "step_$last has bad files: $bad"
  echo "   newest complete checkpoint: step_$last (checksums OK); resuming it on one host"
  timeout 120 mpirun -np 4 --oversubscribe "$bin" train --config "$config" "${flags[@]}" \
    --run-dir "$run" --resume --exit-after $((last + 1)) --quiet ||
    fail "resume of step_$last on one host"
  [[ $(newest_complete "$run") == $((last + 1)) ]] || fail "the resumed run did not save step $((last + 1))"
}
has_steps() { (($(logged_steps "$1") >= $2)); }
has_checkpoint() { (($(newest_complete "$1") >= $2)); }

echo "== 1. a rank on node2 is killed"
start_across "$T/kill"
wait_for 90 "2 steps across the nodes" while_job_runs has_steps "$T/kill" 2
victim= rank=
for pid in $(ip netns pids "$(cluster_ns node2)"); do
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == scalemoe ]] || continue
  victim=$pid
  rank=$(tr '\0' '\n' <"/proc/$pid/environ" | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
done
[[ -n $victim && -n $rank ]] || fail "no scalemoe rank found in node2"
echo "   killing rank $rank (pid $victim) on node2"
kill -9 "$victim"
CUT=$(now)
finish
cat "$LOG" | tail -n 20
((RC != 0)) || fail "the job exited 0 after a rank was killed"
awk -v t="$TOOK" 'BEGIN { exit !(t < 15) }' || fail "the job took $TOOK s to end (limit 15 s)"
grep -q "rank $rank .*on node node2 exited on signal 9" "$LOG" ||
  fail "no message naming rank $rank on node2"
reset_cluster

echo "== 2. node2's link is cut mid-run (NODE_TIMEOUT=10)"
start_across "$T/cut" NODE_TIMEOUT=10
wait_for 120 "checkpoint step_3" while_job_runs has_checkpoint "$T/cut" 3
wait_for 60 "step 4" while_job_runs has_steps "$T/cut" 4
cluster_cut node2 launch
CUT=$(now)
echo "   link of node2 down after $(logged_steps "$T/cut") steps"
finish
tail -n 20 "$LOG"
((RC != 0)) || fail "the job exited 0 after node2 was cut off"
awk -v t="$TOOK" 'BEGIN { exit !(t < 25) }' || fail "the job took $TOOK s to end (limit 25 s)"
grep -q "lost communication with a remote daemon" "$LOG" && grep -q "on node node2" "$LOG" ||
  fail "no message naming the lost node2"
reset_cluster
expect_intact_and_resumable "$T/cut"

echo "== 3. node2's data link is cut mid-run (parallel.collective_timeout_s=5)"
TRAIN_FLAGS="--set parallel.collective_timeout_s=5" \
  start_across "$T/data_cut" MPI_DATA_NET="$CLUSTER_DATA_NET" NODE_TIMEOUT=60
wait_for 120 "checkpoint step_3" while_job_runs has_checkpoint "$T/data_cut" 3
wait_for 60 "step 4" while_job_runs has_steps "$T/data_cut" 4
cluster_cut node2 data
CUT=$(now)
echo "   data link of node2 down after $(logged_steps "$T/data_cut") steps"
finish
tail -n 20 "$LOG"
((RC != 0)) || fail "the job exited 0 after node2's data link was cut"
awk -v t="$TOOK" 'BEGIN { exit !(t < 20) }' || fail "the job took $TOOK s to end (limit 20 s)"
grep -Eq "watchdog: rank [0-3] on node node[12]: [A-Za-z]+.* on [a-z]+\[[0-9,]+\] \(group rank [0-9]\) has not returned after [0-9]+ s \(parallel.collective_timeout_s = 5 s\)" "$LOG" ||
  fail "no watchdog message naming rank, node and call"
reset_cluster
expect_intact_and_resumable "$T/data_cut"
echo "PASS"
