#!/usr/bin/env bash
# A real single-node cluster on this machine, for tests and demos of `launcher=slurm_local`:
#   munged (as user munge), slurmctld + slurmd (Debian slurm-wlm, as root), a private PostgreSQL server
#   and `mlflow server` on it (artifacts served by the server). Everything listens on 127.0.0.1 only.
#
#   scripts/cluster/cluster.sh up       # install the Debian packages if missing (root), start what is not running
#   scripts/cluster/cluster.sh env      # the exports a shell needs:  eval "$(scripts/cluster/cluster.sh env)"
#   scripts/cluster/cluster.sh status   # one line per component
#   scripts/cluster/cluster.sh down     # cancel the jobs, stop everything this script started (data are kept)
#   scripts/cluster/cluster.sh purge    # down, then delete the state folder (databases, artifacts, logs)
#
# up and down are idempotent. State (configs, spool, logs, the database, artifacts) lives in
# $SEGSWEEP_CLUSTER_DIR (default /var/tmp/segsweep-cluster); ports: SEGSWEEP_PG_PORT (55432),
# SEGSWEEP_MLFLOW_PORT (55000), SEGSWEEP_SLURMCTLD_PORT (56817), SEGSWEEP_SLURMD_PORT (56818).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=${SEGSWEEP_CLUSTER_DIR:-/var/tmp/segsweep-cluster}
PG_PORT=${SEGSWEEP_PG_PORT:-55432}
MLFLOW_PORT=${SEGSWEEP_MLFLOW_PORT:-55000}
CTLD_PORT=${SEGSWEEP_SLURMCTLD_PORT:-56817}
SLURMD_PORT=${SEGSWEEP_SLURMD_PORT:-56818}
MLFLOW=${SEGSWEEP_MLFLOW:-$ROOT/.venv/bin/mlflow}
PACKAGES="slurmctld slurmd slurm-client munge postgresql"

CONF=$STATE/slurm.conf
PGDATA=$STATE/pgdata
PGSOCK=$STATE/pgsock
PGPASSFILE_PATH=$STATE/pgpass
HOST=$(hostname -s)

say() { echo "cluster: $*"; }
die() { echo "cluster: $*" >&2; exit 2; }

pgbin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$bin" ] || die "PostgreSQL is not installed (apt-get install -y postgresql)"
    echo "$bin"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "$what did not come up within ${seconds}s (logs: $STATE/log/)"
}

install_packages() {
    local missing=""
    for cmd in slurmctld slurmd sbatch munged; do command -v "$cmd" >/dev/null || missing=yes; done
    ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing=yes
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || die "missing Debian packages; as root run: apt-get install -y $PACKAGES"
    say "installing $PACKAGES"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >/dev/null
    # the packages' own services are not used: this script runs private instances
    for svc in slurmctld slurmd postgresql; do service "$svc" stop >/dev/null 2>&1 || true; done
}

# --- munge ------------------------------------------------------------------------------------------
munge_up() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running"; return 0
    fi
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/run/munged.ours"
    wait_for 20 munged sh -c 'munge -n </dev/null | unmunge'
    say "munged started"
}

munge_down() {
    if [ -f "$STATE/run/munged.ours" ]; then
        if [ -s /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
        rm -f "$STATE/run/munged.ours"
        say "munged stopped"
    fi
}

# --- SLURM ------------------------------------------------------------------------------------------
slurm_conf() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))   # 80% of this machine's
    sed -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" "$HERE/slurm.conf.in" > "$CONF.new"
    mv "$CONF.new" "$CONF"
}

node_ready() { sinfo -h -N -o "%T" 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

slurm_up() {
    export SLURM_CONF=$CONF
    mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$STATE/run" "$STATE/log"
    slurm_conf
    if alive "$STATE/run/slurmctld.pid"; then
        say "slurmctld already running"; scontrol reconfigure >/dev/null 2>&1 || true
    else
        slurmctld -f "$CONF"
        wait_for 30 slurmctld scontrol ping
        say "slurmctld started on 127.0.0.1:$CTLD_PORT"
    fi
    if alive "$STATE/run/slurmd.pid"; then
        say "slurmd already running"
    else
        slurmd -f "$CONF"
        say "slurmd started on 127.0.0.1:$SLURMD_PORT"
    fi
    for _ in $(seq 30); do
        node_ready && break
        # a node that was down (an earlier unclean stop) is put back into service
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    node_ready || die "node $HOST not ready: $(sinfo -h -N -o '%T %E' 2>&1) (logs: $STATE/log/)"
}

slurm_down() {
    export SLURM_CONF=$CONF
    [ -f "$CONF" ] || return 0
    if alive "$STATE/run/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${jobs// }" ]; then
            say "cancelling jobs $jobs"
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 30); do [ -z "$(squeue -h -t running,completing 2>/dev/null)" ] && break; sleep 1; done
        fi
    fi
    for daemon in slurmd slurmctld; do
        local pidfile=$STATE/run/$daemon.pid
        if alive "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 20); do alive "$pidfile" || break; sleep 0.5; done
            alive "$pidfile" && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
            say "$daemon stopped"
        fi
        rm -f "$pidfile"
    done
}

