#!/bin/bash
# End-to-end test of the rtask Debian package under a real systemd (systemd 252 in
# a Debian bookworm container booted with systemd-nspawn).
#
#   tests/e2e/systemd.sh [PATH.deb]
#
# Without an argument the package is built with packaging/build-deb.sh. Needs root,
# debootstrap and systemd-container (.ci/install-deb-tools.sh installs them); prints
# a SKIP line and exits 0 when not run as root.
#
# The first run debootstraps a minimal bookworm rootfs and caches it as a tarball in
# $RTASK_E2E_CACHE_DIR (default /var/cache/rtask-e2e); later runs unpack the tarball.
# The container has only a loopback network (--private-network) and a throwaway
# root (--volatile=overlay). Each check prints PASS or FAIL and its name; the last
# line is "N passed, N failed", and the exit status is non-zero when a check failed.

# The check scripts below are single-quoted on purpose: they expand in the container.
# shellcheck disable=SC2016
set -uo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "SKIP tests/e2e/systemd.sh: needs root (systemd-nspawn, debootstrap)"
    exit 0
fi

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/e2e/nspawn-lib.sh
. "$HERE/nspawn-lib.sh"

T0=$(now)
PASSED=0
FAILED=0
WORK=''
CT_NSPAWN_PID=''

