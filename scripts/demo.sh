#!/usr/bin/env bash
# Moat's main job, offline: grant a GitHub token (validated against a local
# stand-in for api.github.com: TLS, its own test CA, reached through
# MOAT_RESOLVE), then let curl call the API through Moat's proxy holding only
# a placeholder while Moat injects the real token; then list and revoke.
# Touches nothing of yours: everything lives in a temp dir removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked --bins -q

moat=$PWD/target/release/moat
work=$(mktemp -d)
stub_pid=""
proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null
  [ -n "$stub_pid" ] && kill "$stub_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

token=ghp_demo0123456789abcdefghijklmnopqrstu
./target/release/moat-stub-upstream --ca-out "$work/ca.pem" --accept "$token" >"$work/stub.out" &
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
GITHUB_TOKEN=$token "$moat" grant github
step "moat grant list"
"$moat" grant list
step "moat grant show github"
"$moat" grant show github
step "moat proxy --grant github &    # an injecting proxy; prints its URL"
"$moat" proxy --grant github >"$work/proxy.url" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do [ -s "$work/proxy.url" ] && break; sleep 0.05; done
url=$(head -1 "$work/proxy.url")
echo "$url"
placeholder=$("$moat" grant show github --json | sed -n 's/.*"placeholder": "\(.*\)".*/\1/p')
step "curl -x \$url --cacert \$(moat ca path) -H 'Authorization: Bearer $placeholder' https://api.github.com/user"
echo "(curl holds only the placeholder; the stand-in answers only to the real token)"
curl -sS -x "$url" --cacert "$("$moat" ca path)" -H "Authorization: Bearer $placeholder" https://api.github.com/user
echo
step "curl https://api.github.com/user with the placeholder, not through Moat"
curl -sS --connect-to "api.github.com:443:$addr" --cacert "$work/ca.pem" -H "Authorization: Bearer $placeholder" https://api.github.com/user || true
echo
step "GITHUB_TOKEN=ghp_bad… moat grant github --profile work   # a token the API rejects"
GITHUB_TOKEN=ghp_bad0123456789abcdefghijklmnopqrst "$moat" grant github --profile work || echo "(exit $?: nothing saved)"
step "moat grant providers"
"$moat" grant providers
step "moat revoke github"
"$moat" revoke github
step "moat grant list"
"$moat" grant list
