#!/usr/bin/env bash
# Install and start, on this one host, the services the integration tests need:
#
#   * a single-node Slurm cluster (Debian's slurm-wlm + munge): munged, slurmctld
#     and slurmd, node "localhost", one partition "debug" (Default, no time limit);
#   * Slurm accounting (slurmdbd on a MariaDB socket-only server), because
#     submitit reads job states with `sacct`: without it a cancelled or crashed
#     job is never seen as finished and job.result() waits forever;
#   * PostgreSQL on 127.0.0.1:5432 with role smx/smx (LOGIN CREATEDB, member of
#     pg_signal_backend) and the database smx_test owned by it.
#
# Meant for a fresh Debian 12 machine or container, run as root, without
# systemd: the daemons are started directly. Safe to run again: what is
# installed is not reinstalled, what runs is left running, and a daemon is
# restarted only when the configuration this script writes has changed.
# Slurm jobs found in the queue are cancelled: the cluster is the tests' own,
# so they were left by an earlier run that was killed, and they would hold the
# node. (Do not run this script while the tests run: their jobs would go too.)
# Every wait is bounded; on failure it says what failed and shows a log tail.
#
# Environment (all optional):
#   SMX_CI_SLURM=1             set 0 to skip Slurm (and accounting)
#   SMX_CI_SLURM_ACCOUNTING=1  set 0 for no slurmdbd/MariaDB (then no sacct)
#   SMX_CI_POSTGRES=1          set 0 to skip PostgreSQL
#   SMX_CI_SLURM_MEM_MB        the node's RealMemory (default: 75% of RAM)
#   SMX_CI_WAIT_S=60           how long any single wait may take
set -euo pipefail

SLURM=${SMX_CI_SLURM:-1}
ACCOUNTING=${SMX_CI_SLURM_ACCOUNTING:-1}
POSTGRES=${SMX_CI_POSTGRES:-1}
WAIT_S=${SMX_CI_WAIT_S:-60}
[ "$SLURM" = 1 ] || ACCOUNTING=0

CLUSTER=smxci
NODE=localhost
PARTITION=debug
PG_ROLE=smx
PG_PASSWORD=smx
PG_DB=smx_test
PG_PORT=5432
SLURMDB_PASSWORD=smx-slurmdbd   # MariaDB listens on its unix socket only

START=$EPOCHREALTIME
log() { awk -v a="$START" -v b="$EPOCHREALTIME" -v m="$*" 'BEGIN { printf "[ci_services %6.1fs] %s\n", b - a, m }'; }
die() { log "ERROR: $*"; exit 1; }
show_log() { [ -f "$1" ] && { echo "----- last lines of $1 -----"; tail -n 25 "$1"; echo "-----"; } >&2 || true; }

# wait_for DESCRIPTION LOGFILE COMMAND...: run COMMAND every 0.5 s until it
# succeeds, for at most WAIT_S seconds.
wait_for() {
    local what=$1 logfile=$2; shift 2
    local deadline=$(( $(date +%s) + WAIT_S ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_log "$logfile"
            die "timed out after ${WAIT_S}s waiting for $what"
        fi
        sleep 0.5
    done
    log "ok: $what"
}

# alive PIDFILE NAME: the pid file names a live process called NAME.
alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# stop PIDFILE NAME: stop the process the pid file names, if it is NAME.
stop() {
    alive "$1" "$2" || return 0
    local pid; pid=$(cat "$1")
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( $(date +%s) + WAIT_S ))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || die "$2 (pid $pid) did not exit within ${WAIT_S}s"
        sleep 0.2
    done
}

# put_file PATH MODE OWNER < CONTENT: write PATH if its content differs;
# returns 0 when it changed the file, 1 when it was already up to date.
put_file() {
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"; chmod "$mode" "$path"; chown "$owner" "$path"
        return 1
    fi
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$path"
    rm -f "$tmp"
    log "wrote $path"
    return 0
}

[ "$(id -u)" = 0 ] || die "run this as root"
for tool in awk cmp; do command -v "$tool" >/dev/null || die "$tool is missing"; done

# ---------------------------------------------------------------- packages
packages=()
[ "$SLURM" = 1 ] && packages+=(munge slurm-wlm)
[ "$ACCOUNTING" = 1 ] && packages+=(slurmdbd mariadb-server)
[ "$POSTGRES" = 1 ] && packages+=(postgresql)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    # Keep package scripts from starting services: this script starts them,
    # in its own way and order. Only a policy file we created is removed.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    log "apt-get update"
    apt-get update -qq
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
    if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
    log "installed ${missing[*]}"
else
    log "packages already installed: ${packages[*]}"
fi

# ------------------------------------------------------------------- munge
start_munge() {
    install -d -m 700 -o munge -g munge /etc/munge /var/log/munge
    install -d -m 711 -o munge -g munge /var/lib/munge
    install -d -m 755 -o munge -g munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    # munged refuses a key that others can read or a directory others can write.
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    log "starting munged"
    # --force: start even when a dead munged left its socket or lock behind.
    runuser -u munge -- /usr/sbin/munged --force
    wait_for "munge credentials round-trip" /var/log/munge/munged.log \
        sh -c 'munge -n | unmunge'
}

slurm_dirs() {
    install -d -m 755 /etc/slurm
    install -d -m 755 -o slurm -g slurm /var/lib/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
}

# ----------------------------------------------------- MariaDB + slurmdbd
start_accounting() {
    slurm_dirs
    install -d -m 755 -o mysql -g mysql /run/mysqld
    install -d -m 2750 -o mysql -g adm /var/log/mysql
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising MariaDB data directory"
        mariadb-install-db --user=mysql --skip-test-db >/dev/null
    fi
    if mariadb-admin ping >/dev/null 2>&1; then
        log "MariaDB already running"
    else
        log "starting MariaDB (unix socket only)"
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
            --innodb-lock-wait-timeout=900 \
            >>/var/log/mysql/ci-mariadbd.log 2>&1 </dev/null &
        wait_for "MariaDB answering on /run/mysqld/mysqld.sock" /var/log/mysql/ci-mariadbd.log \
            mariadb-admin ping
    fi
    mariadb <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$SLURMDB_PASSWORD';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$SLURMDB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    local changed=0
    put_file /etc/slurm/slurmdbd.conf 600 slurm:slurm <<EOF && changed=1
# Written by scripts/ci_services.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$SLURMDB_PASSWORD
StorageLoc=slurm_acct_db
EOF
    if alive /run/slurmdbd.pid slurmdbd && [ "$changed" = 0 ]; then
        log "slurmdbd already running"
    else
        stop /run/slurmdbd.pid slurmdbd
        log "starting slurmdbd"
        slurmdbd
        # Listening on 6819 is what slurmctld needs; sacctmgr would need slurm.conf.
        wait_for "slurmdbd listening on 127.0.0.1:6819" /var/log/slurm/slurmdbd.log \
            bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
    fi
}

# ------------------------------------------------------------------- slurm
node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }
node_ready() { case "$(node_state)" in idle|mixed|allocated) return 0;; *) return 1;; esac; }
node_idle() { [ "$(node_state)" = idle ]; }
queued_jobs() { squeue -h -o %i; }
queue_empty() { [ -z "$(queued_jobs)" ]; }

