#!/usr/bin/env bash
# The project's single-node SLURM cluster for tests and laptops (Debian 12 packages, 22.05.8): munged + [mariadb + slurmdbd] + slurmctld + slurmd,
# started directly (no systemd, no cgroups). Idempotent: installs what is missing, (re)writes config,
# starts only daemons that are not already running, waits until the node is idle.
# Daemons started by THIS script have their PIDs recorded in $CI_STATE/*.pid (stop-slurm.sh uses only those).
#   WITH_ACCOUNTING=1 (default): mariadb + slurmdbd, so `sacct` works (submitit polls sacct for job state).
#   WITH_ACCOUNTING=0: no database; submitit still gets results/exceptions via its result pickles, but
#                      cancelled/killed/timed-out jobs are never seen as done (job.result() hangs).
#   FAKE_GPUS=2 (default): the node advertises that many GPUs (gres/gpu) backed by placeholder device
#                      nodes, so jobs that ask for GPUs are scheduled and SLURM sets CUDA_VISIBLE_DEVICES
#                      (and SLURM_JOB_GPUS) per job as on a GPU node; no process can use them (0: none).
set -euo pipefail

WITH_ACCOUNTING="${WITH_ACCOUNTING:-1}"
CI_STATE="${CI_STATE:-/run/slurm-ci}"          # our own pid records
SPOOL=/var/spool/slurm-ci
LOGDIR=/var/log/slurm-ci
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
FAKE_GPUS="${FAKE_GPUS:-2}"
NODE="$(hostname -s)"
export DEBIAN_FRONTEND=noninteractive

T_START=$(date +%s.%N)
log() { awk -v a="$T_START" -v b="$(date +%s.%N)" -v m="$*" 'BEGIN{printf "[start-slurm %5.1fs] %s\n", b-a, m}'; }

# ---------- 1. install (only if missing) ----------
pkgs=(munge slurmctld slurmd slurm-client)
bins=(munged slurmctld slurmd sbatch)
if [ "$WITH_ACCOUNTING" = 1 ]; then pkgs+=(slurmdbd mariadb-server); bins+=(slurmdbd mariadbd); fi
missing=0; for b in "${bins[@]}"; do command -v "$b" >/dev/null 2>&1 || missing=1; done
if [ "$missing" = 1 ]; then
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # stop postinst scripts from auto-starting services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  log "apt-get update"; apt-get update -qq
  log "apt-get install ${pkgs[*]}"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  log "install done"
else
  log "packages already installed"
fi

mkdir -p "$CI_STATE" "$SPOOL/ctld" "$SPOOL/d" "$LOGDIR" /run/munge /etc/slurm

