#!/usr/bin/env bash
# A throw-away single-node Slurm cluster on 127.0.0.1 for the Slurm integration test
# (tests/slurm.rs). No systemd: munged, slurmctld and slurmd run as background daemons
# with their pid files, state, logs and configs in STATE_DIR.
#
#   scripts/ci_slurm.sh start STATE_DIR   installs Debian's munge, slurmctld, slurmd and
#                                         slurm-client if missing (apt-get), starts the
#                                         daemons, waits for the node to be idle; prints
#                                         `export SLURM_CONF=...` on success
#   scripts/ci_slurm.sh stop STATE_DIR    cancels jobs, stops the daemons by pid
#
# Exit code of start: 0 up, 1 failed (logs printed), 2 packages unavailable.
set -euo pipefail

cmd=${1:-}
state=${2:-}
if [[ -z "$cmd" || -z "$state" ]]; then
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 64
fi
mkdir -p "$state"
state=$(cd "$state" && pwd)
conf="$state/slurm.conf"

stop() {
    if [[ -f "$conf" ]] && command -v scancel >/dev/null; then
        SLURM_CONF="$conf" timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
    fi
    # TERM to every daemon at once, then wait (at most 5 s) and KILL what is left.
    local pids=()
    for d in slurmd slurmctld munged; do
        local pidf="$state/$d.pid" pid
        [[ -f "$pidf" ]] || continue
        pid=$(cat "$pidf")
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$pidf"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

if [[ "$cmd" == stop ]]; then
    stop
    exit 0
fi
[[ "$cmd" == start ]] || { echo "unknown command $cmd" >&2; exit 64; }

need=()
for b in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${b%%:*}" >/dev/null || [[ -x "/usr/sbin/${b%%:*}" ]] || need+=("${b##*:}")
done
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "ci_slurm: missing ${need[*]} and cannot apt-get them (not root or no apt-get)" >&2
        exit 2
    fi
    echo "ci_slurm: installing ${need[*]}" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >"$state/apt.log" 2>&1 ||
        { apt-get update >>"$state/apt.log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >>"$state/apt.log" 2>&1; }; }; then
        tail -5 "$state/apt.log" >&2
        exit 2
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2/1024/2)}' /proc/meminfo)
user=$(id -un)
ctld_port=${MICA_SLURM_PORT:-16817}
mkdir -p "$state/munge" "$state/ctld" "$state/spool" "$state/log"
chmod 700 "$state/munge"

# munge: a fresh key, a private socket.
key="$state/munge/munge.key"
if [[ ! -f "$key" ]]; then
    if command -v mungekey >/dev/null || [[ -x /usr/sbin/mungekey ]]; then
        mungekey --create --keyfile="$key" --force 2>/dev/null || dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    else
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chmod 400 "$key"
fi
socket="$state/munge/munge.socket"

cat >"$conf" <<EOF
ClusterName=mica-ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=600
JobRequeue=1
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
# cgroups are not used (proctrack/linuxproc, task/none): say so for slurmd's checks.
cat >"$state/cgroup.conf" <<EOF
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF

fail() {
    echo "ci_slurm: $1" >&2
    for f in "$state"/log/*.log; do
        [[ -f "$f" ]] && { echo "--- $f" >&2; tail -20 "$f" >&2; }
    done
    stop
    exit 1
}

munged --socket="$socket" --key-file="$key" --pid-file="$state/munged.pid" \
    --log-file="$state/log/munged.log" --seed-file="$state/munge/munged.seed" --force ||
    fail "munged did not start"
export SLURM_CONF="$conf"
slurmctld -f "$conf" -i || fail "slurmctld did not start"
slurmd -f "$conf" -N "$host" || fail "slurmd did not start"

for _ in $(seq 60); do
    s=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
    if [[ "$s" == idle ]]; then
        printf 'export SLURM_CONF=%q\n' "$conf"
        exit 0
    fi
    sleep 0.5
done
fail "the node is not idle after 30 s (state: ${s:-none})"
