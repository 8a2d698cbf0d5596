#!/usr/bin/env bash
# One scalemoe training run over several nodes with Open MPI. Tested on
# nodes in network namespaces (tests/scripts/mpirun_multinode_test.sh and
# multinode_faults_test.sh; README, "Several nodes").
#
#   scripts/mpirun_multinode.sh HOSTFILE NP CONFIG [extra train flags...]
#
# HOSTFILE lists one node per line with its slots (ranks per node), e.g.
#   node01 slots=8
#   node02 slots=8
# NP is the world size (here 16); the config's parallel.* sizes must tile it
# (check first with: build/scalemoe check-config --config CONFIG --world NP).
# Every node needs the same build at the same path and a shared run dir.
# Environment (all optional):
#   RANKS_PER_NODE  ranks per node (default 8, one per GPU): ranks 0..R-1 on
#                   the first node, R..2R-1 on the second, ...
#   MPI_NET         network for Open MPI's launch and control traffic and,
#                   unless MPI_DATA_NET says otherwise, for MPI messages:
#                   interface names (eth0 or eth0,eth1) or a subnet
#                   (10.1.0.0/16). Default: every interface but lo, docker0.
#   MPI_DATA_NET    network for MPI messages between nodes (TCP), if not MPI_NET
#   NODE_TIMEOUT    seconds until mpirun gives up on a node it cannot reach
#                   and ends the job (TCP keepalive; default 60)
#   MPI_BTL         Open MPI's transports (default self,vader,tcp: shared
#                   memory within a node, TCP between nodes)
#   MPIRUN_ARGS     more mpirun options, e.g. "--display-map"
#   SCALEMOE_BIN    the binary (default: build/scalemoe of this checkout)
# NCCL (train.device: CUDA; parallel.communicator AUTO or NCCL), passed to
# every rank; NCCL_NVLS_ENABLE=0 always (NVLink multicast stays off):
#   NCCL_SOCKET_IFNAME  NCCL's bootstrap and socket network (default: every
#                       interface but lo and docker*), e.g. eth0 or ^lo
#   NCCL_IB_HCA         InfiniBand adapters NCCL may use, e.g. mlx5_0,mlx5_1
#                       (unset: NCCL picks; not passed when unset)
#   NCCL_DEBUG          NCCL's log level (default WARN; INFO shows the rings
#                       and transports it chose)
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,35p' "$0" >&2
  exit 2
fi
hostfile=$1 np=$2 config=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${SCALEMOE_BIN:-$repo/build/scalemoe}

# Open MPI pins both its out-of-band channel (mpirun <-> daemons) and the TCP
# transport to the chosen networks; within a node, ranks use shared memory.
net_args=(--mca btl_tcp_if_exclude lo,docker0)
if [[ -n ${MPI_NET:-} ]]; then
  net_args=(--mca oob_tcp_if_include "$MPI_NET" --mca btl_tcp_if_include "${MPI_DATA_NET:-$MPI_NET}")
elif [[ -n ${MPI_DATA_NET:-} ]]; then
  net_args=(--mca btl_tcp_if_include "$MPI_DATA_NET")
fi
# A node whose link dies does not answer; without keepalive mpirun would wait
# ~15 minutes for TCP to give up. Half the timeout idle, then 3 probes.
node_timeout=${NODE_TIMEOUT:-60}
keepalive=(--mca oob_tcp_keepalive_time $((node_timeout / 2 > 0 ? node_timeout / 2 : 1))
           --mca oob_tcp_keepalive_intvl $((node_timeout / 6 > 0 ? node_timeout / 6 : 1))
           --mca oob_tcp_keepalive_probes 3)
read -r -a extra <<<"${MPIRUN_ARGS:-}"

# -x exports a variable to every rank. NCCL_NVLS_ENABLE=0: NVLink multicast
# (NVLS) stays off, it is not available on every node we run on (the binary
# sets it too when unset). NCCL_SOCKET_IFNAME picks NCCL's bootstrap network
# (adjust to the cluster); NCCL_IB_HCA is passed only when set.
nccl_env=(-x NCCL_NVLS_ENABLE=0
          -x NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker}"
          -x NCCL_DEBUG="${NCCL_DEBUG:-WARN}")
if [[ -n ${NCCL_IB_HCA:-} ]]; then
  nccl_env+=(-x NCCL_IB_HCA="$NCCL_IB_HCA")
fi
exec mpirun \
  --hostfile "$hostfile" -np "$np" \
  --map-by ppr:"${RANKS_PER_NODE:-8}":node --bind-to none \
  --mca btl "${MPI_BTL:-self,vader,tcp}" "${net_args[@]}" "${keepalive[@]}" \
  "${nccl_env[@]}" \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
  -x SCALEMOE_LOG_LEVEL="${SCALEMOE_LOG_LEVEL:-info}" \
  "${extra[@]}" \
  "$bin" train --config "$config" "$@"
