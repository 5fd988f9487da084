#!/usr/bin/env bash
# Create or destroy a second Docker host ("host B") on this machine, for multi-host tests.
#
# Host B is a network namespace `hostb` joined to the main namespace by a veth pair
# (va 10.254.0.1/30 here, vb 10.254.0.2/30 in hostb) and running its own dockerd, with its
# own data root, exec root, socket, containerd, default bridge (172.31.250.1/24) and
# engine ID; it also runs in its own UTS namespace so `docker info` reports Name "hostb".
# Redis additionally listens on 10.254.0.1 so a worker inside hostb can reach it.
#
# Usage:
#   scripts/hostb.sh up              create host B (idempotent); prints DOCKER_HOST=... and BROKER_IP=...
#   scripts/hostb.sh run -- CMD...   run CMD inside hostb's network with DOCKER_HOST set to host B
#   scripts/hostb.sh down            destroy host B and undo the Redis bind (idempotent)
#   scripts/hostb.sh status          report namespace, daemon and Redis bind; exit 0 only if all up
#   scripts/hostb.sh stop-engine     stop host B's dockerd only (namespace, Redis bind, data kept)
#   scripts/hostb.sh start-engine    start host B's dockerd again (after stop-engine; idempotent)
#
# Environment: HOSTB_DIR (default /var/tmp/orchestrator/hostb) holds host B's data, exec root,
# socket, pid file and dockerd.log. MAIN_DOCKER_HOST (default unix:///var/run/docker.sock) is
# the main engine, used only to copy the test image.
# Log lines go to stderr prefixed [hostb]; `up` prints only the two KEY=VALUE lines on stdout,
# so `eval "$(scripts/hostb.sh up)"` works.
#
# The second dockerd is started with `nsenter --net` (not `ip netns exec`, which remounts /sys
# in a private mount namespace and hides the cgroup mounts dockerd needs). Never start a
# second dockerd in the main network namespace: it would take over docker0.
set -euo pipefail

NS=hostb
NS_PATH=/var/run/netns/$NS
VA=va
VB=vb
VA_IP=10.254.0.1
VB_IP=10.254.0.2
PREFIX=30
BIP=172.31.250.1/24
IMAGE=orchestrator-test/busybox:latest
D=${HOSTB_DIR:-/var/tmp/orchestrator/hostb}
D=${D%/}
MAIN_DOCKER_HOST=${MAIN_DOCKER_HOST:-unix:///var/run/docker.sock}
SOCK=unix://$D/docker.sock
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The project's virtual environment first on PATH, so `run -- celery ...` is its celery.
# shellcheck source=scripts/env.sh
source "$SCRIPT_DIR/env.sh"

log() { printf '[hostb] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "$D" in
  /?*/?*) ;;
  *) die "HOSTB_DIR must be an absolute path at least two levels deep (got '$D')" ;;
esac
case "$D" in *[[:space:]]*) die "HOSTB_DIR must not contain whitespace" ;; esac

[ "$(id -u)" -eq 0 ] || die "must run as root"

ns_exists() { [ -e "$NS_PATH" ] && ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NS"; }
in_ns() { nsenter --net="$NS_PATH" "$@"; }
hostb_docker() { DOCKER_HOST=$SOCK docker "$@"; }
main_docker() { DOCKER_HOST=$MAIN_DOCKER_HOST docker "$@"; }
ns_ping() {  # ns_ping IP: one ping from inside the namespace (busybox if there is no ping)
  if command -v ping >/dev/null; then in_ns ping -c1 -W1 "$1"; else in_ns busybox ping -c1 -W1 "$1"; fi
}
hostb_answers() { [ -S "$D/docker.sock" ] && timeout 5 env DOCKER_HOST="$SOCK" docker info >/dev/null 2>&1; }

# pid of host B's dockerd if it is running (checked against /proc so a stale or recycled pid
# is never used), else nothing.
dockerd_pid() {
  local pid
  [ -f "$D/pid" ] || return 0
  pid=$(tr -dc '0-9' <"$D/pid")
  [ -n "$pid" ] || return 0
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] \
     && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "--pidfile $D/pid"; then
    echo "$pid"
  fi
}

redis_bind() { redis-cli CONFIG GET bind 2>/dev/null | sed -n 2p; }
redis_has_b() { redis_bind | tr ' ' '\n' | grep -qx "$VA_IP"; }

