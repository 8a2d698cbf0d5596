# Test hosts in network namespaces: a "cluster" of nodes on this machine,
# each with its own network stack, host name and address on a bridge that
# the fixture creates. Sourced by the multinode tests (label `multinode`).
#
#   source tests/scripts/netns_cluster.sh
#   cluster_up DIR NODES [data]   # NODES >= 1; "data": a second network for
#                                 # MPI traffic (the first carries the launch)
#   trap cluster_down EXIT        # always: kills what runs in the nodes,
#                                 # deletes namespaces, links and /etc/netns
#   cluster_exec node1 CMD...     # CMD inside node1, host name node1
#   cluster_cut node2 [launch|data] / cluster_mend node2 [...]  # link down/up
#   cluster_await_links            # until every node reaches another again
#
# Node i is host `node<i>`: network namespace sm<id>n<i>, interface eth0 =
# 10.213.0.1<i>/24 on bridge sm<id>l (launch network) and, with "data", eth1
# = 10.213.1.1<i>/24 on bridge sm<id>d. The bridges have no address on this
# machine: only the nodes' own addresses are ever contacted. Host names
# resolve through /etc/netns/<namespace>/hosts (ip netns exec mounts it on
# /etc/hosts); each command runs in its own UTS namespace whose host name is
# the node's, so Open MPI and error messages name the node. The filesystem is
# shared, like an NFS home.
#
# Writes DIR/hostfile ("node<i> slots=2") and DIR/nodes ("node<i> <netns>"),
# which tests/scripts/netns_rsh_agent.sh reads through NETNS_CLUSTER_DIR.
# cluster_up returns 77 (CTest's skip code here) with "SKIP: why" when this
# machine cannot create namespaces (not root, no iproute2, no permission).

CLUSTER_LAUNCH_NET=10.213.0.0/24
CLUSTER_DATA_NET=10.213.1.0/24
CLUSTER_ID=${CLUSTER_ID:-$(( $$ % 100000 ))}
CLUSTER_NODES=0
CLUSTER_DIR=

cluster_ns() { echo "sm${CLUSTER_ID}n${1#node}"; }

cluster_skip() {
  echo "SKIP: multi-node fixture: $*"
  return 77
}

cluster_up() {
  local dir=$1 nodes=$2 data=${3:-}
  CLUSTER_DIR=$dir
  export NETNS_CLUSTER_DIR=$dir
  mkdir -p "$dir"
  [[ $(id -u) -eq 0 ]] || { cluster_skip "needs root to create network namespaces"; return; }
  for tool in ip unshare hostname; do
    command -v "$tool" >/dev/null || { cluster_skip "'$tool' not found (apt-get install iproute2 util-linux hostname)"; return; }
  done
  local probe="sm${CLUSTER_ID}probe"
  if ! ip netns add "$probe" 2>"$dir/probe.err"; then
    cluster_skip "cannot create a network namespace here ($(head -c 200 "$dir/probe.err"))"
    return
  fi
  ip netns del "$probe"
  CLUSTER_NODES=$nodes
  local bridges=(l) i n ns
  [[ $data == data ]] && bridges+=(d)
  for b in "${bridges[@]}"; do
    ip link add "sm${CLUSTER_ID}$b" type bridge 2>"$dir/ip.err" ||
      { cluster_skip "cannot create a bridge ($(head -c 200 "$dir/ip.err"))"; return; }
    ip link set "sm${CLUSTER_ID}$b" up
  done
  : >"$dir/hostfile"
  : >"$dir/nodes"
  local hosts="127.0.0.1 localhost"$'\n'
  for ((i = 1; i <= nodes; ++i)); do hosts+="10.213.0.1$i node$i"$'\n'; done
  for ((i = 1; i <= nodes; ++i)); do
    n=node$i ns=$(cluster_ns $n)
    # Called as `cluster_up ... || exit`, so set -e is off in here: check.
    ip netns add "$ns" 2>"$dir/ip.err" && ip -n "$ns" link set lo up 2>>"$dir/ip.err" ||
      { cluster_skip "cannot create namespace $ns ($(head -c 200 "$dir/ip.err"))"; return; }
    local k=0
    for b in "${bridges[@]}"; do
      # Host side sm<id>n<i><b> on the bridge; node side eth<k>.
      { ip link add "${ns}$b" type veth peer name "eth$k" netns "$ns" &&
        ip link set "${ns}$b" master "sm${CLUSTER_ID}$b" && ip link set "${ns}$b" up &&
        ip -n "$ns" addr add "10.213.$k.1$i/24" dev "eth$k" && ip -n "$ns" link set "eth$k" up; } \
        2>"$dir/ip.err" ||
        { cluster_skip "cannot link $ns to bridge sm${CLUSTER_ID}$b with a veth pair ($(head -c 200 "$dir/ip.err"))"; return; }
      k=$((k + 1))
    done
    mkdir -p "/etc/netns/$ns"
    printf '%s' "$hosts" >"/etc/netns/$ns/hosts"
    echo "$n slots=2" >>"$dir/hostfile"
    echo "$n $ns" >>"$dir/nodes"
  done
  echo "cluster: $nodes node(s) in network namespaces sm${CLUSTER_ID}n*, launch network $CLUSTER_LAUNCH_NET${data:+, data network $CLUSTER_DATA_NET}"
}