start_slurm() {
    slurm_dirs
    # A node name that does not resolve breaks srun and slurmd; make sure the
    # host's own name resolves (containers often lack the entry).
    if ! getent hosts "$(hostname)" >/dev/null 2>&1; then
        log "adding $(hostname) to /etc/hosts"
        echo "127.0.0.1 $(hostname)" >>/etc/hosts || log "warning: could not write /etc/hosts"
    fi

    local cpus mem_total mem defmem accounting_lines
    cpus=$(nproc)
    mem_total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    mem=${SMX_CI_SLURM_MEM_MB:-$(( mem_total * 3 / 4 ))}
    [ "$mem" -ge 256 ] || mem=256
    defmem=$(( mem / cpus ))
    if [ "$ACCOUNTING" = 1 ]; then
        accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        accounting_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi

    local changed=0
    # No cgroups anywhere (proctrack/linuxproc, task/none, jobacct_gather
    # linux/none), so slurmd needs no cgroup.conf and runs in containers.
    put_file /etc/slurm/slurm.conf 644 root:root <<EOF && changed=1
# Written by scripts/ci_services.sh: a one-node cluster for CI.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
# Start queued jobs within a second (defaults: 60 s loop, 3 s batch delay).
SchedulerParameters=batch_sched_delay=0,sched_interval=1
# Cancel a job whose dependency can no longer be met (default: pend forever).
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$defmem
ReturnToService=2
# Seconds between SIGTERM and SIGKILL on scancel/timeout (default 30).
KillWait=5
$accounting_lines
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmctld refuses to start on state saved under another cluster name.
    local cn=/var/lib/slurm/slurmctld/clustername
    if [ -f "$cn" ] && [ "$(cat "$cn")" != "$CLUSTER" ]; then
        log "removing state of cluster '$(cat "$cn")'"
        rm -f "$cn"
    fi

    if [ "$changed" = 1 ]; then
        stop /run/slurmd.pid slurmd
        stop /run/slurmctld.pid slurmctld
    fi
    if alive /run/slurmctld.pid slurmctld; then
        log "slurmctld already running"
    else
        log "starting slurmctld"
        slurmctld
    fi
    wait_for "slurmctld answering (scontrol ping)" /var/log/slurm/slurmctld.log \
        bash -c 'scontrol ping | grep -q "is UP"'
    if alive /run/slurmd.pid slurmd; then
        log "slurmd already running"
    else
        log "starting slurmd"
        # -N: the node is "localhost", whatever the machine's hostname is.
        slurmd -N "$NODE"
    fi
    local deadline=$(( $(date +%s) + WAIT_S )) resumed=0 state
    until node_ready; do
        state=$(node_state)
        case "$state" in
            down*|drain*|fail*)
                if [ "$resumed" = 0 ]; then
                    log "node $NODE is '$state'; resuming it"
                    scontrol update NodeName="$NODE" State=RESUME || true
                    resumed=1
                fi;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_log /var/log/slurm/slurmd.log
            show_log /var/log/slurm/slurmctld.log
            scontrol show node "$NODE" >&2 || true
            die "timed out after ${WAIT_S}s waiting for node $NODE to be idle (state '$state')"
        fi
        sleep 0.5
    done
    log "ok: node $NODE is $(node_state)"

    # This cluster exists for the tests. Jobs still queued now were left by an
    # earlier run that was killed (slurmctld recovers them from its saved
    # state); they would hold the node, and a pending one would start later.
    local leftover
    leftover=$(queued_jobs | tr '\n' ' ') || die "squeue did not answer"
    if [ -n "${leftover// /}" ]; then
        log "cancelling jobs left by an earlier run: $leftover"
        # shellcheck disable=SC2086
        scancel $leftover || true
        wait_for "queue empty" /var/log/slurm/slurmctld.log queue_empty
        wait_for "node $NODE idle" /var/log/slurm/slurmctld.log node_idle
    fi

    # Smoke tests, from a directory every user can write (sbatch's output).
    log "smoke test: srun -N1 hostname"
    (cd /tmp && timeout "$WAIT_S" srun -N1 -t 1 hostname) || die "srun did not work"
    log "smoke test: sbatch --wrap 'echo hi'"
    local job
    job=$(cd /tmp && timeout "$WAIT_S" sbatch --parsable -t 1 -o /dev/null --wrap 'echo hi') \
        || die "sbatch failed"
    # sbatch --wait polls slowly (up to 10 s); poll ourselves.
    if [ "$ACCOUNTING" = 1 ]; then
        wait_for "sacct reports job $job COMPLETED" /var/log/slurm/slurmctld.log \
            bash -c "sacct -n -X -P -o State -j $job | grep -qx COMPLETED"
    else
        wait_for "job $job COMPLETED (no accounting: sacct is unavailable)" /var/log/slurm/slurmctld.log \
            bash -c "scontrol -o show job $job | grep -q 'JobState=COMPLETED'"
    fi
    sinfo
}

