#!/usr/bin/env bash
# Side-by-side benchmark of Moat's proxy against a direct connection and
# mitmproxy, all in one run, against a local nginx (TLS, a throwaway CA) on
# 127.0.0.1; as root also Moat's transparent mode (the client inside `moat run`)
# and the cold start of `moat run -- true` next to unshare, ip netns and docker;
# and the wall time of `moat claude -p` next to the same Claude Code run
# directly, both against a local stand-in of api.anthropic.com.
# Writes bench/results/<UTC timestamp>.md and bench/results/latest.md
# and prints the table. See docs/performance.md.
#
# Installs what it needs, idempotently: nginx (apt), oha (cargo install, into
# ~/.cargo/bin), mitmproxy (pip, in bench/.venv). Touches no system nginx
# config: nginx runs from a temp dir and is stopped at the end.
#
# Knobs (environment):
#   BENCH_SECONDS=5      duration of each oha point
#   BENCH_ROUNDS=3       rounds of the keep-alive c=64 point (every contender
#                        and floor, taking turns; the median is reported)
#   BENCH_CONNS=1000     idle connections held open for the RSS measurement
#   BENCH_BIG_MIB=1024   size of the bulk download
#   BENCH_BIG_RUNS=3     bulk downloads per contender (the best is reported)
#   BENCH_NGINX_WORKERS=auto
#   BENCH_ONLY="direct mitmproxy moat transparent"   contenders to run
#   BENCH_STARTS=30      timed runs per command in the startup section (0: skip it)
#   BENCH_DOCKER_IMAGE=  image for the docker startup row (default: a local
#                        busybox/alpine/debian/ubuntu image, else the first one)
#   BENCH_AGENT_RUNS=10  timed runs of each side in the agents section (0: skip it)
#   BENCH_STANDINS=PATH  the moat-agent-standins binary (default target/release/,
#                        built on its own, else target/debug/)
#   BENCH_SKIP_BUILD=1   do not run cargo build (use target/release/moat as is)
#   BENCH_MOAT=PATH      benchmark this binary as Moat (implies BENCH_SKIP_BUILD)
#   BENCH_RELAY=PATH     the moat-bench-relay binary (default target/release/)
#   BENCH_CPU_IDLE=poll  hold /dev/cpu_dma_latency at 0 while running (when
#                        writable) so idle CPUs poll instead of halting; in a VM
#                        a halted vCPU takes ~0.1 ms to wake, which swamps the
#                        c=1 latencies. The kernel drops the request when the
#                        script exits. BENCH_CPU_IDLE=default leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cmdline="./scripts/bench.sh${*:+ $*}"
for v in BENCH_RELAY BENCH_SECONDS BENCH_ROUNDS BENCH_CONNS BENCH_BIG_MIB BENCH_BIG_RUNS BENCH_NGINX_WORKERS BENCH_ONLY BENCH_SKIP_BUILD BENCH_MOAT BENCH_CPU_IDLE BENCH_STARTS BENCH_DOCKER_IMAGE BENCH_AGENT_RUNS BENCH_STANDINS; do
  [ -n "${!v:-}" ] && cmdline="$v='${!v}' $cmdline"
done

secs=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
nconns=${BENCH_CONNS:-1000}
big_mib=${BENCH_BIG_MIB:-1024}
big_runs=${BENCH_BIG_RUNS:-3}
nginx_workers=${BENCH_NGINX_WORKERS:-auto}
only=${BENCH_ONLY:-direct mitmproxy moat transparent}
starts=${BENCH_STARTS:-30}
agent_runs=${BENCH_AGENT_RUNS:-10}
OHA_VERSION=1.16.0 # builds with Rust 1.88+; pinned so runs stay comparable
token=bench-secret # the fake credential that gets injected

