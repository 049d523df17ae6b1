#!/usr/bin/env bash
# Private Redis instances for tests and local runs, on loopback only.
#   hack/redis.sh ensure              install Debian's redis-server if it is missing
#   hack/redis.sh start PORT [DIR]    start one on 127.0.0.1:PORT (no persistence; DIR defaults
#                                     to a new temp dir), wait for PING, print its pid
#   hack/redis.sh stop PID            stop it
set -euo pipefail

ensure() {
  command -v redis-server >/dev/null 2>&1 && return 0
  echo "installing redis-server (Debian package)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

case "${1:-}" in
  ensure) ensure ;;
  start)
    port="${2:?usage: hack/redis.sh start PORT [DIR]}"
    dir="${3:-$(mktemp -d -t muster-redis.XXXXXX)}"
    ensure
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
      --dir "$dir" --daemonize no --logfile "$dir/redis.log" &
    pid=$!
    for _ in $(seq 100); do
      if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
        echo "$pid"
        exit 0
      fi
      sleep 0.05
    done
    echo "redis-server on port $port did not answer PING; log: $dir/redis.log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  stop) kill "${2:?usage: hack/redis.sh stop PID}" ;;
  *) sed -n '2,7p' "$0" >&2; exit 2 ;;
esac
