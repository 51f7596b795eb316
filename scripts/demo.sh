#!/usr/bin/env bash
# Moat's main job so far, offline: grant a GitHub token that is validated
# against a local stand-in for api.github.com (TLS, its own test CA, reached
# through MOAT_RESOLVE), then list, inspect and revoke it. Touches nothing of
# yours: everything lives in a temp dir that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked --bins -q

moat=$PWD/target/release/moat
work=$(mktemp -d)
stub_pid=""
cleanup() { [ -n "$stub_pid" ] && kill "$stub_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

./target/release/moat-stub-upstream --ca-out "$work/ca.pem" >"$work/stub.out" &
stub_pid=$!
for _ in $(seq 100); do grep -q '^ready' "$work/stub.out" 2>/dev/null && break; sleep 0.05; done
addr=$(awk '/^ready/ {print $2}' "$work/stub.out")
[ -n "$addr" ] || { echo "demo: the stub upstream did not start" >&2; exit 1; }

export MOAT_HOME="$work/moat"
export MOAT_RESOLVE="api.github.com:443=$addr"
export MOAT_UPSTREAM_CA="$work/ca.pem"
export DBUS_SESSION_BUS_ADDRESS="unix:path=$work/no-bus"   # no keychain: show the key-file fallback

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

echo "Local api.github.com stand-in on $addr (MOAT_RESOLVE=$MOAT_RESOLVE)"
step "GITHUB_TOKEN=ghp_… moat grant github"
GITHUB_TOKEN=ghp_demo0123456789abcdefghijklmnopqrstu "$moat" grant github
step "moat grant list"
"$moat" grant list
step "moat grant show github"
"$moat" grant show github
step "GITHUB_TOKEN=ghp_bad… moat grant github --profile work   # a token the API rejects"
GITHUB_TOKEN=ghp_bad0123456789abcdefghijklmnopqrst "$moat" grant github --profile work || echo "(exit $?: nothing saved)"
step "moat grant providers"
"$moat" grant providers
step "moat revoke github"
"$moat" revoke github
step "moat grant list"
"$moat" grant list