# ---------------------------------------------------------------------------------------------
up_network() {
  if ns_exists; then
    log "namespace $NS exists"
  else
    # A stale mount point (e.g. from a crashed run) makes `ip netns add` fail.
    [ -e "$NS_PATH" ] && { umount -l "$NS_PATH" 2>/dev/null || true; rm -f "$NS_PATH"; }
    ip netns add "$NS"
    log "created namespace $NS"
  fi

  if ! ip -n "$NS" link show "$VB" >/dev/null 2>&1; then
    # Half-made pair from an interrupted run: va alone, or vb still in the main namespace.
    if ip link show "$VB" >/dev/null 2>&1; then
      ip link set "$VB" netns "$NS"
    else
      ip link del "$VA" 2>/dev/null || true
      ip link add "$VA" type veth peer name "$VB"
      ip link set "$VB" netns "$NS"
    fi
    log "created veth $VA <-> $NS:$VB"
  fi
  ip addr replace "$VA_IP/$PREFIX" dev "$VA"
  ip link set "$VA" up
  ip -n "$NS" addr replace "$VB_IP/$PREFIX" dev "$VB"
  ip -n "$NS" link set "$VB" up
  ip -n "$NS" link set lo up
  for _ in $(seq 50); do
    ns_ping "$VA_IP" >/dev/null 2>&1 && break
    sleep 0.1
  done
  ns_ping "$VA_IP" >/dev/null 2>&1 || die "$NS cannot ping $VA_IP over the veth"
  log "network up: $VA $VA_IP/$PREFIX <-> $NS:$VB $VB_IP/$PREFIX"
}

up_redis() {
  local bind
  redis-cli ping >/dev/null 2>&1 || die "redis is not answering on 127.0.0.1:6379 (run scripts/setup.sh)"
  bind=$(redis_bind)
  if redis_has_b; then
    log "redis already binds '$bind'"
  else
    [ -n "$bind" ] || bind=127.0.0.1
    redis-cli CONFIG SET bind "$bind $VA_IP" | grep -qx OK || die "redis CONFIG SET bind failed"
    log "redis bind: '$bind' -> '$(redis_bind)'"
  fi
  local reply
  reply=$(in_ns redis-cli -h "$VA_IP" ping 2>&1 || true)
  if [ "$reply" != PONG ] && printf '%s' "$reply" | grep -q DENIED; then
    # Protected mode refuses non-loopback clients when no bind/password is set. Record that
    # we turned it off so `down` can turn it back on.
    redis-cli CONFIG SET protected-mode no >/dev/null
    touch "$D/redis-protected-mode-changed"
    log "redis protected-mode set to no"
    reply=$(in_ns redis-cli -h "$VA_IP" ping 2>&1 || true)
  fi
  [ "$reply" = PONG ] || die "redis not reachable from $NS at $VA_IP: $reply"
  log "redis reachable from $NS at $VA_IP:6379"
}

up_dockerd() {
  local pid
  pid=$(dockerd_pid)
  if [ -n "$pid" ] && hostb_answers; then
    log "dockerd already running (pid $pid)"
    return 0
  fi
  if [ -z "$pid" ]; then
    mkdir -p "$D/data" "$D/exec"
    # Own config file, so /etc/docker/daemon.json (hosts, bridge, ...) cannot leak in, and own
    # trust key, so host B gets an engine ID different from the main engine's.
    printf '{\n  "deprecated-key-path": "%s/key.json"\n}\n' "$D" >"$D/daemon.json"
    # No live dockerd owns these (checked above): a crashed daemon leaves them behind, and its
    # pid may still be an unreaped zombie, which makes the new dockerd refuse to start.
    rm -f "$D/docker.sock" "$D/pid"
    stop_leftover_containerd
    log "starting dockerd in $NS (log: $D/dockerd.log)"
    # Own UTS namespace with hostname "hostb", so `docker info` names the two engines apart.
    # unshare, sh and nsenter all exec, so $! is dockerd itself; setsid+nohup detach it.
    setsid nohup unshare --uts sh -c 'hostname "$0" && exec "$@"' "$NS" \
      nsenter --net="$NS_PATH" dockerd \
      --config-file "$D/daemon.json" \
      --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/pid" \
      -H "$SOCK" --bip "$BIP" \
      >>"$D/dockerd.log" 2>&1 </dev/null &
    pid=$!
  else
    log "dockerd pid $pid exists but does not answer yet; waiting"
  fi
  local deadline=$((SECONDS + 60))
  until hostb_answers; do
    # ($! is dockerd unless setsid had to fork; then trust the pid file dockerd writes.)
    if ! alive "$pid" && [ -z "$(dockerd_pid)" ] && [ $SECONDS -ge $((deadline - 55)) ]; then
      tail -n 20 "$D/dockerd.log" >&2 || true
      die "dockerd exited during start-up; see $D/dockerd.log"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$D/dockerd.log" >&2 || true
      die "dockerd did not answer on $SOCK within 60 s; see $D/dockerd.log"
    fi
    sleep 0.3
  done
  log "dockerd up (pid $(dockerd_pid), $(hostb_docker version -f '{{.Server.Version}}'))"
}

