#!/usr/bin/env bash
# Type-checks Moat for macOS (x86_64-apple-darwin) with clippy, from Linux:
# the env-mode code path must build there (issue 4). There is no macOS SDK
# here, so the two C files in the dependency tree that `cargo check` still
# compiles (ring's and signal-hook's build scripts) get clang with a few
# stand-in headers: enough to type-check, never to link or run. Skips, and
# says so, when the target's standard library is not installed
# (rustup target add x86_64-apple-darwin).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-apple-darwin
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$target" ]; then
  echo "check-macos: skipped: the $target standard library is not installed (rustup target add $target)" >&2
  exit 0
fi
if ! command -v clang >/dev/null; then
  echo "check-macos: skipped: clang is not installed" >&2
  exit 0
fi
inc=$(mktemp -d)
trap 'rm -rf "$inc"' EXIT
cat >"$inc/TargetConditionals.h" <<'H'
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_TV 0
#define TARGET_OS_VISION 0
#define TARGET_OS_SIMULATOR 0
#define TARGET_OS_EMBEDDED 0
#define TARGET_OS_MACCATALYST 0
H
cat >"$inc/string.h" <<'H'
#include <stddef.h>
void *memcpy(void *, const void *, size_t);
void *memmove(void *, const void *, size_t);
void *memset(void *, int, size_t);
int memcmp(const void *, const void *, size_t);
size_t strlen(const char *);
H
cat >"$inc/stdlib.h" <<'H'
#include <stddef.h>
void abort(void);
H
echo '#define assert(x) ((void)0)' >"$inc/assert.h"
cat >"$inc/signal.h" <<'H'
#include <stddef.h>
typedef int pid_t;
typedef unsigned int uid_t;
typedef struct { int si_signo, si_errno, si_code; pid_t si_pid; uid_t si_uid; int si_status; } siginfo_t;
#define SI_USER 0x10001
#define SI_QUEUE 0x10002
#define SIGCHLD 20
#define CLD_EXITED 1
#define CLD_KILLED 2
#define CLD_DUMPED 3
#define CLD_TRAPPED 4
#define CLD_STOPPED 5
#define CLD_CONTINUED 6
H
export CC_x86_64_apple_darwin=clang
export CFLAGS_x86_64_apple_darwin="--target=$target -ffreestanding -nostdlibinc -isystem $inc"
export CARGO_TARGET_DIR="$PWD/target/check-macos"
cargo clippy --locked --target "$target" -p moat -- -D warnings
echo "check-macos: moat type-checks for $target"