say() { printf 'bench: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- installs
apt_pkgs=(nginx curl openssl)
# Debian's own python3 needs python3-venv for `python3 -m venv` (pyenv's does not)
python3 -c 'import ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
need_apt=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The package may start the system's nginx on port 80; this script never wants it.
  if [[ " ${need_apt[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null &&
    systemctl is-active --quiet nginx 2>/dev/null; then
    say "stopping the nginx service the package just started"
    $sudo systemctl stop nginx || true
  fi
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null; then
  say "installing oha $OHA_VERSION (cargo install; takes several minutes once)"
  cargo install oha --locked --version "$OHA_VERSION" --quiet
fi
oha=$(command -v oha)

venv=$root/bench/.venv
if [ ! -x "$venv/bin/mitmdump" ]; then
  say "installing mitmproxy in bench/.venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check mitmproxy
fi
py=$venv/bin/python

# ---------------------------------------------------------------- temp dir, cleanup
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d "${TMPDIR:-/tmp}/moat-bench.XXXXXX")
pids=()
netns=moat-bench-$$ # the namespace the startup section creates and deletes
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  [ "$(id -u)" -ne 0 ] || ip netns del "$netns" 2>/dev/null || true # only if a startup run was cut short
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
stop() { # stop one of our processes and forget it
  local p=$1 q=() x
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for x in "${pids[@]}"; do [ "$x" = "$p" ] || q+=("$x"); done
  pids=("${q[@]}")
}
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # PORT PID: until it accepts connections, or the process died
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
why() { # FILE: the line that says what went wrong (clap puts it first)
  grep -m1 -iE 'error|fail|cannot|unrecognized|invalid' "$1" 2>/dev/null ||
    grep -m1 -v '^[[:space:]]*$' "$1" 2>/dev/null || true
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
log_cmd() { # record a command line for the report (the proxy token redacted later)
  local a s=""
  for a in "$@"; do s+="$(printf '%q' "$a") "; done
  printf '%s\n' "${s% }" >>"$work/commands.log"
}
res=$work/res
ws=$work/ws # workspace for `moat run`: visible inside the sandbox at the same path
mkdir -p "$res" "$ws"
: >"$work/commands.log"

# ---------------------------------------------------------------- moat build
moat=${BENCH_MOAT:-$root/target/release/moat}
moat_reason=""
if [[ " $only " == *" moat "* || " $only " == *" transparent "* ]] || ((starts > 0 || agent_runs > 0)); then
  if [ -z "${BENCH_SKIP_BUILD:-}${BENCH_MOAT:-}" ]; then
    say "building moat (cargo build --release --locked --bin moat --bin moat-bench-relay)"
    if ! cargo build --release --locked --bin moat --bin moat-bench-relay >"$work/build.log" 2>&1; then
      tail -n 15 "$work/build.log" >&2
      moat_reason="cargo build failed"
    fi
  fi
  [ -n "$moat_reason" ] || [ -x "$moat" ] || moat_reason="$moat missing"
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
cpu_idle="default (cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo '?'))"
if [ "${BENCH_CPU_IDLE:-poll}" = poll ] && [ -w /dev/cpu_dma_latency ] &&
  { exec 9>/dev/cpu_dma_latency; } 2>/dev/null; then
  printf '\0\0\0\0' >&9 # a 32-bit 0: no idle state with any exit latency
  cpu_idle="poll (cpu_dma_latency=0 held during the run)"
fi

# ---------------------------------------------------------------- upstream: CA, nginx
say "creating the test CA and nginx upstream in $work"
mkdir -p "$work/pki" "$work/www" "$work/nginx/tmp"
(
  cd "$work/pki"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=Moat bench throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem
  openssl ecparam -name prime256v1 -genkey -noout -out server.key
  openssl req -new -key server.key -subj "/CN=bench.test" -out server.csr
  printf '%s\n' "subjectAltName=DNS:bench.test" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
    -extfile ext.cnf -out server.pem 2>/dev/null
) >/dev/null
ca=$work/pki/ca.pem
truncate -s "${big_mib}M" "$work/www/big" # sparse: instant, no disk used
cat "$work/www/big" >/dev/null            # first read of the holes fills the page cache; do it untimed
chmod 755 "$work" "$work/www"             # nginx workers may run as nobody
chmod 644 "$work/www/big"

nginx_port=$(free_port)
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $nginx_workers;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_timeout 600s;
  keepalive_requests 100000000;
  default_type text/plain;
  output_buffers 2 512k;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$nginx_port ssl;
    server_name bench.test;
    ssl_certificate $work/pki/server.pem;
    ssl_certificate_key $work/pki/server.key;
    location = /small { return 200 "hello, world\n"; }
    location = /big { root $work/www; }
    location = /auth {
      if (\$http_authorization = "") { return 401 "missing\n"; }
      return 200 "\$http_authorization\n";
    }
  }
}
EOF
"$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
  -g "daemon off; pid $work/nginx/nginx.pid;" 2>>"$work/nginx/stderr.log" &
pids+=($!)
wait_port "$nginx_port" "$!" || {
  cat "$work/nginx/error.log" "$work/nginx/stderr.log" >&2
  say "nginx did not start"
  exit 1
}

# ---------------------------------------------------------------- contenders
# Every contender is started first; then each measurement runs for all of them
# back to back (interleaved), so a load spike from elsewhere hits all alike.
# Per contender: P_PROXY (http://[user:pw@]host:port, empty for direct),
# P_TRUST (the CA its clients trust), P_PID (whose RSS is read; empty for direct),
# P_ADDR (where a client without a proxy connects; default nginx itself).
declare -A P_PROXY=() P_TRUST=() P_PID=() P_ADDR=()
ready=()

unavailable() { # NAME REASON
  mkdir -p "$res/$1"
  printf '%s\n' "$2" >"$res/$1/unavailable"
  say "$1: n/a ($2)"
}

start_direct() {
  P_PROXY[direct]="" P_TRUST[direct]=$ca P_PID[direct]=""
  ready+=(direct)
}

start_mitmproxy() {
  local port confdir=$work/mitm pid
  port=$(free_port)
  mkdir -p "$confdir"
  log_cmd mitmdump --mode regular --listen-host 127.0.0.1 --listen-port "$port" -q \
    --set confdir="$confdir" --set ssl_verify_upstream_trusted_ca="$ca" \
    --set stream_large_bodies=1m -s bench/mitm_inject.py
  BENCH_UPSTREAM="127.0.0.1:$nginx_port" BENCH_TOKEN=$token \
    "$venv/bin/mitmdump" --mode regular --listen-host 127.0.0.1 --listen-port "$port" -q \
    --set confdir="$confdir" --set ssl_verify_upstream_trusted_ca="$ca" \
    --set stream_large_bodies=1m -s "$root/bench/mitm_inject.py" \
    >"$work/mitm.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  if ! wait_port "$port" "$pid" || [ ! -s "$confdir/mitmproxy-ca-cert.pem" ]; then
    unavailable mitmproxy "mitmdump did not start: $(why "$work/mitm.log")"
    stop "$pid"
    return
  fi
  P_PROXY[mitmproxy]="http://127.0.0.1:$port" P_TRUST[mitmproxy]=$confdir/mitmproxy-ca-cert.pem P_PID[mitmproxy]=$pid
  ready+=(mitmproxy)
}

# moat_setup: once, for every Moat contender and the startup rows: a private
# MOAT_HOME, the bench provider and its grant. moat_state: "" (not tried yet),
# ok, or why not.
moat_state=""
moat_setup() {
  case $moat_state in
  ok) return 0 ;;
  "") ;;
  *) return 1 ;;
  esac
  if [ -n "$moat_reason" ]; then
    moat_state=$moat_reason
    return 1
  fi
  export MOAT_HOME=$work/moat-home MOAT_KEY_BACKEND=file
  export MOAT_RESOLVE="bench.test:443=127.0.0.1:$nginx_port" MOAT_UPSTREAM_CA=$ca
  export DBUS_SESSION_BUS_ADDRESS="unix:path=$work/no-bus" # never touch a real keychain
  mkdir -p "$MOAT_HOME/providers"
  cat >"$MOAT_HOME/providers/bench.yaml" <<'EOF'