# ---------- helpers ----------
# alive PIDFILE COMM -> prints pid if the pid in PIDFILE is alive and its /proc/PID/comm == COMM
alive() { local f=$1 c=$2 p; [ -s "$f" ] || return 1; p=$(cat "$f"); [ -n "$p" ] || return 1
          [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$c" ] || return 1; echo "$p"; }
# record NAME DAEMON_PIDFILE COMM : copy the daemon's own pid file into our state dir (we started it).
# Polls: a daemonizing parent can return before the child has (re)written its pid file.
record() { local p="" i; for i in $(seq 100); do p=$(alive "$2" "$3") && break; sleep 0.1; done
           [ -n "$p" ] || { echo "ERROR: $1 did not start (see $LOGDIR)"; exit 1; }
           echo "$p" > "$CI_STATE/$1.pid"; log "$1 started, pid $p"; }
wait_for() { local what=$1 tries=$2; shift 2; for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
             echo "ERROR: timed out waiting for $what"; return 1; }

# ---------- 2. munge ----------
chown munge:munge /run/munge; chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then mungekey -c -f -k /etc/munge/munge.key; fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if alive /run/munge/munged.pid munged >/dev/null; then log "munged already running"
else rm -f /run/munge/munged.pid; runuser -u munge -- /usr/sbin/munged; record munged /run/munge/munged.pid munged; fi
wait_for "munge" 50 sh -c 'munge -n | unmunge'

# ---------- 3. slurm.conf ----------
eval "$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=')"
MEM_TOTAL=$(free -m | awk '/^Mem:/{print $2}')
MARGIN=$(( MEM_TOTAL / 20 > 256 ? MEM_TOTAL / 20 : 256 ))
REALMEM=$(( MEM_TOTAL - MARGIN ))
DEFMEM=$(( REALMEM / CPUs < 1024 ? REALMEM / CPUs : 1024 ))
# Fake GPUs: slurmd wants each gres File= to be a character or block device (a plain file is "not a
# valid character or block device" and no job gets CUDA_VISIBLE_DEVICES). The placeholders are device
# nodes of /dev/null (c 1:3) under our spool, not in /dev, so nothing else mistakes them for a GPU;
# jobs get CUDA_VISIBLE_DEVICES=0, 1, ... as the number ending each name.
GRES_NODE=""; GRES_TYPES=""; NEWGRES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  mkdir -p "$SPOOL/fake-gpu"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    [ -c "$SPOOL/fake-gpu/nvidia$i" ] || mknod -m 0666 "$SPOOL/fake-gpu/nvidia$i" c 1 3
  done
  GRES_TYPES="GresTypes=gpu"; GRES_NODE=" Gres=gpu:$FAKE_GPUS"
  NEWGRES="# generated by start-slurm.sh: $FAKE_GPUS placeholder GPUs (FAKE_GPUS), no driver behind them
AutoDetect=off
NodeName=$NODE Name=gpu File=$SPOOL/fake-gpu/nvidia[0-$((FAKE_GPUS - 1))]"
fi
if [ "$WITH_ACCOUNTING" = 1 ]; then ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"; else ACCT="AccountingStorageType=accounting_storage/none"; fi
NEWCONF=$(cat <<EOF
# generated by start-slurm.sh
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again:
# 10 s keeps the requeue tests (timeouts, preemptions) short; a launch on this one node takes well under 1 s
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# container-friendly: no cgroups, no systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$ACCT
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# fast turnaround for CI (sched_interval: the main scheduler's period, default 60 s, is what starts a
# requeued job once its wait is over: no event wakes the backfill scheduler then)
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_min_interval=0,sched_interval=2
KillWait=2
MinJobAge=300
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
$GRES_TYPES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUs Boards=$Boards SocketsPerBoard=$SocketsPerBoard CoresPerSocket=$CoresPerSocket ThreadsPerCore=$ThreadsPerCore RealMemory=$REALMEM$GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEWCONF" ]; then printf '%s\n' "$NEWCONF" > "$CONF"; CONF_CHANGED=1; fi
if [ -z "$NEWGRES" ]; then
  if [ -e "$GRES_CONF" ]; then rm -f "$GRES_CONF"; CONF_CHANGED=1; fi
elif [ ! -f "$GRES_CONF" ] || [ "$(cat "$GRES_CONF")" != "$NEWGRES" ]; then
  printf '%s\n' "$NEWGRES" > "$GRES_CONF"; CONF_CHANGED=1; fi

# ---------- 4. accounting: mariadb + slurmdbd ----------
if [ "$WITH_ACCOUNTING" = 1 ]; then
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  printf '[mysqld]\ninnodb_buffer_pool_size=256M\ninnodb_lock_wait_timeout=900\nskip-networking\n' \
    > /etc/mysql/mariadb.conf.d/99-slurm-ci.cnf
  if alive /run/mysqld/mysqld.pid mariadbd >/dev/null; then log "mariadbd already running"
  else
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    rm -f /run/mysqld/mysqld.pid
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock >"$LOGDIR/mariadb.log" 2>&1 </dev/null &
    wait_for "mariadb" 150 mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    record mariadbd /run/mysqld/mysqld.pid mariadbd
  fi
  mariadb -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmci
EOF
  chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a world-readable config
  if alive /run/slurmdbd.pid slurmdbd >/dev/null; then log "slurmdbd already running"
  else rm -f /run/slurmdbd.pid; slurmdbd; wait_for "slurmdbd" 150 sacctmgr -n -P show cluster; record slurmdbd /run/slurmdbd.pid slurmdbd; fi
fi

# ---------- 5. slurmctld + slurmd ----------
if alive /run/slurmctld.pid slurmctld >/dev/null; then
  log "slurmctld already running"
  [ "$CONF_CHANGED" = 1 ] && { log "config changed -> scontrol reconfigure"; scontrol reconfigure; }
else
  rm -f /run/slurmctld.pid; slurmctld; wait_for "slurmctld" 150 sh -c 'scontrol ping | grep -q UP'; record slurmctld /run/slurmctld.pid slurmctld
fi
if alive /run/slurmd.pid slurmd >/dev/null; then log "slurmd already running"
else rm -f /run/slurmd.pid; slurmd; record slurmd /run/slurmd.pid slurmd; fi

# ---------- 6. wait for the node to be idle ----------
for _ in $(seq 150); do
  st=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  case "$st" in
    idle|mix|alloc) break ;;
    drain*|down*|drng) scontrol update NodeName="$NODE" State=RESUME || true ;;
  esac
  sleep 0.2
done
st=$(sinfo -h -n "$NODE" -o %t)
case "$st" in idle|mix|alloc) ;; *) echo "ERROR: node $NODE state '$st'"; sinfo -R; exit 1 ;; esac
# daemons that were already running keep the GresTypes they started with (a reconfigure does not change it)
gres=$(scontrol show node "$NODE" | grep -o ' Gres=[^ ]*' | cut -d= -f2)
want=$([ "$FAKE_GPUS" -gt 0 ] && echo "gpu:$FAKE_GPUS" || echo "(null)")
if [ "$gres" != "$want" ]; then
  echo "ERROR: node $NODE has Gres=$gres, this config asks for $want: the running slurmctld/slurmd predate it;" \
       "stop them (scripts/slurm/stop.sh stops those this script started) and run this script again"; exit 1
fi
sinfo
log "cluster ready (node $NODE: $st; CPUs=$CPUs RealMemory=$REALMEM Gres=$gres; accounting=$WITH_ACCOUNTING)"
