#!/usr/bin/env bash
# Install what Moat's build, demo and tests need on Debian. Idempotent: only
# missing packages are installed, and apt is only touched when one is missing;
# the AWS stand-in's venv is only built when it is missing or out of date.
set -euo pipefail

packages=(
  ca-certificates  # the system trust store Moat adds to
  curl             # the real client in proxy tests and the demo
  openssl          # s_client (pipelining test), x509 (CA checks)
  dbus             # dbus-run-session: a private session bus for keychain tests
  gnome-keyring    # a real Secret Service implementation
  libsecret-tools  # secret-tool, to check what Moat put in the keychain
  nftables         # libnftables: Moat loads the sandbox netns redirect rules with it (nft: vm-tests)
  iproute2         # ip: inspect routes/links in vm-tests (Moat itself uses netlink)
  iputils-ping     # ping: vm-tests check that ICMP cannot leave the sandbox
  python3          # raw DNS/UDP/IPv6 clients inside the sandbox in vm-tests
  python3-venv     # the AWS stand-in's venv below, where python3 is Debian's
  python3-requests # a real client (requests) in vm-tests
  git              # git over https (git http-backend) in vm-tests
  openjdk-17-jdk-headless  # Java HttpClient in vm-tests (the truststore path)
  clang            # builds the eBPF redirector (ebpf/redirect.bpf.c) in build.rs
  llvm             # llvm-objdump/llvm-strip for looking at that object
  libbpf-dev       # bpf/bpf_helpers.h, bpf/bpf_endian.h for the eBPF redirector
  bpftool          # vm-tests/ebpf.rs checks no program is left attached
  docker.io        # a private engine for vm-tests/docker.rs (scripts/test-dockerd.sh)
  busybox-static   # the userland of the registry-free test image (scripts/test-image.sh)
  keyutils         # keyctl: vm-tests/containment.rs checks the session keyring stays out of reach
  gcc              # builds the escape probes of vm-tests/containment.rs (open_by_handle_at, clone3)
  openssh-server   # sshd: the real SSH servers of vm-tests/ssh.rs (started by the tests, in their netns)
  openssh-client   # ssh, ssh-agent, ssh-add, ssh-keygen: the real clients of vm-tests/ssh.rs
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  # No package's service may start on this host (sshd would listen on :22;
  # the tests start their own servers): policy-rc.d says no while apt runs,
  # unless the machine already has one.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$policy" ] || $sudo rm -f "$policy"
fi

# The AWS stand-in (testkit/src/aws.rs): moto's server, the aws CLI and boto3
# in a venv of their own, pinned by scripts/aws-requirements.txt. Skipped when
# the venv was made from the same pins and still imports them. Built on
# Debian's /usr/bin/python3: the sandbox hides /root and /home, so a venv on
# a pyenv python there would not run inside it (vm-tests/aws.rs runs the
# aws CLI and boto3 in the sandbox).
venv="${MOAT_AWS_VENV:-/opt/moat-aws-venv}"
pins="$(dirname "$0")/aws-requirements.txt"
py=/usr/bin/python3
if ! { cmp -s "$pins" "$venv/.moat-pins" \
       && [ "$(readlink -f "$venv/bin/python")" = "$(readlink -f "$py")" ] \
       && "$venv/bin/python" -c 'import moto.server, boto3, awscli' 2>/dev/null; }; then
  echo "setup: installing moto, awscli and boto3 into $venv" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -n "$(ls -A "$venv" 2>/dev/null)" ] && [ ! -e "$venv/pyvenv.cfg" ]; then
    echo "setup: $venv is not empty and not a venv; set MOAT_AWS_VENV elsewhere" >&2
    exit 1
  fi
  $sudo mkdir -p "$venv"
  $sudo chown "$(id -u):$(id -g)" "$venv"
  "$py" -m venv --clear "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$pins"
  cp "$pins" "$venv/.moat-pins"
fi

# The agent CLIs of vm-tests/agents.rs (the real npm packages, pinned by
# scripts/agent-packages.txt) in an npm cache of their own, so the tests'
# `moat claude|codex|gemini` install them with npm offline (npm_config_offline)
# and nothing in a test reaches the registry. Skipped when the cache was
# filled from the same pins.
cache="${MOAT_AGENT_NPM_CACHE:-/opt/moat-npm-cache}"
agent_pins="$(dirname "$0")/agent-packages.txt"
if ! cmp -s "$agent_pins" "$cache/.moat-pins"; then
  if ! command -v npm >/dev/null; then
    # Debian's nodejs comes without npm; a NodeSource nodejs has its own.
    echo "setup: installing nodejs and npm" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "setup: caching the agent CLIs' npm packages in $cache" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p "$cache"
  $sudo chown "$(id -u):$(id -g)" "$cache"
  scratch=$(mktemp -d)
  grep -v '^#' "$agent_pins" | while read -r spec; do
    [ -n "$spec" ] || continue
    npm install --no-audit --no-fund --loglevel=error --cache "$cache" --prefix "$scratch/$spec" "$spec" >/dev/null
  done
  rm -rf "$scratch"
  cp "$agent_pins" "$cache/.moat-pins"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
