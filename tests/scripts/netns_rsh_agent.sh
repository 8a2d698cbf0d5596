#!/usr/bin/env bash
# Open MPI's remote agent for the network-namespace test cluster
# (tests/scripts/netns_cluster.sh), in place of ssh: mpirun calls
#   netns_rsh_agent.sh [ssh options] HOST COMMAND...
# (plm_rsh_agent) to start its daemon on HOST; like ssh, this runs COMMAND
# through a shell, but inside HOST's network namespace with HOST as the host
# name. HOST -> namespace comes from $NETNS_CLUSTER_DIR/nodes.
set -euo pipefail
while [[ $# -gt 0 && $1 == -* ]]; do shift; done  # ssh options (-x, -o ...) mean nothing here
host=${1:?netns_rsh_agent.sh: no host given}
shift
ns=$(awk -v h="$host" '$1 == h { print $2 }' "${NETNS_CLUSTER_DIR:?set by the fixture}/nodes")
if [[ -z $ns ]]; then
  echo "netns_rsh_agent.sh: $host is not a node of the cluster in $NETNS_CLUSTER_DIR/nodes" >&2
  exit 255
fi
exec ip netns exec "$ns" unshare --uts sh -c "hostname $host && exec $*"
