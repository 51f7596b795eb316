#!/usr/bin/env bash
# A private Docker engine for vm-tests/docker.rs: its own data-root, exec-root,
# socket and pidfile, and no bridge, iptables rules or ip_forward (Moat plumbs
# each container's `--network none` namespace itself; nothing changes on the
# host). Idempotent: `start` does nothing when the engine already answers.
#   scripts/test-dockerd.sh start   # prints DOCKER_HOST=unix:///run/moat-test-docker.sock
#   scripts/test-dockerd.sh stop
set -euo pipefail
sock=/run/moat-test-docker.sock
pidfile=/run/moat-test-docker.pid
log=/run/moat-test-docker.log
answers() { DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1; }
case "${1:-start}" in
  start)
    if ! answers; then
      mkdir -p /var/lib/moat-test-docker /run/moat-test-docker
      dockerd --iptables=false --ip6tables=false --ip-forward=false --bridge=none \
        --data-root /var/lib/moat-test-docker --exec-root /run/moat-test-docker \
        -H "unix://$sock" --pidfile "$pidfile" >"$log" 2>&1 &
      for _ in $(seq 1 100); do answers && break; sleep 0.2; done
      answers || { echo "test-dockerd: dockerd did not answer on $sock; see $log" >&2; exit 1; }
    fi
    echo "DOCKER_HOST=unix://$sock"
    ;;
  stop)
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
