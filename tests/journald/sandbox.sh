#!/bin/sh
# Runs rtask next to a private systemd-journald, for the journald test.
#
# Usage (as root): unshare -m --propagation private sh sandbox.sh DIR RTASK ARGS...
#
# The caller passes the api and metrics sockets as fds 3 and 4. In the private mount
# namespace, tmpfs mounts hide the host's /run/systemd and /var/log/journal, and DIR is
# mounted on /run/log, so journald writes DIR/journal/MACHINE-ID/system.journal, which
# `journalctl -D DIR/journal` reads from outside. The pids of journald and rtask go to
# DIR/journald.pid and DIR/rtask.pid, so the caller can stop them. The script exits
# with rtask's exit status once rtask has exited and journald has stopped.
set -eu

dir=$1
shift

mount -t tmpfs tmpfs /run/systemd
mount --bind "$dir" /run/log
mount -t tmpfs tmpfs /var/log/journal

# systemd-journald takes no options: its only argument is a journal namespace name,
# so it must be started without arguments. It must not inherit the sockets either.
/usr/lib/systemd/systemd-journald </dev/null >"$dir/journald.out" 2>&1 3<&- 4<&- &
journald=$!
echo "$journald" >"$dir/journald.pid"
trap 'kill -TERM "$journald" 2>/dev/null || true' EXIT

# Wait up to 5 s for journald's native socket, which rtask's journald layer needs.
tries=0
while [ ! -S /run/systemd/journal/socket ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 500 ]; then
        echo "sandbox.sh: systemd-journald did not create its socket" >&2
        exit 1
    fi
    sleep 0.01
done

# sh exports its own pid and execs rtask, which keeps that pid.
LISTEN_FDS=2 LISTEN_FDNAMES=api:metrics sh -c 'export LISTEN_PID=$$; exec "$@"' sh "$@" &
daemon=$!
echo "$daemon" >"$dir/rtask.pid"
status=0
wait "$daemon" || status=$?

trap - EXIT
kill -TERM "$journald"
wait "$journald" || true
exit "$status"
