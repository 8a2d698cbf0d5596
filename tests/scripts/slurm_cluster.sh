# A one-node Slurm cluster on this machine for the tests: munged with its own
# key and socket, slurmctld and slurmd with their own config, ports, state
# and logs, all under one directory. Sourced by tests/scripts/slurm_train_test.sh.
#
#   source tests/scripts/slurm_cluster.sh
#   trap slurm_down EXIT       # always: cancels jobs, stops the daemons
#   slurm_up DIR               # returns 77 with "SKIP: why" when Slurm
#                              # cannot be started here
#   sbatch ... / scontrol ...  # SLURM_CONF points at this cluster
#   slurm_wait_job ID SECONDS  # sets JOB_STATE and JOB_EXIT ("0:0")
#
# The node is `smnode` (this host at 127.0.0.1) with this machine's CPUs;
# processes are tracked by process group, tasks are not bound (no cgroups
# needed), there is no accounting database (job state from scontrol, kept
# for 10 minutes after the job ends).

SLURM_PIDS=()
SLURM_DIR=

slurm_skip() {
  echo "SKIP: Slurm test cluster: $*"
  return 77
}

# A TCP port nobody listens on (from a range the kernel does not hand out).
slurm_free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 10000))
    ss -ltn "sport = :$port" | grep -q LISTEN || { echo "$port"; return; }
  done
  return 1
}

slurm_log_tail() { tail -n 5 "$SLURM_DIR/$1" 2>/dev/null | sed 's/^/    /'; }

slurm_up() {
  local dir=$1 tool
  SLURM_DIR=$dir
  mkdir -p "$dir"/{munge,ctld,spool,log}
  [[ $(id -u) -eq 0 ]] || { slurm_skip "needs root to run slurmd"; return; }
  for tool in munged slurmctld slurmd sbatch scontrol sinfo srun ss; do
    command -v "$tool" >/dev/null ||
      { slurm_skip "'$tool' not found (scripts/setup.sh installs slurm-wlm and munge)"; return; }
  done
  chmod 700 "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --foreground --force --socket="$dir/munge/socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/pid" --seed-file="$dir/munge/seed" \
    --log-file="$dir/log/munged.log" >"$dir/log/munged.out" 2>&1 &
  SLURM_PIDS+=($!)
  for _ in $(seq 50); do [[ -S $dir/munge/socket ]] && break; sleep 0.1; done
  [[ -S $dir/munge/socket ]] || { slurm_skip "munged did not start:"$'\n'"$(slurm_log_tail log/munged.out)"; return; }

  local ctld_port slurmd_port
  ctld_port=$(slurm_free_port) && slurmd_port=$(slurm_free_port) ||
    { slurm_skip "no free TCP port"; return; }
  cat >"$dir/slurm.conf" <<EOF
ClusterName=scalemoetest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MinJobAge=600
SlurmdParameters=config_overrides
NodeName=smnode NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -D -f "$SLURM_CONF" >"$dir/log/slurmctld.out" 2>&1 &
  SLURM_PIDS+=($!)
  slurmd -D -f "$SLURM_CONF" -N smnode >"$dir/log/slurmd.out" 2>&1 &
  SLURM_PIDS+=($!)
  local state=
  for _ in $(seq 150); do
    state=$(sinfo -h -n smnode -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.2
  done
  if [[ $state != idle ]]; then
    slurm_skip "the node did not come up (state '${state:-none}' after 30 s); slurmctld:"$'\n'"$(slurm_log_tail log/slurmctld.log)"$'\n'"  slurmd:"$'\n'"$(slurm_log_tail log/slurmd.log)"
    return
  fi
  echo "slurm: one-node cluster up ($(slurmctld -V), node smnode with $(nproc) CPUs, ports $ctld_port/$slurmd_port)"
}

# Waits until job ID has ended (or SECONDS pass): JOB_STATE, JOB_EXIT.
slurm_wait_job() {
  local id=$1 seconds=$2 info
  JOB_STATE= JOB_EXIT=
  for _ in $(seq $((seconds * 2))); do
    info=$(scontrol -o show job "$id" 2>/dev/null || true)
    JOB_STATE=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")
    JOB_EXIT=$(sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p' <<<"$info")
    case $JOB_STATE in
      PENDING | CONFIGURING | RUNNING | COMPLETING | "") sleep 0.5 ;;
      *) return 0 ;;
    esac
  done
  return 1
}

slurm_down() {
  local pid
  if [[ -n ${SLURM_CONF:-} && ${#SLURM_PIDS[@]} -gt 1 ]]; then
    # Jobs first, so their steps end while slurmd can still reap them.
    scancel --full --quiet --partition=test 2>/dev/null || true
    for _ in $(seq 40); do
      [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.25
    done
  fi
  for pid in "${SLURM_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SLURM_PIDS[@]}"; do
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  done
  SLURM_PIDS=()
}