name: bench
description: benchmark upstream
hosts: [bench.test]
inject:
  header: Authorization
  prefix: "Bearer "
source_env: [BENCH_TOKEN]
EOF
  log_cmd env BENCH_TOKEN=$token MOAT_KEY_BACKEND=file "${moat#"$root"/}" grant bench --no-validate
  if ! BENCH_TOKEN=$token "$moat" grant bench --no-validate >"$work/moat-grant.log" 2>&1; then
    moat_state="moat grant failed: $(why "$work/moat-grant.log")"
    return 1
  fi
  moat_state=ok
}

start_moat() {
  if ! moat_setup; then
    unavailable moat "$moat_state"
    return
  fi
  log_cmd "${moat#"$root"/}" proxy --listen 127.0.0.1:0 --grant bench
  "$moat" proxy --listen 127.0.0.1:0 --grant bench >"$work/moat.out" 2>"$work/moat.err" &
  local pid=$! url="" capath reason
  pids+=("$pid")
  for _ in $(seq 300); do
    url=$(grep -m1 '^http://' "$work/moat.out" 2>/dev/null || true)
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$url" ]; then
    reason=$(why "$work/moat.err")
    kill -0 "$pid" 2>/dev/null && reason="no proxy URL printed within 15 s"
    unavailable moat "moat proxy not available: ${reason:-exited without printing a proxy URL}"
    stop "$pid"
    return
  fi
  if ! capath=$("$moat" ca path 2>"$work/moat-ca.err") || [ ! -s "$capath" ]; then
    unavailable moat "moat proxy not available: moat ca path: $(why "$work/moat-ca.err")"
    stop "$pid"
    return
  fi
  moat_url=$url
  P_PROXY[moat]=$url P_TRUST[moat]=$capath P_PID[moat]=$pid
  ready+=(moat)
}

