#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of the cluster launchers
# (tests/test_cluster.py) and for trying `hydra/launcher=local_slurm` by hand. Needs root.
#
#   scripts/slurm_local.sh install      # Debian's slurm-wlm + munge, if missing (apt-get)
#   scripts/slurm_local.sh start DIR    # munged + slurmctld + slurmd, config and state in DIR
#   scripts/slurm_local.sh stop DIR     # cancel the jobs, stop the three daemons
#
# After `start`, point the SLURM commands at the cluster with `export SLURM_CONF=DIR/slurm.conf`
# (jobs inherit it, so submitit's `scontrol requeue` inside a job reaches the same cluster).
# Everything lives in DIR (munge key and socket, spool, state, logs, pid files) and the ports are
# picked free at start, so the system's own SLURM/munge set-up, if any, is left alone.
set -euo pipefail

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "installing slurm-wlm and munge needs root"
    command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge by hand"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing (fresh image) or stale: update once if the install fails.
    # policy-rc.d (Debian) keeps the packages' own services from starting: we start our own.
    apt-get install -y --no-install-recommends slurm-wlm munge \
        || { apt-get update && apt-get install -y --no-install-recommends slurm-wlm munge; }
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir
    dir=$(realpath -m "$1")
    [ "$(id -u)" -eq 0 ] || die "the local cluster runs its daemons as root"
    mkdir -p "$dir"/{munge,spool,state,log,run}
    chmod 0700 "$dir"/munge  # munged refuses key/socket directories others can write to
    local node cpus mem ctld_port slurmd_port
    node=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # half, in MB
    ctld_port=$(free_port)
    slurmd_port=$(free_port)

    # munge: the authentication every SLURM message needs; our own key, socket and daemon.
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed"

    # proctrack/linuxproc + task/none: no cgroups (containers); cons_tres: CPUs are consumable,
    # so jobs run side by side on the node's cores. No accounting database: sacct is
    # unavailable, and submitit then tells a job's end by its result file (it warns once per poll).
    cat > "$dir/slurm.conf" <<EOF
ClusterName=amm-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
# fast turnaround for tests: a requeued job may start again after cred_expire + 1 s (AuthInfo,
# default 120 s), finished jobs leave the queue after MinJobAge, and stragglers are killed 5 s
# after SIGTERM (a checkpoint of the smoke runs takes milliseconds)
MinJobAge=30
KillWait=5
SchedulerParameters=sched_interval=1
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF" -N "$node"
    # ready when the node accepts jobs
    for _ in $(seq 60); do
        if sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    tail -n 20 "$dir"/log/*.log >&2 || true
    die "the cluster in $dir did not come up (logs above)"
}

stop_pid() {  # stop the daemon whose pid file is $1 (we started it), wait for it to exit
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    local dir
    dir=$(realpath -m "$1")
    [ -f "$dir/slurm.conf" ] || die "no cluster in $dir"
    export SLURM_CONF="$dir/slurm.conf"
    # cancel this cluster's jobs and wait for their processes (slurmstepd) to end
    if [ -f "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; then
        scancel --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    stop_pid "$dir/run/slurmd.pid"
    stop_pid "$dir/run/slurmctld.pid"
    stop_pid "$dir/run/munged.pid"
}

case "${1:-}" in
    install) install ;;
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; install; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
