#!/usr/bin/env bash
# scripts/mpirun_multinode.sh across 2 nodes (network namespaces on this
# machine, tests/scripts/netns_cluster.sh) x 2 ranks: the tiny preset with
# pipeline stages across the nodes and experts split inside each node
# (pp=2 ep=2: dense DP2 x PP2, experts EP2 x PP2). Open MPI starts its
# daemon in node2 through tests/scripts/netns_rsh_agent.sh (no ssh), over
# the nodes' own addresses; MPI messages go over TCP between the nodes and
# through shared memory inside each node. Checks:
#   1. the ranks ran where the hostfile says (mpirun's map: node1 ranks 0-1,
#      node2 ranks 2-3) and the run trains to the single-host run of the same
#      layout (losses of every step and every final parameter within 1e-5);
#   2. a checkpoint written across the nodes resumes on one host, and one
#      written on one host resumes across the nodes, both again matching.
# Skips (code 77, "SKIP: why") where namespaces cannot be made.
#   tests/scripts/mpirun_multinode_test.sh BUILD_DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "$1" && pwd)
source "$REPO/tests/scripts/netns_cluster.sh"
source "$REPO/tests/scripts/launch_test_lib.sh"

T=$(mktemp -d /tmp/scalemoe_multinode.XXXXXX)
cleanup() {
  cluster_down
  rm -rf "$T"
}
trap cleanup EXIT
cluster_up "$T/cluster" 2 || exit $?

bin=$BUILD/scalemoe
bash "$REPO/tests/scripts/tiny_dataset.sh" "$bin" "$T/data"
config=$REPO/configs/tiny_cpu.textproto
# DUAL rather than the preset's DNP placement, as in tests/launch/mpi_training.h:
# DNP's β in front of a per-head norm gets a rounding-noise gradient, which
# differs with the order MPI sums in (shared memory or TCP), so its value is
# not comparable at 1e-5 (the losses are).
read -r -a flags <<<"$(tiny_run_flags "$T/data/dataset" 6) --set parallel.pp=2 --set parallel.ep=2 --set scale_vectors.placement=DUAL"

# One host, the way the single-host tests run: 4 ranks over shared memory,
# one OpenBLAS thread per rank like scripts/mpirun_multinode.sh (threaded
# GEMMs sum in another order: ~1e-7 apart after 6 steps).
one_host() {
  OMP_NUM_THREADS=1 timeout 120 mpirun -np 4 --oversubscribe "$bin" train --config "$config" \
    "${flags[@]}" "$@"
}
# Across node1 and node2, launched from node1 like a user on a login node.
across() {
  cluster_exec node1 env RANKS_PER_NODE=2 MPI_NET="$CLUSTER_LAUNCH_NET" NODE_TIMEOUT=30 \
    OMPI_MCA_plm_rsh_agent="$REPO/tests/scripts/netns_rsh_agent.sh" \
    MPIRUN_ARGS=--display-map SCALEMOE_BIN="$bin" \
    timeout 120 bash "$REPO/scripts/mpirun_multinode.sh" "$T/cluster/hostfile" 4 "$config" \
    "${flags[@]}" "$@"
}
compare() {
  "$BUILD/tests/scripts/compare_runs" "$1" "$T/reference" 6 1e-5 || fail "$1 differs from the one-host run"
}

echo "== one host: reference run (pp=2 ep=2, 6 steps)"
start=$(now)
one_host --run-dir "$T/reference" --quiet
echo "   took $(since "$start") s"

echo "== across node1 and node2: the same run"
start=$(now)
across --run-dir "$T/across" 2>&1 | tee "$T/across.log"
echo "   took $(since "$start") s"
# mpirun's map: which node each rank ran on.
# (mpirun prints the map twice: keep each rank once.)
placement=$(awk '/Data for node:/ { node = $4 }
  /Process rank:/ { for (i = 1; i < NF; ++i) if ($i == "rank:" && !seen[$(i + 1)]++) printf "%s:%s ", node, $(i + 1) }' "$T/across.log")
echo "   placement: $placement"
[[ $placement == "node1:0 node1:1 node2:2 node2:3 " ]] || fail "ranks were not placed 2 per node: '$placement'"
grep -q "done: 6 steps" "$T/across.log" || fail "the run across nodes did not finish"
compare "$T/across"

echo "== a checkpoint written across the nodes resumes on one host"
across --run-dir "$T/across_then_one" --exit-after 3 --quiet >"$T/part1.log" 2>&1 ||
  { cat "$T/part1.log"; fail "first half across nodes"; }
[[ $(newest_complete "$T/across_then_one") == 3 ]] || fail "no complete step_3 checkpoint across nodes"
one_host --run-dir "$T/across_then_one" --resume --quiet
compare "$T/across_then_one"

echo "== a checkpoint written on one host resumes across the nodes"
one_host --run-dir "$T/one_then_across" --exit-after 3 --quiet
[[ $(newest_complete "$T/one_then_across") == 3 ]] || fail "no complete step_3 checkpoint on one host"
across --run-dir "$T/one_then_across" --resume --quiet >"$T/part2.log" 2>&1 ||
  { cat "$T/part2.log"; fail "second half across nodes"; }
compare "$T/one_then_across"
echo "PASS"
