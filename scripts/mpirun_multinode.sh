#!/usr/bin/env bash
# Example: one scalemoe training run over several nodes with Open MPI.
#
#   scripts/mpirun_multinode.sh HOSTFILE NP CONFIG [extra train flags...]
#
# HOSTFILE lists one node per line with its slots (ranks per node), e.g.
#   node01 slots=8
#   node02 slots=8
# NP is the world size (here 16); the config's parallel.* sizes must tile it
# (check first with: build/scalemoe inspect --config CONFIG --world NP).
# Every node needs the same build at the same path and a shared run dir.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
hostfile=$1 np=$2 config=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)

# -x exports a variable to every rank. NCCL_NVLS_ENABLE=0: NVLink multicast
# (NVLS) stays off, it is not available on every node we run on.
# NCCL_SOCKET_IFNAME / OMPI_MCA_btl_tcp_if_include pick the network to use;
# adjust them to the cluster's interface names.
exec mpirun \
  --hostfile "$hostfile" -np "$np" \
  --map-by ppr:"${RANKS_PER_NODE:-8}":node --bind-to none \
  -x NCCL_NVLS_ENABLE=0 \
  -x NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker}" \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
  -x SCALEMOE_LOG_LEVEL="${SCALEMOE_LOG_LEVEL:-info}" \
  --mca btl_tcp_if_exclude lo,docker0 \
  "$repo/build/scalemoe" train --config "$config" "$@"
