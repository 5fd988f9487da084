#!/bin/sh
# Entrypoint of the orchestrator image. As root: give the unprivileged user `orchestrator`
# the group that owns the Docker socket (its gid differs from host to host, so it is read at
# start, not baked into the image), then run the command as that user. As any other user:
# run the command unchanged.
set -eu
user=orchestrator

if [ "$(id -u)" != 0 ]; then
  exec "$@"
fi

socket=${DOCKER_HOST:-unix:///var/run/docker.sock}
case $socket in
  unix://*) socket=${socket#unix://} ;;
  *) socket= ;;  # tcp:// or ssh://: no socket to open
esac
if [ -n "$socket" ] && [ -S "$socket" ]; then
  gid=$(stat -c %g "$socket")
  group=$(getent group "$gid" | cut -d: -f1 || true)
  if [ -z "$group" ]; then
    group=docker-host
    groupadd --gid "$gid" "$group"
  fi
  id -nG "$user" | tr ' ' '\n' | grep -qx "$group" || usermod --append --groups "$group" "$user"
fi
exec setpriv --reuid="$user" --regid="$user" --init-groups "$@"