# -------------------------------------------------------------- PostgreSQL
start_postgres() {
    local ver cluster=main
    ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n1)
    [ -n "$ver" ] || die "no PostgreSQL server installed"
    if [ ! -d "/etc/postgresql/$ver/$cluster" ]; then
        log "creating PostgreSQL $ver cluster '$cluster' on port $PG_PORT"
        pg_createcluster -p "$PG_PORT" "$ver" "$cluster" >/dev/null
    fi
    local port
    port=$(pg_conftool -s "$ver" "$cluster" show port 2>/dev/null || echo 5432)
    [ "$port" = "$PG_PORT" ] || { log "setting port $PG_PORT"; pg_conftool "$ver" "$cluster" set port "$PG_PORT"; }
    local changed=0
    # A throwaway test server: durability is not wanted, speed is.
    put_file "/etc/postgresql/$ver/$cluster/conf.d/smx-ci.conf" 644 postgres:postgres <<EOF && changed=1
# Written by scripts/ci_services.sh
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    [ "$port" = "$PG_PORT" ] || changed=1
    if pg_ctlcluster "$ver" "$cluster" status >/dev/null 2>&1; then
        if [ "$changed" = 1 ]; then
            log "restarting PostgreSQL $ver/$cluster (configuration changed)"
            timeout "$WAIT_S" pg_ctlcluster "$ver" "$cluster" restart
        else
            log "PostgreSQL $ver/$cluster already running"
        fi
    else
        log "starting PostgreSQL $ver/$cluster"
        timeout "$WAIT_S" pg_ctlcluster "$ver" "$cluster" start \
            || { show_log "/var/log/postgresql/postgresql-$ver-$cluster.log"; die "PostgreSQL did not start"; }
    fi
    wait_for "PostgreSQL accepting connections on 127.0.0.1:$PG_PORT" \
        "/var/log/postgresql/postgresql-$ver-$cluster.log" \
        pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
    (cd / && runuser -u postgres -- psql -q -X -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres) <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_ROLE'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')\gexec
ALTER DATABASE $PG_DB OWNER TO $PG_ROLE;
-- The tests drop their databases WITH (FORCE), which must also end an autovacuum worker
-- that happens to be in one; without this role that fails with InsufficientPrivilege.
GRANT pg_signal_backend TO $PG_ROLE;
EOF
    PGPASSWORD=$PG_PASSWORD timeout "$WAIT_S" psql -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U "$PG_ROLE" -d "$PG_DB" \
        -c 'SELECT 1' >/dev/null || die "cannot log in as $PG_ROLE to $PG_DB"
    log "ok: postgresql://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
}

if [ "$SLURM" = 1 ]; then
    start_munge
    [ "$ACCOUNTING" = 1 ] && start_accounting
    start_slurm
fi
[ "$POSTGRES" = 1 ] && start_postgres
log "all services up"
