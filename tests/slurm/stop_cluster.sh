#!/usr/bin/env bash
# Stops the test cluster that start_cluster.sh started with the same STATE_DIR: the
# Slurm daemons first (the controller flushes accounting to slurmdbd), then slurmdbd,
# then MariaDB and munged. SIGTERM, then SIGKILL after 30 s.
set -uo pipefail
BASE="$(realpath -m "${1:?usage: stop_cluster.sh STATE_DIR}")"
stop() {
    local pidfile pid pids=() start=$SECONDS
    for pidfile in "$@"; do
        [[ -f "$pidfile" ]] || continue
        pid="$(cat "$pidfile")"
        if [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
        rm -f "$pidfile"
    done
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS - start < 30)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
}
stop "$BASE/run/slurmd.pid" "$BASE/run/slurmctld.pid"
stop "$BASE/run/slurmdbd.pid"
stop "$BASE/run/mariadb.pid" "$BASE/run/munged.pid"
if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$BASE/"* ]]; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
