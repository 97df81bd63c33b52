# shellcheck shell=bash
# Functions for commands that tests/e2e/systemd.sh runs inside the test container,
# where this directory is mounted read-only at /e2e. Every curl has a time limit (-m),
# and every wait polls with a deadline.

API=http://127.0.0.1:8800
METRICS_URL=http://127.0.0.1:9090/metrics
KEY_DIR=/root/e2e-keys

# Run CMD every 0.1 s until it succeeds, and fail after SECONDS.
#   poll SECONDS CMD [ARGS...]
poll() {
    local tries=$(($1 * 10))
    shift
    until "$@"; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}

# Create an API key with `rtask add-key NAME` and store it in $KEY_DIR/NAME.
new_key() {
    local out
    mkdir -p "$KEY_DIR"
    out=$(rtask add-key "$1") || return 1
    sed -n 's/^API-KEY: //p' <<<"$out" >"$KEY_DIR/$1"
    [ -s "$KEY_DIR/$1" ]
}

key() { cat "$KEY_DIR/$1"; }

# Negate a command so that errexit stops the script when it fails (errexit ignores "! cmd").
not() { ! "$@"; }

# POST /tasks/NAME with the key stored for KEY_NAME. Prints the response body and
# then a line "HTTP <status>".
#   run_task NAME KEY_NAME [BODY]
run_task() {
    curl -sS -m "${CURL_MAX_SECONDS:-10}" -X POST -H "Authorization: Bearer $(key "$2")" \
        --data-binary "${3-}" -w '\nHTTP %{http_code}\n' "$API/tasks/$1"
}

# Print the response of run_task, and succeed when it is 200 with "status":"success".
task_succeeds() {
    local out
    out=$(run_task "$@")
    echo "$out"
    grep -q '^HTTP 200$' <<<"$out" && grep -q '"status":"success"' <<<"$out"
}

# Quiet variant for poll loops.
task_succeeds_quietly() { task_succeeds "$@" >/dev/null 2>&1; }

# Send up to COUNT requests to the hello task, one after the other, for at most
# SECONDS. Prints one line per request: start time, end time, "ok" or "failed", and
# for a failure the response or curl's error.
#   load_client COUNT SECONDS
load_client() {
    local deadline=$((SECONDS + $2)) started out
    for _ in $(seq 1 "$1"); do
        [ "$SECONDS" -lt "$deadline" ] || break
        started=$EPOCHREALTIME
        if out=$(run_task hello admin 2>&1) && grep -q '"status":"success"' <<<"$out"; then
            echo "$started $EPOCHREALTIME ok"
        else
            echo "$started $EPOCHREALTIME failed $(tr '\n' ' ' <<<"$out")"
        fi
    done
}

# Summarize load_client lines from stdin against a restart that ran from START to
# END: requests, failures, and the requests that overlapped the restart. Fails when
# a request failed or none overlapped.
#   load_summary START END
load_summary() {
    awk -v start="$1" -v end="$2" '
        { total++ }
        $3 != "ok" { failed++; print "failed request: " $0 }
        $1 < end && $2 > start { overlapped++ }
        END {
            printf "INFO: %d requests, %d failed, %d overlapped the %.2f s restart\n", total, failed, overlapped, end - start
            exit !(failed == 0 && overlapped > 0)
        }'
}

metrics() { curl -sS -m 5 "$METRICS_URL"; }

# Print the value of the sample whose name and labels are exactly SAMPLE, or 0.
#   metric_value 'rtask_config_reloads_total{result="success"}'
metric_value() {
    metrics | awk -v sample="$1" '$1 == sample { value = $2 } END { print value + 0 }'
}

main_pid() { systemctl show -P MainPID rtask.service; }

# Succeed when rtask.service runs with a main process other than OLD_PID.
main_pid_changed() {
    local pid
    pid=$(main_pid)
    [ "$pid" != 0 ] && [ "$pid" != "$1" ] && [ "$(systemctl show -P SubState rtask.service)" = running ]
}

# Succeed when some task process of the rtask user runs exactly COMMAND_LINE.
user_process_running() { pgrep -u rtask -fx -- "$1" >/dev/null; }

# Succeed when the journal of rtask.service has a record for TASK that carries
# TASK, STATUS=success and EXIT_CODE=0 (journalctl -o json prints one record a line).
journal_has_task_run() {
    journalctl -u rtask TASK="$1" -o json --no-pager | awk -v task="\"TASK\":\"$1\"" '
        index($0, task) && index($0, "\"STATUS\":\"success\"") && index($0, "\"EXIT_CODE\":\"0\"") { found = 1 }
        END { exit !found }'
}

status_text() { systemctl show -P StatusText rtask.service; }

# Print the processes of the service's cgroup and of the rtask user, except the
# main process: the task processes. Prints nothing when there are none.
task_processes() {
    local cgroup base main pids=''
    main=$(main_pid)
    cgroup=$(systemctl show -P ControlGroup rtask.service)
    if [ -n "$cgroup" ]; then
        # The container may see cgroup v2 alone or the hybrid v1/v2 layout.
        for base in /sys/fs/cgroup/unified /sys/fs/cgroup /sys/fs/cgroup/systemd ''; do
            if [ -z "$base" ]; then
                echo "no cgroup.procs found for $cgroup"
            elif [ -r "$base$cgroup/cgroup.procs" ]; then
                pids=$(cat "$base$cgroup/cgroup.procs")
                break
            fi
        done
    fi
    pids="$pids $(ps -o pid= -u rtask)"
    # shellcheck disable=SC2086 # word splitting of the PID list is intended
    printf '%s\n' $pids | sort -un | while read -r pid; do
        if [ -n "$pid" ] && [ "$pid" != "$main" ]; then
            # The process may have exited since it was listed.
            ps -o pid=,user=,args= -p "$pid" || true
        fi
    done
}

no_task_processes() { [ -z "$(task_processes)" ]; }

# Succeed when the loopback TCP port is in LISTEN state (0A) in /proc/net/tcp.
port_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v local_address="0100007F:$hex" '$2 == local_address && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}
