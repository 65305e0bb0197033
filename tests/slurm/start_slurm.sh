#!/usr/bin/env bash
# Single-node Slurm (loopback) for the Slurm tests (tests/test_slurm.py), on Debian 12 without systemd.
# Run as root. Adapted from a working CI recipe: slurmctld + slurmd, slurmdbd with MariaDB so that
# sacct works (submitit polls it), munge authentication.
# Usage: start_slurm.sh up|install|start|stop|status
#   up: install the Debian packages if missing, then start; on failure the reason goes to
#       $SLURM_CI_DIR/unavailable (the tests skip with it) and the exit status is non-zero.
#   SLURM_CI_AUTH=munge|none   (default munge; auth/none also works on Debian's 22.05.8)
#   SLURM_CI_ACCT=1|0          (default 1: slurmdbd+MariaDB so sacct works; submitit polls sacct)
# Cores are the consumable resource (CR_Core), not memory: a job without --mem must not take the
# whole node's memory and keep the others pending.
set -euo pipefail
D=${SLURM_CI_DIR:-/tmp/slurm-ci}
AUTH=${SLURM_CI_AUTH:-munge}
ACCT=${SLURM_CI_ACCT:-1}
DBPASS=slurmci

log() { echo "[slurm-ci $(date +%T)] $*"; }
waitfor() { # waitfor SECONDS CMD... : retry CMD every 0.25 s until it succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then log "timeout waiting for: $*"; return 1; fi
    sleep 0.25
  done
}

do_install() {
  export DEBIAN_FRONTEND=noninteractive
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then # stop postinst from starting daemons via init.d
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
  fi
  local pkgs="slurmctld slurmd slurm-client"
  if [ "$AUTH" = munge ]; then pkgs="$pkgs munge"; fi
  if [ "$ACCT" = 1 ]; then pkgs="$pkgs slurmdbd mariadb-server"; fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  log "installed: $(slurmctld -V)"
}

write_config() {
  mkdir -p "$D"/{state,spool,log,run}
  local mem cpus acct_lines
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cpus=$(nproc)
  if [ "$ACCT" = 1 ]; then
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
  else
    acct_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat >/etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/$AUTH
CredType=cred/$AUTH
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
JobCompType=jobcomp/none
$acct_lines
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  if [ "$ACCT" = 1 ]; then
    cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/$AUTH
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
LogFile=$D/log/slurmdbd.log
PidFile=$D/run/slurmdbd.pid
EOF
    chmod 600 /etc/slurm/slurmdbd.conf # slurmdbd refuses a group/world-readable config
  fi
}

do_start() {
  do_stop >/dev/null 2>&1 || true # leftovers of an earlier run (by pid file)
  write_config
  rm -rf "$D"/state/* "$D"/spool/* "$D"/log/* # fresh cluster: job ids restart at 1
  if [ "$AUTH" = munge ]; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged # daemonizes, pid in /run/munge/munged.pid
    waitfor 10 sh -c 'munge -n | unmunge'
    log "munged up"
  fi
  if [ "$ACCT" = 1 ]; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    # stderr is opened by this root shell: --log-error into a root-owned dir kills mariadbd silently
    setsid /usr/sbin/mariadbd --user=mysql >"$D/log/mariadb.log" 2>&1 </dev/null &
    waitfor 60 mysqladmin ping
    # drop old accounting data, else reused job ids show up twice in sacct
    mysql -e "DROP DATABASE IF EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    log "mariadb up"
    slurmdbd
    waitfor 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
    log "slurmdbd up"
  fi
  slurmctld -i
  slurmd -N localhost
  waitfor 60 sh -c 'sinfo -h -n localhost -o %t | grep -qx idle'
  if [ "$ACCT" = 1 ]; then
    waitfor 30 sh -c 'sacctmgr -n -P list cluster format=cluster | grep -qx ci'
  fi
  srun -t 1 true
  log "slurm ready: $(sinfo -h -o '%P %a %D %t %N')"
}

alive() { # running and not a zombie (PID 1 here may reap exited daemons late)
  [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
kill_pidfile() { # kill_pidfile NAME PIDFILE : SIGTERM, wait up to 20 s, then SIGKILL
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if alive "$pid"; then
    kill "$pid"
    for _ in $(seq 80); do alive "$pid" || break; sleep 0.25; done
    if alive "$pid"; then log "$1 did not stop, SIGKILL"; kill -9 "$pid"; fi
  fi
  rm -f "$2"
  log "$1 stopped"
}

do_stop() {
  if [ -s "$D/run/slurmctld.pid" ] && squeue -h >/dev/null 2>&1; then
    scancel --full --user=root 2>/dev/null || true
    waitfor 20 sh -c '[ -z "$(squeue -h)" ]' || true
  fi
  kill_pidfile slurmd "$D/run/slurmd.pid"
  kill_pidfile slurmctld "$D/run/slurmctld.pid"
  kill_pidfile slurmdbd "$D/run/slurmdbd.pid"
  kill_pidfile mariadbd /run/mysqld/mysqld.pid
  kill_pidfile munged /run/munge/munged.pid
}

do_up() {
  rm -f "$D/unavailable"
  mkdir -p "$D"
  local why=""
  if [ "$(id -u)" != 0 ]; then why="not root: cannot install or start Slurm daemons"
  elif ! command -v slurmctld >/dev/null && ! command -v apt-get >/dev/null; then why="no slurmctld and no apt-get to install it"
  elif ! command -v slurmctld >/dev/null && ! do_install; then why="apt-get could not install the Slurm packages"
  elif ! do_start; then why="Slurm did not start (logs under $D/log)"
  fi
  if [ -n "$why" ]; then
    echo "$why" >"$D/unavailable"
    log "Slurm unavailable: $why"
    return 1
  fi
}

case "${1:-}" in
  up) do_up ;;
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 up|install|start|stop|status" >&2; exit 2 ;;
esac