# The client itself runs inside `moat run` (its own network namespace, nft
# redirecting every TCP connection to the run's proxy): no proxy settings, and
# bench.test resolves through Moat's DNS; the proxy reaches nginx through the
# exported MOAT_RESOLVE/MOAT_UPSTREAM_CA. Inside, /root (and so ~/.cargo/bin)
# is hidden and /tmp is fresh, but the workspace keeps its path: oha is copied
# there and writes its JSON there. Each client invocation is one sandbox start.
sandbox_trust=/tmp/.moat/ca-bundle.pem # the merged CA bundle inside the sandbox
start_transparent() {
  if [ "$(id -u)" -ne 0 ]; then
    unavailable transparent "needs root (moat run's transparent mode)"
    return
  fi
  if ! moat_setup; then
    unavailable transparent "$moat_state"
    return
  fi
  cp "$oha" "$ws/oha"
  log_cmd cp "$oha" "$ws/oha"
  if ! "$moat" run "$ws" --grant bench --redirect nft -- true >"$work/moat-run.log" 2>&1; then
    unavailable transparent "moat run failed: $(why "$work/moat-run.log")"
    return
  fi
  P_PROXY[transparent]="" P_TRUST[transparent]=$sandbox_trust P_PID[transparent]=""
  ready+=(transparent)
}

