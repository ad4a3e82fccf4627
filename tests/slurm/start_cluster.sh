#!/usr/bin/env bash
# Starts a single-node SLURM cluster on localhost for the tests: munged, MariaDB,
# slurmdbd, slurmctld and slurmd, as root and without systemd, all state under $1.
#   tests/slurm/start_cluster.sh /tmp/slurm-test     # then: export SLURM_CONF=$1/etc/slurm.conf
#   tests/slurm/stop_cluster.sh /tmp/slurm-test
# Needs Debian's munge, slurm-wlm, slurmdbd and mariadb-server (.ci/run installs them).
# Outside $1 it touches only munged's default socket (/run/munge) and the link
# /etc/slurm/slurm.conf, which stop_cluster.sh removes.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE="$(realpath -m "${1:?usage: start_cluster.sh STATE_DIR}")"
CLUSTER=mschangetest
HOST="$(hostname -s)"
DB_PASS="slurmtest"
CPUS="$(nproc)"
# slurmd drains a node whose configured memory is above what it finds.
MEM="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"

log() { echo "[start_cluster] $*" >&2; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local end=$((SECONDS + $1)) what=$2
    shift 2
    while ((SECONDS < end)); do
        timeout 10 "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "gave up waiting for $what (logs: $BASE/log)"
    return 1
}

[[ $(id -u) == 0 ]] || { log "must run as root"; exit 1; }
for tool in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr; do
    command -v "$tool" >/dev/null || { log "$tool not found (apt-get install munge slurm-wlm slurmdbd mariadb-server)"; exit 1; }
done
mkdir -p "$BASE"/{etc,log,run,state/ctld,state/d,munge,db}
chmod 700 "$BASE/munge"

render() {
    sed -e "s|@BASE@|$BASE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" \
        -e "s|@CTLD_PORT@|6817|g" -e "s|@SLURMD_PORT@|6818|g" -e "s|@DBD_PORT@|6819|g" \
        -e "s|@DB_PORT@|3307|g" -e "s|@DB_PASS@|$DB_PASS|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@MEM@|$MEM|g" "$1" >"$2"
}
render "$HERE/slurm.conf.in" "$BASE/etc/slurm.conf"
render "$HERE/slurmdbd.conf.in" "$BASE/etc/slurmdbd.conf"
chmod 600 "$BASE/etc/slurmdbd.conf"
export SLURM_CONF="$BASE/etc/slurm.conf"
# The executor's job-step plugin clears every SLURM_* variable, SLURM_CONF too, before
# its `srun`, which then reads the compiled-in default path.
mkdir -p /etc/slurm
if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    log "/etc/slurm/slurm.conf is a real file: not replacing it"
    exit 1
fi
ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf

# munged on its default socket: Slurm 22.05's client commands ignore other sockets.
if ! timeout 5 bash -c "munge -n | unmunge" >/dev/null 2>&1; then
    [[ -f "$BASE/munge/munge.key" ]] || mungekey --create --keyfile="$BASE/munge/munge.key"
    chmod 400 "$BASE/munge/munge.key"
    mkdir -p /run/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    munged --force --key-file="$BASE/munge/munge.key" --socket=/run/munge/munge.socket.2 \
        --pid-file="$BASE/run/munged.pid" --log-file="$BASE/log/munged.log" \
        --seed-file="$BASE/munge/munged.seed"
    wait_for 10 munged bash -c "munge -n | unmunge"
fi

# MariaDB for slurmdbd: a private data folder, TCP on 127.0.0.1:3307.
DB_SOCKET="$BASE/run/mysqld.sock"
if [[ ! -d "$BASE/db/mysql" ]]; then
    mariadb-install-db --no-defaults --user=root --datadir="$BASE/db" \
        --auth-root-authentication-method=socket --skip-test-db >"$BASE/log/mariadb-install.log" 2>&1
fi
nohup mariadbd --no-defaults --user=root --datadir="$BASE/db" --socket="$DB_SOCKET" \
    --port=3307 --bind-address=127.0.0.1 --pid-file="$BASE/run/mariadb.pid" \
    --log-error="$BASE/log/mariadb.log" --innodb-buffer-pool-size=64M \
    --innodb-lock-wait-timeout=900 --skip-name-resolve >/dev/null 2>&1 &
wait_for 60 mariadb mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping
mariadb --no-defaults --socket="$DB_SOCKET" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

slurmdbd  # finds slurmdbd.conf next to $SLURM_CONF
wait_for 60 slurmdbd sacctmgr -n list cluster
if [[ -z "$(sacctmgr -n -P list cluster format=cluster where cluster="$CLUSTER")" ]]; then
    sacctmgr -i add cluster "$CLUSTER" >&2
fi
slurmctld -f "$SLURM_CONF"
wait_for 60 slurmctld bash -c "scontrol ping | grep -q UP"
slurmd -f "$SLURM_CONF"
wait_for 60 "an idle node" bash -c "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"
log "cluster up: export SLURM_CONF=$SLURM_CONF"
