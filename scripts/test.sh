#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Installs what it needs first (scripts/setup.sh). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked --features moat/vm-tests -- -D warnings
./scripts/check-macos.sh
if [ "$(id -u)" -eq 0 ]; then
  # Root (as in CI): the privileged end-to-end tests in vm-tests/ run too.
  # vm-tests/docker.rs gets a private engine (no bridge, no iptables, its own
  # data-root and socket), stopped at the end unless it was already running.
  if ! DOCKER_HOST=unix:///run/moat-test-docker.sock docker version >/dev/null 2>&1; then
    trap './scripts/test-dockerd.sh stop' EXIT
  fi
  export "$(./scripts/test-dockerd.sh start)"
  ./scripts/test-image.sh
  cargo test --workspace --locked --features moat/vm-tests
else
  echo "test: not root, so vm-tests/ (privileged end-to-end tests) are not built; run 'sudo ./scripts/test.sh' for them" >&2
  cargo test --workspace --locked
fi