# net NAME: how each client reaches https://bench.test for this contender
# (sets the arrays ohanet, curlnet, holdnet; runner, the prefix the client runs
# under; ohabin, the oha binary to run; ohadir, where oha writes its JSON).
net() {
  local proxy=${P_PROXY[$1]} hostport cred
  runner=() ohabin=$oha ohadir=$res/$1
  if [ "$1" = transparent ] || [ "$1" = transparent-ebpf ]; then
    local redirect=nft
    [ "$1" = transparent ] || redirect=ebpf
    runner=("$moat" run "$ws" --grant bench --redirect "$redirect" --)
    ohabin=$ws/oha ohadir=$ws
    ohanet=() curlnet=() holdnet=()
  elif [ -n "$proxy" ]; then
    hostport=${proxy#http://}
    hostport=${hostport##*@}
    ohanet=(-x "http://$hostport" --no-pre-lookup) # bench.test resolves only at the proxy
    if [[ $proxy == http://*@* ]]; then             # oha ignores credentials in -x
      cred=${proxy#http://}
      cred=${cred%@*}
      ohanet+=(--proxy-header "Proxy-Authorization: Basic $(printf '%s' "$cred" | base64 -w0)")
    fi
    curlnet=(-x "$proxy")
    holdnet=(--proxy "$proxy")
  else
    local addr=${P_ADDR[$1]:-127.0.0.1:$nginx_port}
    ohanet=(--connect-to "bench.test:443:$addr")
    curlnet=(--connect-to "bench.test:443:$addr")
    holdnet=(--connect "$addr")
  fi
}

for c in direct mitmproxy moat transparent; do
  if [[ " $only " == *" $c "* ]]; then
    "start_$c"
  else
    unavailable "$c" "skipped (BENCH_ONLY)"
  fi
done

# Floors for the keep-alive c=64 point: moat-bench-relay's relays (testkit) in
# front of the same nginx: TCP and TLS doing no HTTP work, then hyper on both
# sides and a minimal httparse relay, each adding one header per request.
floors=()
relay=${BENCH_RELAY:-$root/target/release/moat-bench-relay}
if [ -x "$relay" ]; then
  log_cmd "${relay#"$root"/}" --to "127.0.0.1:$nginx_port" --upstream-ca "$ca" --ca-out "$work/relay-ca.pem"
  "$relay" --to "127.0.0.1:$nginx_port" --upstream-ca "$ca" --ca-out "$work/relay-ca.pem" \
    >"$work/relay.out" 2>"$work/relay.err" &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q '^ready' "$work/relay.out" 2>/dev/null && break
    kill -0 "$!" 2>/dev/null || break
    sleep 0.05
  done
  if grep -q '^ready' "$work/relay.out" 2>/dev/null; then
    floors=(floor-tcp floor-tls floor-hyper floor-h1)
    P_PROXY[floor-tcp]="" P_TRUST[floor-tcp]=$ca P_PID[floor-tcp]=""
    P_ADDR[floor-tcp]=$(awk '$1 == "tcp" {print $2}' "$work/relay.out")
    for f in tls hyper h1; do
      P_PROXY[floor-$f]="" P_TRUST[floor-$f]=$work/relay-ca.pem P_PID[floor-$f]=""
      P_ADDR[floor-$f]=$(awk -v f=$f '$1 == f {print $2}' "$work/relay.out")
    done
  else
    for f in tcp tls hyper h1; do
      unavailable floor-$f "moat-bench-relay did not start: $(why "$work/relay.err")"
    done
  fi
else
  for f in tcp tls hyper h1; do
    unavailable floor-$f "$relay missing (cargo build --release --bin moat-bench-relay)"
  done
fi
# The transparent c=64 point again, with the eBPF redirector instead of nft.
if [[ " ${ready[*]} " == *" transparent "* ]]; then
  floors+=(transparent-ebpf)
  P_PROXY[transparent-ebpf]="" P_TRUST[transparent-ebpf]=$sandbox_trust P_PID[transparent-ebpf]=""
fi

# oha_point NAME MODE C [TAG]: one oha run (MODE ka: keep-alive, new: a new
# connection per request) through that contender, into
# $res/NAME/oha-MODE-cC[TAG].json (TAG: -rN for round N > 1).
oha_point() {
  local name=$1 mode=$2 c=$3 tag=${4:-} ka=()
  [ "$mode" = new ] && ka=(--disable-keepalive)
  mkdir -p "$res/$name"
  net "$name"
  say "$name: oha c=$c $([ "$mode" = ka ] && echo keep-alive || echo 'new connection per request') ${secs}s"
  if ((${#runner[@]})); then
    log_cmd "${runner[@]}" "$ohabin" --no-tui -z "${secs}s" -c "$c" "${ka[@]}" --cacert "${P_TRUST[$name]}" \
      "${ohanet[@]}" --output-format json -o "$ohadir/oha-$mode-c$c$tag.json" https://bench.test/small
  else
    log_cmd oha --no-tui -z "${secs}s" -c "$c" "${ka[@]}" --cacert "${P_TRUST[$name]}" "${ohanet[@]}" \
      --output-format json https://bench.test/small
  fi
  "${runner[@]}" "$ohabin" --no-tui -z "${secs}s" -c "$c" "${ka[@]}" --cacert "${P_TRUST[$name]}" "${ohanet[@]}" \
    --output-format json -o "$ohadir/oha-$mode-c$c$tag.json" https://bench.test/small \
    2>"$res/$name/oha-$mode-c$c$tag.err" || true
  if [ "$ohadir" != "$res/$name" ] && [ -e "$ohadir/oha-$mode-c$c$tag.json" ]; then
    mv -f "$ohadir/oha-$mode-c$c$tag.json" "$res/$name/"
  fi
}

# ---------------------------------------------------------------- measurements
ohanet=() curlnet=() holdnet=() runner=() ohabin=$oha ohadir=$res

for name in "${ready[@]}"; do # one request through each: did the upstream get the header?
  mkdir -p "$res/$name"
  net "$name"
  say "$name: injection check"
  log_cmd "${runner[@]}" curl -sS --cacert "${P_TRUST[$name]}" "${curlnet[@]}" https://bench.test/auth
  "${runner[@]}" curl -sS --max-time 10 --cacert "${P_TRUST[$name]}" "${curlnet[@]}" https://bench.test/auth \
    >"$res/$name/auth" 2>&1 || true
done

# Memory first, before load has grown any allocator: idle, then N idle connections.
for name in "${ready[@]}"; do
  pid=${P_PID[$name]} out=$res/$name
  [ -n "$pid" ] || continue
  net "$name"
  sleep 1
  rss_kib "$pid" >"$out/rss-idle"
  say "$name: holding $nconns idle TLS connections"
  log_cmd "$py" bench/hold_conns.py --target bench.test:443 "${holdnet[@]}" --cafile "${P_TRUST[$name]}" --count "$nconns"
  "$py" "$root/bench/hold_conns.py" --target bench.test:443 "${holdnet[@]}" --cafile "${P_TRUST[$name]}" \
    --count "$nconns" >"$out/held" 2>"$out/held.err" &
  holder=$!
  pids+=("$holder")
  for _ in $(seq 1200); do
    grep -q '^ready' "$out/held" 2>/dev/null && break
    kill -0 "$holder" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1
  if grep -q '^ready' "$out/held" && kill -0 "$pid" 2>/dev/null; then
    rss_kib "$pid" >"$out/rss-held"
  fi
  stop "$holder"
done
sleep 1

for mode in ka new; do
  for c in 1 64; do
    if [ "$mode$c" != ka64 ]; then
      for name in "${ready[@]}"; do oha_point "$name" "$mode" "$c"; done
      continue
    fi
    # The point with a target: several rounds, everyone taking turns in
    # each, so a slow spell of the machine hits every contender alike.
    for ((r = 1; r <= rounds; r++)); do
      tag=$( ((r > 1)) && echo "-r$r" || true)
      for name in "${ready[@]}" "${floors[@]}"; do oha_point "$name" ka 64 "$tag"; done
    done
  done
done

for ((i = 1; i <= big_runs; i++)); do
  for name in "${ready[@]}"; do
    net "$name"
    say "$name: ${big_mib} MiB download ($i/$big_runs)"
    ((i > 1)) || log_cmd "${runner[@]}" curl -sS --cacert "${P_TRUST[$name]}" "${curlnet[@]}" -o /dev/null \
      -w '%{time_starttransfer} %{speed_download} %{size_download} %{http_code}' https://bench.test/big
    "${runner[@]}" curl -sS --max-time 600 --cacert "${P_TRUST[$name]}" "${curlnet[@]}" -o /dev/null \
      -w '%{time_starttransfer} %{speed_download} %{size_download} %{http_code}\n' \
      https://bench.test/big >>"$res/$name/big" 2>>"$res/$name/big.err" || true
  done
done

for name in "${ready[@]}"; do
  [ -z "${P_PID[$name]}" ] || stop "${P_PID[$name]}"
done

# ---------------------------------------------------------------- startup
# Cold wall time of a no-op command in a fresh sandbox, next to the floors:
# bench/startup.py times each command BENCH_STARTS times (after one discarded
# warm-up), the commands taking turns, and writes median/p90 ms to startup.tsv.
startup_reason=""
docker_image=""
if ((starts <= 0)); then
  startup_reason="skipped (BENCH_STARTS=$starts)"
elif [ "$(id -u)" -ne 0 ]; then
  startup_reason="needs root (unshare -n, ip netns, moat run's transparent mode)"
else
  spec=() # LABEL<TAB>ARGS (shell-quoted; a lone ';' separates steps)
  q() { local a s=""; for a in "$@"; do s+="$(printf '%q' "$a") "; done; printf '%s' "${s% }"; }
  spec+=("unshare	$(q unshare -n true)")
  spec+=("netns	$(q ip netns add "$netns") ; $(q ip netns exec "$netns" true) ; $(q ip netns del "$netns")")
  moat_rows=()
  if moat_setup || [ -z "$moat_reason" ]; then # no grant needed for `-- true`, only MOAT_HOME
    spec+=("moat-nft	$(q "$moat" run "$ws" --redirect nft -- true)")
    spec+=("moat-ebpf	$(q "$moat" run "$ws" --redirect ebpf -- true)")
    spec+=("moat-env	$(q "$moat" run --network-mode env "$ws" -- true)")
  else
    for r in moat-nft moat-ebpf moat-env; do moat_rows+=("$r			0	$moat_reason"); done
  fi
  docker_row=""
  if ! command -v docker >/dev/null; then
    docker_row="docker			0	no engine (docker not installed)"
  elif ! timeout 10 docker info >/dev/null 2>&1; then
    docker_row="docker			0	no engine"
  else
    docker_image=${BENCH_DOCKER_IMAGE:-}
    if [ -z "$docker_image" ]; then
      imgs=$(timeout 10 docker image ls --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep -v '<none>' || true)
      docker_image=$(grep -m1 -E '^(docker\.io/(library/)?)?(busybox|alpine|debian|ubuntu):' <<<"$imgs" ||
        head -n 1 <<<"$imgs" || true)
    fi
    if [ -z "$docker_image" ] || ! timeout 10 docker image inspect "$docker_image" >/dev/null 2>&1; then
      docker_row="docker			0	no image present locally${docker_image:+ ($docker_image)}"
      docker_image=""
    else
      spec+=("docker	$(q docker run --rm --network none "$docker_image" true)")
    fi
  fi
  say "startup: ${starts} runs each of ${#spec[@]} commands"
  for line in "${spec[@]}"; do printf '%s\n' "${line#*	}" >>"$work/commands.log"; done # timed by bench/startup.py
  printf '%s\n' "${spec[@]}" | "$py" "$root/bench/startup.py" --runs "$starts" --out "$work/startup.tsv" ||
    startup_reason="bench/startup.py failed"
  for r in "${moat_rows[@]}" ${docker_row:+"$docker_row"}; do printf '%s\n' "$r" >>"$work/startup.tsv"; done
  ip netns del "$netns" 2>/dev/null || true
fi
[ -z "$startup_reason" ] || printf '%s\n' "$startup_reason" >"$work/startup.unavailable"

# ---------------------------------------------------------------- agents
# `moat claude -p "say hello"` next to the same Claude Code run directly with
# the real key, both against moat-agent-standins (testkit's TLS stand-in of
# api.anthropic.com, which answers only that key): bench/agents.py installs
# the pinned CLI from the npm cache with the first `moat claude` run, warms
# each side up once, then times BENCH_AGENT_RUNS runs of each, taking turns,
# and counts the requests each run made (the stand-in's log). Writes
# agents.tsv (or agents.unavailable). Needs the pinned CLI in the npm cache
# scripts/setup.sh fills (npm runs offline) and moat built; else skipped.
agents_reason=""
claude_version=$(sed -n 's|^@anthropic-ai/claude-code@||p' scripts/agent-packages.txt | head -n 1)
npm_cache=${MOAT_AGENT_NPM_CACHE:-/opt/moat-npm-cache}
standins=${BENCH_STANDINS:-$root/target/release/moat-agent-standins}
if ((agent_runs > 0)) && [ -z "${BENCH_STANDINS:-}" ]; then
  # its own build: a testkit that does not build costs this section only
  if [ -z "${BENCH_SKIP_BUILD:-}${BENCH_MOAT:-}" ]; then
    say "building moat-agent-standins (cargo build --release --locked --bin moat-agent-standins)"
    cargo build --release --locked --bin moat-agent-standins >"$work/standins-build.log" 2>&1 ||
      tail -n 15 "$work/standins-build.log" >&2
  fi
  [ -x "$standins" ] || standins=$root/target/debug/moat-agent-standins
fi
if ((agent_runs <= 0)); then
  agents_reason="skipped (BENCH_AGENT_RUNS=$agent_runs)"
elif [ -n "$moat_reason" ]; then
  agents_reason=$moat_reason
elif [ -z "$claude_version" ]; then
  agents_reason="no @anthropic-ai/claude-code pin in scripts/agent-packages.txt"
elif ! command -v npm >/dev/null; then
  agents_reason="npm not found (moat claude installs the CLI with npm; scripts/setup.sh installs it)"
elif ! grep -rqsF "/claude-code-$claude_version.tgz" "$npm_cache/_cacache/index-v5"; then
  agents_reason="@anthropic-ai/claude-code@$claude_version is not in the npm cache $npm_cache (scripts/setup.sh fills it)"
elif [ ! -x "$standins" ]; then
  agents_reason="$standins missing (cargo build -p moat-testkit --bin moat-agent-standins)"
else
  say "agents: moat claude vs claude directly, ${agent_runs} runs each (Claude Code $claude_version)"
  mkdir -p "$work/agents"
  log_cmd "$py" bench/agents.py --moat "${moat#"$root"/}" --standins "${standins#"$root"/}" \
    --version "$claude_version" --runs "$agent_runs" --work "$work/agents" --out "$work/agents.tsv" \
    --npm-cache "$npm_cache"
  if ! "$py" "$root/bench/agents.py" --moat "$moat" --standins "$standins" --version "$claude_version" \
    --runs "$agent_runs" --work "$work/agents" --out "$work/agents.tsv" --npm-cache "$npm_cache"; then
    agents_reason="bench/agents.py failed"
  elif [ "$(cut -f1 "$work/agents.tsv" | head -n 1)" = unavailable ]; then
    agents_reason=$(cut -f2- "$work/agents.tsv" | head -n 1)
  fi
  cat "$work/agents/commands.txt" >>"$work/commands.log" 2>/dev/null || true # timed by bench/agents.py
fi
if [ -n "$agents_reason" ]; then
  printf '%s\n' "$agents_reason" >"$work/agents.unavailable"
  say "agents: n/a ($agents_reason)"
fi

# ---------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -n 1 || true; }
{
  echo "cmdline	$cmdline"
  echo "date	$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc	$(nproc)"
  echo "cpu	$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "memory	$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel	$(uname -sr)"
  echo "load	$load_start (1/5/15 min, before the run)"
  echo "cpuidle	$cpu_idle"
  echo "nginx	$(ver "$nginx" -v | sed 's/^nginx version: //') (worker_processes $nginx_workers)"
  echo "oha	$(ver "$oha" --version)"
  echo "mitmproxy	$(ver "$venv/bin/mitmdump" --version | sed 's/^Mitmproxy: //') (Python $("$py" -c 'import platform; print(platform.python_version())'))"
  if [ -x "$moat" ]; then
    echo "moat	$(ver "$moat" --version) (git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo ', uncommitted changes'))"
  else
    echo "moat	not built"
  fi
  echo "curl	$(ver curl --version | awk '{print $1, $2, $5}')"
  echo "seconds	$secs"
  echo "rounds	$rounds"
  echo "conns	$nconns"
  echo "big_mib	$big_mib"
  echo "big_runs	$big_runs"
  echo "starts	$starts"
  echo "agent_runs	$agent_runs"
  echo "claude	${claude_version:-?}"
  [ -z "$docker_image" ] || echo "docker	$(ver docker --version) (image $docker_image)"
} >"$work/meta.tsv"
redact=""
if [ -n "${moat_url:-}" ]; then
  redact=${moat_url#http://*:}
  redact=${redact%@*}
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
BENCH_REDACT=$redact "$py" "$root/bench/report.py" "$work" >"bench/results/$stamp.md.tmp"
mv "bench/results/$stamp.md.tmp" "bench/results/$stamp.md"
cp "bench/results/$stamp.md" bench/results/latest.md
cat "bench/results/$stamp.md"
say "wrote bench/results/$stamp.md (and latest.md)"
