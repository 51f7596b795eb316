#!/usr/bin/env bash
# moat-test-base:latest, the image vm-tests/docker.rs runs in, made without a
# registry: a rootfs from this host's files (busybox-static, curl, python3 and
# their shared libraries, glibc) `docker import`ed. A stand-in `apt-get`
# records what a generated Dockerfile asks for, so image builds stay offline.
# Idempotent: nothing is done when the image exists and was made by this
# version of the script (MOAT_TEST_IMAGE_REBUILD=1 forces). Uses DOCKER_HOST
# as given (scripts/test-dockerd.sh prints one).
set -euo pipefail
image=moat-test-base:latest
version=$(sha256sum "$0" | cut -c1-16)
if [ -z "${MOAT_TEST_IMAGE_REBUILD:-}" ] &&
  [ "$(docker image inspect --format '{{index .Config.Labels "io.moat.test-image"}}' "$image" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
command -v busybox >/dev/null || { echo "test-image: busybox-static missing (scripts/setup.sh installs it)" >&2; exit 1; }
root=$(mktemp -d /tmp/moat-test-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc/ssl/certs,tmp,proc,sys,dev,workspace,var/lib,root}
# Debian's merged /usr, as on the host, so library paths from ldd resolve.
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
chmod 1777 "$root/tmp"
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
copy() { # a host file with its directory, following symlinks' targets too
  local f=$1
  [ -e "$f" ] || return 0
  mkdir -p "$root$(dirname "$f")"
  cp -a "$f" "$root$f"
  if [ -L "$f" ]; then copy "$(readlink -f "$f")"; fi
}
# ssh, ssh-add, ssh-keygen and git (its exec path is /usr/lib/git-core): the
# clients of vm-tests/ssh.rs.
bins=(/usr/bin/curl /usr/bin/python3 /usr/bin/ssh /usr/bin/ssh-add /usr/bin/ssh-keygen /usr/bin/git /usr/lib/git-core/git)
py=$(readlink -f /usr/bin/python3)
bins+=("$py")
for b in "${bins[@]}"; do
  copy "$b"
  for lib in $(ldd "$b" | grep -o '/[^ ]*'); do copy "$lib"; done
done
# glibc's pieces loaded at run time (NSS, the dynamic loader under all names,
# the compatibility libraries a prebuilt binary such as Claude Code links).
for f in /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/librt.so.1 /lib/x86_64-linux-gnu/libpthread.so.0 /lib/x86_64-linux-gnu/libdl.so.2 /lib/x86_64-linux-gnu/libm.so.6 /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_dns.so.2 /lib/x86_64-linux-gnu/libresolv.so.2; do copy "$f"; done
# Python's standard library (and its compiled modules) without tests.
pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
tar -C / --exclude="python$pyver/test" --exclude='__pycache__' --exclude='site-packages' \
  --exclude='dist-packages' -cf - "usr/lib/python$pyver" | tar -C "$root" -xf -
for lib in $(find "/usr/lib/python$pyver/lib-dynload" -name '*.so' -exec ldd {} \; 2>/dev/null | grep -o '/[^ ]*' | sort -u); do copy "$lib"; done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
cat >"$root/usr/bin/apt-get" <<'APT'
#!/bin/sh
# Test stand-in: no network here; record what was asked.
echo "apt-get $*" >>/var/lib/moat-test-apt.log
APT
chmod 755 "$root/usr/bin/apt-get"
tar -C "$root" -cf - . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/sh"]' --change "LABEL io.moat.test-image=$version" - "$image" >/dev/null
echo "test-image: built $image" >&2