# --- PostgreSQL + MLflow ------------------------------------------------------------------------------
psql_admin() { runuser -u postgres -- "$(pgbin)/psql" -h "$PGSOCK" -p "$PG_PORT" -U postgres -qtA "$@"; }

pg_up() {
    local bin
    bin=$(pgbin)
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    install -d -o postgres -g postgres -m 755 "$PGSOCK"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        runuser -u postgres -- "$bin/initdb" -D "$PGDATA" -U postgres -E UTF8 --auth-local=peer \
            --auth-host=scram-sha-256 >"$STATE/log/initdb.log"
        cat >>"$PGDATA/postgresql.conf" <<EOF
# segsweep local cluster
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGSOCK'
EOF
    fi
    touch "$STATE/log/postgres.log" && chown postgres:postgres "$STATE/log/postgres.log"
    if runuser -u postgres -- "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        say "postgres already running"
    else
        runuser -u postgres -- "$bin/pg_ctl" -D "$PGDATA" -l "$STATE/log/postgres.log" -w -t 60 start >/dev/null
        say "postgres started on 127.0.0.1:$PG_PORT"
    fi
    if [ ! -s "$PGPASSFILE_PATH" ]; then
        local password
        password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
        (umask 077; echo "127.0.0.1:$PG_PORT:*:mlflow:$password" > "$PGPASSFILE_PATH")
    fi
    local password
    password=$(cut -d: -f5 "$PGPASSFILE_PATH")
    if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='mlflow'")" != 1 ]; then
        psql_admin -c "CREATE ROLE mlflow LOGIN PASSWORD '$password'"
    fi
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='mlflow'")" != 1 ]; then
        psql_admin -c "CREATE DATABASE mlflow OWNER mlflow"
    fi
}

pg_down() {
    local bin
    bin=$(pgbin)
    [ -s "$PGDATA/PG_VERSION" ] || return 0
    if runuser -u postgres -- "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        runuser -u postgres -- "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
        say "postgres stopped"
    fi
}

mlflow_health() { curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health"; }

mlflow_up() {
    [ -x "$MLFLOW" ] || die "$MLFLOW not found: run 'make install' first"
    mkdir -p "$STATE/artifacts"
    if alive "$STATE/run/mlflow.pid" && mlflow_health >/dev/null 2>&1; then
        say "mlflow server already running"; return 0
    fi
    if ss -ltn "sport = :$MLFLOW_PORT" | grep -q LISTEN; then
        die "port $MLFLOW_PORT is taken by another program (set SEGSWEEP_MLFLOW_PORT)"
    fi
    PGPASSFILE=$PGPASSFILE_PATH setsid "$MLFLOW" server \
        --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
        --artifacts-destination "$STATE/artifacts" --serve-artifacts \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 >"$STATE/log/mlflow.log" 2>&1 </dev/null &
    echo $! > "$STATE/run/mlflow.pid"
    wait_for 180 "mlflow server" mlflow_health
    say "mlflow server started: http://127.0.0.1:$MLFLOW_PORT (backend postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow)"
}

mlflow_down() {
    if alive "$STATE/run/mlflow.pid"; then
        local pid
        pid=$(cat "$STATE/run/mlflow.pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        say "mlflow server stopped"
    fi
    rm -f "$STATE/run/mlflow.pid"
}

env_lines() {
    echo "export SLURM_CONF=$CONF"
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    echo "export PGPASSFILE=$PGPASSFILE_PATH"
    # hparams=optuna: the study in the server's database, schema optuna (hydra_plugins/segsweep_optuna)
    echo "export SEGSWEEP_OPTUNA_STORAGE=postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow"
}

status() {
    export SLURM_CONF=$CONF
    local s
    s=$(alive "$STATE/run/slurmctld.pid" && echo running || echo stopped); echo "slurmctld  $s"
    s=$(alive "$STATE/run/slurmd.pid" && echo "running, node $(sinfo -h -N -o '%N %T %c CPUs' 2>/dev/null)" || echo stopped)
    echo "slurmd     $s"
    s=$(munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && echo running || echo stopped); echo "munged     $s"
    s=$(runuser -u postgres -- "$(pgbin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1 && echo "running on 127.0.0.1:$PG_PORT" || echo stopped)
    echo "postgres   $s"
    s=$(mlflow_health >/dev/null 2>&1 && echo "running: http://127.0.0.1:$MLFLOW_PORT" || echo stopped); echo "mlflow     $s"
}

case "${1:-}" in
    up)
        [ "$(id -u)" = 0 ] || die "run as root: slurmd, munged and the private PostgreSQL need it"
        install_packages
        install -d -m 755 "$STATE" "$STATE/run" "$STATE/log"
        munge_up
        slurm_up
        pg_up
        mlflow_up
        env_lines > "$STATE/env"
        say "up; in your shell: eval \"\$($0 env)\"  then  python run.py -m experiment=covid_arch_x_loss launcher=slurm_local"
        ;;
    down)
        mlflow_down
        slurm_down
        pg_down
        munge_down
        say "down (data kept in $STATE; '$0 purge' deletes it)"
        ;;
    purge)
        "$0" down
        rm -rf "$STATE"
        say "deleted $STATE"
        ;;
    env) env_lines ;;
    status) status ;;
    *) echo "usage: $0 up|down|status|env|purge" >&2; exit 2 ;;
esac