cleanup() {
    ct_down
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        rm -rf --one-file-system "$WORK"
    fi
    WORK=''
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

# Report a failure that prevents the checks from running, and exit.
abort() {
    echo "FAIL $1"
    cleanup
    echo "$PASSED passed, $((FAILED + 1)) failed"
    exit 1
}

for tool in debootstrap systemd-nspawn nsenter tar; do
    command -v "$tool" >/dev/null || abort "setup: $tool not found; run .ci/install-deb-tools.sh"
done

# Run SCRIPT with bash inside the container, with container-lib.sh loaded and
# errexit on, and print PASS or FAIL with NAME. Output lines starting with "INFO:"
# are shown on success; on failure the last 40 lines of output are shown.
#   check NAME SCRIPT [TIMEOUT_SECONDS]
check() {
    local name=$1 script=$2 seconds=${3:-60} out rc started
    started=$(now)
    out=$(ct_exec "$seconds" bash -c ". /e2e/container-lib.sh; set -eo pipefail; $script" 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        echo "PASS $name ($(elapsed "$started") s)"
        grep '^INFO:' <<<"$out" | sed 's/^INFO: */    /'
    else
        FAILED=$((FAILED + 1))
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "FAIL $name (timed out after $seconds s)"
        else
            echo "FAIL $name (exit status $rc, $(elapsed "$started") s)"
        fi
        tail -n 40 <<<"$out" | sed 's/^/    /'
    fi
}

# --- Package -------------------------------------------------------------------
if [ $# -ge 1 ]; then
    DEB=$(realpath "$1")
else
    echo "building the package with packaging/build-deb.sh"
    DEB=$(bash "$REPO/packaging/build-deb.sh" | tail -n 1)
fi
[ -f "$DEB" ] || abort "setup: no package at '$DEB'"
DEB_IN_CT=/debs/$(basename "$DEB")
echo "package: $DEB"

# --- Container -----------------------------------------------------------------
WORK=$(mktemp -d /var/tmp/rtask-e2e.XXXXXX)
CT_LOG=$WORK/nspawn.log
TARBALL=$(rootfs_tarball) || abort "setup: no Debian rootfs"
mkdir "$WORK/rootfs"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$WORK/rootfs" -xf "$TARBALL" ||
    abort "setup: unpacking $TARBALL failed"
ct_boot "$WORK/rootfs" --volatile=overlay \
    --bind-ro="$(dirname "$DEB")":/debs --bind-ro="$HERE":/e2e ||
    abort "setup: the container did not boot"

# --- Installation --------------------------------------------------------------
check "dpkg -i installs the package" "
    dpkg -i $DEB_IN_CT
    [ \"\$(dpkg-query -W -f='\${Status}' rtask)\" = 'install ok installed' ]
"
check "rtask system user exists" '
    getent passwd rtask
    [ "$(getent passwd rtask | cut -d: -f6)" = /var/lib/rtask ]
'
check "config.toml is a conffile" "
    dpkg-query -W -f='\${Conffiles}\n' rtask | grep -q ' /etc/rtask/config.toml '
"
check "keys.toml created 600 rtask rtask" '
    stat -c "%a %U %G" /etc/rtask/keys.toml
    [ "$(stat -c "%a %U %G" /etc/rtask/keys.toml)" = "600 rtask rtask" ]
'
check "man page and completions installed" '
    for file in /usr/share/man/man1/rtask.1.gz /usr/share/bash-completion/completions/rtask \
        /usr/share/zsh/vendor-completions/_rtask /usr/share/fish/vendor_completions.d/rtask.fish; do
        [ -s "$file" ] || { echo "missing or empty: $file"; exit 1; }
    done
'
check "rtask.socket enabled and listening on 8800" '
    systemctl is-enabled rtask.socket
    systemctl is-active rtask.socket
    systemctl show -P Listen rtask.socket
    port_listening 8800
'
check "rtask-metrics.socket enabled and listening on 9090" '
    systemctl is-enabled rtask-metrics.socket
    systemctl is-active rtask-metrics.socket
    port_listening 9090
'
check "service not running before first connection" '
    state=$(systemctl show -P ActiveState rtask.service)
    echo "rtask.service: $state"
    [ "$state" = inactive ]
'
check "check-config accepts packaged config" '
    cd /
    rtask check-config
'
check "systemd-analyze security exposure <= 3.0" '
    out=$(systemd-analyze security --no-pager rtask.service)
    exposure=$(sed -n "s/.*Overall exposure level for rtask.service: \([0-9.]*\).*/\1/p" <<<"$out")
    echo "INFO: exposure $exposure"
    awk -v e="$exposure" "BEGIN { exit !(e != \"\" && e <= 3.0) }" || { echo "$out"; exit 1; }
'

# --- Socket activation ---------------------------------------------------------
check "add-key admin from / prints a key" '
    cd /
    new_key admin
    [ "$(stat -c "%a %U %G" /etc/rtask/keys.toml)" = "600 rtask rtask" ]
'
check "start rtask.socket alone serves the API" '
    systemctl stop rtask.socket rtask-metrics.socket
    systemctl start rtask.socket
    not systemctl -q is-active rtask-metrics.socket
    task_succeeds uptime admin | tee /tmp/uptime.out
    grep -q "load average" /tmp/uptime.out
'
check "service runs as rtask, Type=notify ready" '
    systemctl show -p ActiveState -p SubState -p MainPID -p NRestarts rtask.service
    [ "$(systemctl show -P SubState rtask.service)" = running ]
    [ "$(ps -o user= -p "$(main_pid)")" = rtask ]
'
check "service pulls in rtask-metrics.socket" '
    systemctl is-active rtask-metrics.socket
'
check "GET /metrics answers on 9090" '
    metrics >/tmp/metrics.txt
    grep -q "^rtask_config_last_reload_success" /tmp/metrics.txt
    grep -q "^task_duration_seconds_count{.*handler=\"uptime\"" /tmp/metrics.txt
'
check "systemctl status shows STATUS= text" '
    systemctl status --no-pager rtask.service >/tmp/status.txt
    head -n 12 /tmp/status.txt
    grep -Eq "Status: \"[0-9]+ tasks?, [0-9]+ keys?; " /tmp/status.txt
'
check "journal has task runs with fields" '
    poll 5 journal_has_task_run uptime || { journalctl -u rtask -o json --no-pager | tail -n 3; exit 1; }
    journalctl -u rtask TASK=uptime --no-pager -o verbose >/tmp/journal.txt
    grep -E "^ +(TASK|STATUS|EXIT_CODE|KEY_NAME)=" /tmp/journal.txt
'

# --- Reload ----------------------------------------------------------------------
# The tasks that the remaining checks use. shutdownGraceSeconds drops to 2 so that
# stopping with a task still running does not take the default 10 s.
check "config edit adds a task without restart" '
    pid=$(main_pid)
    sed -i "s/^shutdownGraceSeconds = .*/shutdownGraceSeconds = 2/" /etc/rtask/config.toml
    cat >>/etc/rtask/config.toml <<"EOF"

[tasks.hello]
command = ["sh", "-c", "echo hello from $RTASK_TASK_NAME"]
apiKeyNames = ["admin", "ci"]

# Two sleeps in the task process group: the timeout must end both.
[tasks.sleeper]
command = ["sh", "-c", "sleep 300 & sleep 300"]
apiKeyNames = ["admin"]
executionTimeoutSeconds = 1
killGraceSeconds = 1

# Takes one second, to be in flight while the service stops.
[tasks.slow]
command = ["sh", "-c", "sleep 1; echo finished"]
apiKeyNames = ["admin"]

# Runs in the background and starts a process that leaves the task process group.
[tasks.escaper]
command = ["sh", "-c", "setsid sleep 301 & sleep 302"]
apiKeyNames = ["admin"]
async = true
executionTimeoutSeconds = 600
EOF
    poll 5 task_succeeds_quietly hello admin
    task_succeeds hello admin >/tmp/hello.out
    grep -q "hello from hello" /tmp/hello.out
    echo "MainPID before $pid, after $(main_pid)"
    [ "$(main_pid)" = "$pid" ]
'
check "add-key ci works without restart" '
    pid=$(main_pid)
    cd /tmp
    new_key ci
    poll 5 task_succeeds_quietly hello ci
    [ "$(main_pid)" = "$pid" ]
'
check "keys.toml still 600 rtask rtask" '
    stat -c "%a %U %G" /etc/rtask/keys.toml
    [ "$(stat -c "%a %U %G" /etc/rtask/keys.toml)" = "600 rtask rtask" ]
'
check "add-key rejects a duplicate name" '
    if rtask add-key ci; then exit 1; else rc=$?; fi
    echo "exit status $rc"
    [ "$rc" = 1 ]
'
check "systemctl reload rtask reloads" '
    pid=$(main_pid)
    before=$(metric_value "rtask_config_reloads_total{result=\"success\"}")
    systemctl reload rtask
    reloaded() { [ "$(metric_value "rtask_config_reloads_total{result=\"success\"}")" -gt "$before" ]; }
    poll 5 reloaded
    [ "$(main_pid)" = "$pid" ]
    status_text
'
check "broken config rejected, old one serves" '
    pid=$(main_pid)
    cp /etc/rtask/config.toml /root/config.toml.good
    before=$(metric_value "rtask_config_reloads_total{result=\"failure\"}")
    printf "\n[tasks.broken]\ncommand = \"not an array\"\n" >>/etc/rtask/config.toml
    rejected() { [ "$(metric_value "rtask_config_reloads_total{result=\"failure\"}")" -gt "$before" ]; }
    poll 5 rejected
    status=$(status_text)
    echo "StatusText: $status"
    grep -q "last reload failed" <<<"$status"
    if rtask check-config >/tmp/check.out 2>&1; then cat /tmp/check.out; exit 1; fi
    cat /tmp/check.out
    task_succeeds hello admin >/dev/null
    [ "$(main_pid)" = "$pid" ]
    cp /root/config.toml.good /etc/rtask/config.toml
    reload_ok() { status_text | grep -q "last reload ok"; }
    poll 5 reload_ok
'

# --- Processes -------------------------------------------------------------------
check "timed-out task leaves no process" '
    out=$(run_task sleeper admin)
    echo "$out"
    grep -q "\"status\":\"timeout\"" <<<"$out"
    poll 5 no_task_processes || { task_processes; exit 1; }
'
check "stop lets an in-flight task finish" '
    run_task slow admin >/tmp/slow.out &
    client=$!
    poll 5 user_process_running "sleep 1"
    systemctl stop rtask.service
    wait "$client"
    cat /tmp/slow.out
    grep -q "\"status\":\"success\"" /tmp/slow.out
'
check "stop leaves no task process" '
    run_task escaper admin >/tmp/escaper.out
    cat /tmp/escaper.out
    grep -q "\"task_id\"" /tmp/escaper.out
    poll 5 user_process_running "sleep 301"
    started=$EPOCHREALTIME
    systemctl stop rtask.service
    echo "INFO: stop with a running task took $(awk -v a="$started" -v b="$EPOCHREALTIME" "BEGIN { printf \"%.1f\", b - a }") s"
    processes=$(task_processes)
    [ -z "$processes" ] || { echo "left behind:"; echo "$processes"; exit 1; }
' 60
check "killed daemon leaves no task process" '
    run_task escaper admin >/tmp/escaper.out
    grep -q "\"task_id\"" /tmp/escaper.out
    poll 5 user_process_running "sleep 301"
    old=$(main_pid)
    kill -KILL "$old"
    # Restart=on-failure starts a new daemon after RestartSec=1s.
    poll 10 main_pid_changed "$old"
    processes=$(task_processes)
    [ -z "$processes" ] || { echo "left behind:"; echo "$processes"; exit 1; }
    task_succeeds hello admin >/dev/null
'
check "restart under load refuses no connection" '
    task_succeeds hello admin >/dev/null
    old=$(main_pid)
    # Four clients with 50 requests each, for at most 30 s. The restart begins once
    # 20 requests have completed.
    for client in 1 2 3 4; do
        load_client 50 30 >"/tmp/load.$client" &
    done
    completed_at_least() { [ "$(cat /tmp/load.* | wc -l)" -ge "$1" ]; }
    poll 10 completed_at_least 20
    restart_started=$EPOCHREALTIME
    systemctl restart rtask.service
    restart_ended=$EPOCHREALTIME
    wait
    summary=0
    cat /tmp/load.* | load_summary "$restart_started" "$restart_ended" || summary=1
    echo "INFO: MainPID $old -> $(main_pid)"
    [ "$(main_pid)" != "$old" ] && [ "$summary" = 0 ]
' 60
check "watchdog restarts a wedged daemon" '
    mkdir -p /run/systemd/system/rtask.service.d
    printf "[Service]\nWatchdogSec=2s\n" >/run/systemd/system/rtask.service.d/50-e2e-watchdog.conf
    systemctl daemon-reload
    systemctl restart rtask.service
    [ "$(systemctl show -P WatchdogUSec rtask.service)" = 2s ]
    old=$(main_pid)
    since=$(date +%s)
    kill -STOP "$old"
    poll 40 main_pid_changed "$old"
    journalctl -u rtask --since "@$since" --no-pager >/tmp/watchdog.log
    grep -i "watchdog" /tmp/watchdog.log
    grep -q "Watchdog timeout" /tmp/watchdog.log
    echo "INFO: MainPID $old -> $(main_pid), NRestarts $(systemctl show -P NRestarts rtask.service)"
    task_succeeds hello admin >/dev/null
    rm -r /run/systemd/system/rtask.service.d
    systemctl daemon-reload
    systemctl restart rtask.service
' 90

check "invalid config at start, then recovery" '
    cp /etc/rtask/config.toml /root/config.toml.good
    printf "\n[tasks.broken]\ncommand = \"not an array\"\n" >>/etc/rtask/config.toml
    since=$(date +%s)
    if systemctl restart rtask.service; then exit 1; fi
    # Restart=on-failure retries until the start limit, and then the sockets fail.
    socket_failed() { [ "$(systemctl show -P ActiveState rtask.socket)" = failed ]; }
    poll 20 socket_failed
    journalctl -u rtask -u rtask.socket --since "@$since" --no-pager >/tmp/start.log
    grep "invalid config" /tmp/start.log | tail -n 1
    grep -q "start-limit-hit" /tmp/start.log
    cp /root/config.toml.good /etc/rtask/config.toml
    rtask check-config >/dev/null
    systemctl reset-failed rtask.service
    systemctl restart rtask.socket rtask-metrics.socket
    task_succeeds hello admin >/dev/null
' 60

# --- Upgrade and removal ---------------------------------------------------------
check "reinstall restarts service, sockets stay" "deb=$DEB_IN_CT"'
    old=$(main_pid)
    socket_since=$(systemctl show -P ActiveEnterTimestampMonotonic rtask.socket)
    dpkg --force-confold -i "$deb"
    poll 10 main_pid_changed "$old"
    [ "$(systemctl show -P ActiveEnterTimestampMonotonic rtask.socket)" = "$socket_since" ]
    task_succeeds hello admin >/dev/null
    grep -q "^\[tasks.hello\]" /etc/rtask/config.toml
'

check "dpkg -r stops service, sockets and tasks" '
    run_task escaper admin >/tmp/escaper.out
    grep -q "\"task_id\"" /tmp/escaper.out
    poll 5 user_process_running "sleep 301"
    dpkg -r rtask
    for unit in rtask.service rtask.socket rtask-metrics.socket; do
        state=$(systemctl show -P ActiveState "$unit")
        echo "$unit: $state"
        [ "$state" != active ]
    done
    not port_listening 8800
    not port_listening 9090
    processes=$(ps -o pid=,args= -u rtask || true)
    [ -z "$processes" ] || { echo "left behind:"; echo "$processes"; exit 1; }
    [ ! -e /usr/bin/rtask ]
    [ -e /etc/rtask/config.toml ] && [ -e /etc/rtask/keys.toml ]
' 60
check "dpkg -P removes keys and state" '
    dpkg -P rtask
    for path in /etc/rtask/keys.toml /etc/rtask /var/lib/rtask; do
        [ ! -e "$path" ] || { echo "still present: $path"; exit 1; }
    done
'

if [ "$FAILED" -gt 0 ]; then
    echo "--- journalctl -u rtask (last 60 lines) ---"
    ct_exec 20 journalctl -u rtask -u rtask.socket -u rtask-metrics.socket --no-pager -n 60 -o short-monotonic
fi
cleanup
echo "wall time $(elapsed "$T0") s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
