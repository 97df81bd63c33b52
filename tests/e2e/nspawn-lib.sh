# shellcheck shell=bash
# Functions that build a cached Debian rootfs and boot it under systemd-nspawn,
# for end-to-end tests against a real systemd. Sourced by tests/e2e/systemd.sh.
#
#   rootfs_tarball                  print the cached tarball path, building it first if missing
#   ct_boot ROOTFS [NSPAWN_ARGS...] boot; sets CT_NSPAWN_PID and CT_PID (the container's init)
#   ct_exec SECONDS CMD...          run CMD inside the container with a timeout
#   ct_down                         power off; SIGKILL nspawn if it is still up after 30 s
#
# Works on hosts where PID 1 is not systemd (no host D-Bus, no machined), so nspawn
# needs --register=no --keep-unit. Requires root, debootstrap and systemd-container.

E2E_CACHE_DIR=${RTASK_E2E_CACHE_DIR:-/var/cache/rtask-e2e}
E2E_SUITE=${RTASK_E2E_SUITE:-bookworm}
E2E_MIRROR=${RTASK_E2E_MIRROR:-http://deb.debian.org/debian}
# procps provides /bin/kill, which ExecReload= uses, and curl drives the API. The
# container runs with --private-network, so every package dpkg -i needs must be here.
E2E_INCLUDE=systemd,dbus,curl,procps

# Timestamp in seconds with microseconds, for durations.
now() { echo "$EPOCHREALTIME"; }
# Elapsed seconds since $1, with one decimal.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

rootfs_tarball() {
    local key tarball lock_fd work
    key=$(printf '%s %s %s' "$E2E_SUITE" "$E2E_INCLUDE" "$E2E_MIRROR" | sha256sum | cut -c1-12)
    tarball=$E2E_CACHE_DIR/$E2E_SUITE-minbase-$key.tar
    mkdir -p "$E2E_CACHE_DIR" || return 1

    # Serialize concurrent runs so only one of them runs debootstrap.
    exec {lock_fd}>"$E2E_CACHE_DIR/.lock"
    if ! flock -w 900 "$lock_fd"; then
        echo "rootfs: timed out waiting for the lock on $E2E_CACHE_DIR/.lock" >&2
        return 1
    fi

    if [ ! -s "$tarball" ]; then
        local t0
        t0=$(now)
        work=$(mktemp -d "$E2E_CACHE_DIR/build.XXXXXX")
        echo "rootfs: debootstrap $E2E_SUITE (minbase, +$E2E_INCLUDE) into $work, log in $work.log" >&2
        if ! timeout 900 debootstrap --variant=minbase --include="$E2E_INCLUDE" \
            "$E2E_SUITE" "$work/root" "$E2E_MIRROR" >"$work.log" 2>&1; then
            echo "rootfs: debootstrap failed; last lines of $work.log:" >&2
            tail -n 20 "$work.log" >&2
            rm -rf --one-file-system "$work"
            exec {lock_fd}>&-
            return 1
        fi
        # The downloaded .debs are not needed at run time.
        rm -f "$work"/root/var/cache/apt/archives/*.deb
        echo rtask-e2e >"$work/root/etc/hostname"
        tar --numeric-owner --xattrs --xattrs-include='*' -C "$work/root" -cf "$tarball.tmp" . &&
            mv "$tarball.tmp" "$tarball"
        rm -rf --one-file-system "$work" "$work.log"
        echo "rootfs: cached $tarball in $(elapsed "$t0") s" >&2
    fi

    exec {lock_fd}>&-
    [ -s "$tarball" ] && echo "$tarball"
}

ct_boot() {
    local root=$1 state='' t0
    shift
    t0=$(now)
    : >"$CT_LOG"
    systemd-nspawn --quiet -D "$root" --machine=rtask-e2e --register=no --keep-unit \
        --private-network --boot "$@" >>"$CT_LOG" 2>&1 </dev/null &
    CT_NSPAWN_PID=$!
    CT_PID=''
    # Right after the start, nspawn's first child is a short-lived helper. The
    # container's init is the child whose comm is "systemd".
    for _ in $(seq 1 240); do
        if ! kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
            echo "container: systemd-nspawn exited; its output:" >&2
            cat "$CT_LOG" >&2
            return 1
        fi
        CT_PID=$(ps -o pid=,comm= --ppid "$CT_NSPAWN_PID" | awk '$2 == "systemd" { print $1; exit }')
        if [ -n "$CT_PID" ]; then
            state=$(timeout 5 nsenter -t "$CT_PID" -a systemctl is-system-running 2>/dev/null)
            case $state in running | degraded) break ;; esac
        fi
        sleep 0.25
    done
    echo "container: up in $(elapsed "$t0") s (nspawn pid $CT_NSPAWN_PID, init pid $CT_PID, state ${state:-unknown})"
    case $state in running | degraded) return 0 ;; esac
    echo "container: did not reach running in 60 s; nspawn output:" >&2
    cat "$CT_LOG" >&2
    return 1
}

# The environment is reset so that nothing from the host (CI variables, locale) leaks in.
# An nsenter'ed process stays in the host's cgroup, and the container's shutdown waits for
# it, so every command gets a timeout.
ct_exec() {
    local seconds=$1
    shift
    timeout -k 5 "$seconds" nsenter -t "$CT_PID" -a \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER='' "$@"
}

ct_down() {
    [ -n "${CT_NSPAWN_PID:-}" ] || return 0
    local t0
    t0=$(now)
    if [ -n "${CT_PID:-}" ]; then
        timeout 10 nsenter -t "$CT_PID" -a systemctl poweroff >/dev/null 2>&1 ||
            kill -TERM "$CT_NSPAWN_PID" 2>/dev/null
    else
        kill -TERM "$CT_NSPAWN_PID" 2>/dev/null
    fi
    for _ in $(seq 1 150); do
        kill -0 "$CT_NSPAWN_PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
        echo "container: still up after 30 s, sending SIGKILL to nspawn pid $CT_NSPAWN_PID" >&2
        kill -KILL "$CT_NSPAWN_PID" 2>/dev/null
    fi
    wait "$CT_NSPAWN_PID" 2>/dev/null
    echo "container: down in $(elapsed "$t0") s"
    CT_NSPAWN_PID=''
}