up_image() {
  if hostb_docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE already on host B"
    return 0
  fi
  if ! main_docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "building $IMAGE in the main engine"
    DOCKER_HOST=$MAIN_DOCKER_HOST bash "$SCRIPT_DIR/build-test-images.sh" >&2
  fi
  main_docker save "$IMAGE" | hostb_docker load >/dev/null
  log "loaded $IMAGE into host B"
}

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$D"
  up_network
  up_redis
  up_dockerd
  up_image
  log "host B ready in $((SECONDS - t0)) s"
  echo "DOCKER_HOST=$SOCK"
  echo "BROKER_IP=$VA_IP"
}

# ---------------------------------------------------------------------------------------------
alive() {  # alive PID: running and not a zombie (init here can be slow to reap orphans)
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

wait_gone() {  # wait_gone PID SECONDS -> 0 if the process is gone in time
  local pid=$1 i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  ! alive "$pid"
}

stop_pid() {  # stop_pid PID WHAT TIMEOUT: SIGTERM, wait, then SIGKILL
  local pid=$1 what=$2 timeout=$3
  alive "$pid" || return 0
  log "stopping $what (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$timeout"; then
    log "$what (pid $pid) still running after ${timeout} s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || log "WARNING: $what (pid $pid) survived SIGKILL"
  fi
}

# containerd started by a host-B dockerd that is gone (killed or crashed) and so not reaped
# with it. A new dockerd would find it half-dead and time out connecting to it.
stop_leftover_containerd() {
  local cpid
  [ -f "$D/exec/containerd/containerd.pid" ] || return 0
  cpid=$(tr -dc '0-9' <"$D/exec/containerd/containerd.pid")
  if [ -n "$cpid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$cpid/cmdline" | grep -qF "$D/exec/"; then
    stop_pid "$cpid" "leftover containerd" 10
  fi
  # dockerd trusts this pid file if the pid merely exists, zombies included; it would then wait
  # for a socket the dead containerd never opens ("timeout waiting for containerd to start").
  rm -f "$D/exec/containerd/containerd.pid"
}

down_dockerd() {
  local pid cpid
  pid=$(dockerd_pid)
  if [ -n "$pid" ]; then
    stop_pid "$pid" dockerd 30
  else
    log "dockerd not running"
  fi
  # If dockerd had to be killed, its containers, containerd and shims may outlive it. Find
  # them through host B's private runc root and exec root, never by process name.
  local rroot=$D/exec/runtime-runc/moby c
  if [ -d "$rroot" ] && command -v runc >/dev/null; then
    for c in "$rroot"/*; do
      [ -d "$c" ] || continue
      log "force-removing leftover container ${c##*/} (runc)"
      runc --root "$rroot" delete --force "${c##*/}" >/dev/null 2>&1 || true
    done
  fi
  stop_leftover_containerd
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    if tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "-address $D/exec/containerd/containerd.sock"; then
      stop_pid "$p" "containerd-shim" 5
    fi
  done
}

down_processes_in_ns() {
  # Anything still living in the namespace (e.g. a host-B worker started with `run`) would
  # keep it and the veth alive after `ip netns del`.
  ns_exists || return 0
  local p comm
  for p in $(ip netns pids "$NS" 2>/dev/null); do
    comm=$(cat "/proc/$p/comm" 2>/dev/null || echo '?')
    stop_pid "$p" "$comm in $NS" 10
  done
}

down_mounts() {
  local m left
  # Deepest first; /proc/mounts escapes spaces, but HOSTB_DIR has none (checked above).
  for m in $(awk -v d="$D" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null && log "unmounted $m" || log "WARNING: could not unmount $m"
  done
  left=$(awk -v d="$D" '$2 == d || index($2, d "/") == 1' /proc/mounts | wc -l)
  if [ "$left" -eq 0 ]; then
    if [ -e "$D" ]; then
      rm -rf --one-file-system "$D"
      log "removed $D"
    fi
  else
    log "WARNING: $left mounts remain under $D; not removing it"
    return 1
  fi
}

down_redis() {
  local bind new
  if ! redis-cli ping >/dev/null 2>&1; then
    log "redis not answering; bind left as is"
    return 0
  fi
  if redis_has_b; then
    bind=$(redis_bind)
    new=$(printf '%s\n' $bind | grep -vx "$VA_IP" | paste -sd' ' || true)
    [ -n "$new" ] || new=127.0.0.1
    redis-cli CONFIG SET bind "$new" >/dev/null
    log "redis bind: '$bind' -> '$(redis_bind)'"
  else
    log "redis bind '$(redis_bind)' (unchanged)"
  fi
  if [ -f "$D/redis-protected-mode-changed" ]; then
    redis-cli CONFIG SET protected-mode yes >/dev/null
    rm -f "$D/redis-protected-mode-changed"
    log "redis protected-mode set back to yes"
  fi
}

down_network() {
  if ip link show "$VA" >/dev/null 2>&1; then
    ip link del "$VA" && log "deleted veth $VA"
  fi
  # Half-made pair whose peer never got moved into the namespace.
  if ip link show "$VB" >/dev/null 2>&1; then
    ip link del "$VB" && log "deleted veth $VB"
  fi
  if ns_exists || [ -e "$NS_PATH" ]; then
    ip netns del "$NS" 2>/dev/null || { umount -l "$NS_PATH" 2>/dev/null || true; rm -f "$NS_PATH"; }
    log "deleted namespace $NS"
  fi
}

cmd_down() {
  local rc=0
  down_dockerd || rc=1
  down_processes_in_ns || rc=1
  down_redis || rc=1
  down_network || rc=1
  down_mounts || rc=1
  [ $rc -eq 0 ] && log "host B is down" || log "host B is down, with warnings above"
  return $rc
}

# An engine outage on host B, for resilience tests: the namespace, the Redis bind, the data root
# (images) and any worker in the namespace stay; only dockerd (and its containerd) go away.
cmd_stop_engine() {
  down_dockerd
  [ -z "$(dockerd_pid)" ] || die "dockerd is still running"
  log "engine stopped (namespace and data kept; '$0 start-engine' brings it back)"
}

cmd_start_engine() {
  ns_exists || die "namespace $NS does not exist; run '$0 up' first"
  up_dockerd
}

# ---------------------------------------------------------------------------------------------
cmd_status() {
  local ok=0 pid
  if ns_exists; then
    if ip -n "$NS" -br addr show "$VB" 2>/dev/null | grep -q "$VB_IP/"; then
      log "namespace: up ($NS, $VA $VA_IP <-> $VB $VB_IP)"
    else
      log "namespace: exists but veth $VB/$VB_IP is missing"; ok=1
    fi
  else
    log "namespace: down"; ok=1
  fi
  pid=$(dockerd_pid)
  if [ -n "$pid" ] && hostb_answers; then
    log "dockerd: up (pid $pid, DOCKER_HOST=$SOCK)"
  elif [ -n "$pid" ]; then
    log "dockerd: running (pid $pid) but not answering on $SOCK"; ok=1
  else
    log "dockerd: down"; ok=1
  fi
  if ! redis-cli ping >/dev/null 2>&1; then
    log "redis: not answering on 127.0.0.1"; ok=1
  elif redis_has_b; then
    log "redis bind: up ('$(redis_bind)')"
  else
    log "redis bind: down ('$(redis_bind)')"; ok=1
  fi
  return $ok
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: $0 run -- CMD..."
  ns_exists || die "namespace $NS does not exist; run '$0 up' first"
  exec nsenter --net="$NS_PATH" env DOCKER_HOST="$SOCK" "$@"
}

usage() {
  cat >&2 <<EOF
usage: $0 up              create host B (idempotent); prints DOCKER_HOST=... and BROKER_IP=...
       $0 run -- CMD...   run CMD in hostb's network namespace with DOCKER_HOST=$SOCK
       $0 down            destroy host B, reset the Redis bind (idempotent)
       $0 status          show namespace, dockerd and Redis bind state (exit 0 only if all up)
       $0 stop-engine     stop host B's dockerd only (an engine outage; everything else kept)
       $0 start-engine    start host B's dockerd again
EOF
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  stop-engine) cmd_stop_engine ;;
  start-engine) cmd_start_engine ;;
  run) shift; cmd_run "$@" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