# Runs CMD in NODE's namespace with NODE as its host name.
cluster_exec() {
  local node=$1
  shift
  ip netns exec "$(cluster_ns "$node")" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$node" "$@"
}

# Takes NODE's link to the launch (default) or data network down / up.
cluster_cut() { ip link set "$(cluster_ns "$1")$( [[ ${2:-launch} == data ]] && echo d || echo l)" down; }
# Mending also forgets every node's neighbour entries on that network (those
# to a cut-off node are FAILED), so the next job resolves addresses afresh,
# as on a new cluster.
cluster_mend() {
  local k=0 i
  [[ ${2:-launch} == data ]] && k=1
  ip link set "$(cluster_ns "$1")$([[ $k == 1 ]] && echo d || echo l)" up
  for ((i = 1; i <= CLUSTER_NODES; ++i)); do
    ip -n "$(cluster_ns node$i)" neigh flush to "10.213.$k.0/24" 2>/dev/null || true
  done
}
# Waits (up to 10 s) until every node reaches node1, and node1 node2, on each
# network. Without this (and the flush above) the job started right after a
# mend failed 2 times in 6 (Open MPI: "unable to complete a TCP connection",
# node2 to node1, CI Dec 2); with both, 10 runs in 10 passed.
cluster_await_links() {
  local nets=(0) k i peer tries answer
  [[ -n $(ip -n "$(cluster_ns node1)" -o addr show to 10.213.1.0/24) ]] && nets+=(1)
  for k in "${nets[@]}"; do
    for ((i = 1; i <= CLUSTER_NODES; ++i)); do
      peer=1
      ((i == 1)) && peer=2
      ((peer <= CLUSTER_NODES)) || continue
      for ((tries = 0; ; ++tries)); do
        # A refused connection to a closed port is an answer from the peer.
        answer=$(ip netns exec "$(cluster_ns node$i)" timeout 1 bash -c \
          "exec 3<>/dev/tcp/10.213.$k.1$peer/9" 2>&1 || true)
        [[ $answer == *"Connection refused"* ]] && break
        if ((tries >= 50)); then
          echo "cluster_await_links: node$i cannot reach node$peer at 10.213.$k.1$peer after 10 s" >&2
          return 1
        fi
        sleep 0.2
      done
    done
  done
}

# Everything the fixture made, whatever state the test left it in.
cluster_down() {
  local i ns pid
  for ((i = 1; i <= CLUSTER_NODES; ++i)); do
    ns=$(cluster_ns node$i)
    # Processes started in this node (mpirun, orted, ranks), by their ids.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for ((i = 1; i <= CLUSTER_NODES; ++i)); do
    ns=$(cluster_ns node$i)
    # Delete the links ourselves: a namespace outlives its name while the
    # kernel still holds sockets of killed processes (TCP retrying towards a
    # node that was cut off), and its veths would live on with it.
    ip link del "${ns}l" 2>/dev/null || true
    ip link del "${ns}d" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  ip link del "sm${CLUSTER_ID}l" 2>/dev/null || true
  ip link del "sm${CLUSTER_ID}d" 2>/dev/null || true
  CLUSTER_NODES=0
}
