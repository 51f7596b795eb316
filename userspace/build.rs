//! Compiles the eBPF redirector (`ebpf/redirect.bpf.c`) with clang into
//! `$OUT_DIR/redirect.bpf.o`, which `sandbox::bpf` embeds.
//!
//! Without clang (or without libbpf's headers) the rest of Moat still builds:
//! an empty object is embedded, a cargo warning says why, and
//! `--redirect ebpf` fails at run time with the same advice. A C error with
//! the tools present fails the build: that is a bug to fix, not to hide.

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "../ebpf/redirect.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("redirect.bpf.o");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        write_empty(&object);
        return;
    }
    if let Err(why) = compile(Path::new(SOURCE), &object) {
        println!(
            "cargo:warning=eBPF redirector not built ({why}); `--redirect ebpf` will not work: \
             install clang and libbpf-dev (apt-get install -y clang llvm libbpf-dev) and rebuild"
        );
        write_empty(&object);
    }
}

/// `Err` (a reason) when the tools are missing; panics on a C error.
fn compile(source: &Path, object: &Path) -> Result<(), String> {
    let clang = std::env::var_os("CLANG").unwrap_or_else(|| "clang".into());
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"]);
    // Debian/Ubuntu keep <asm/types.h> (needed by <linux/bpf.h>) under the
    // multiarch directory, which `-target bpf` does not search.
    if let Ok(arch) = std::env::var("CARGO_CFG_TARGET_ARCH") {
        let multiarch = PathBuf::from(format!("/usr/include/{arch}-linux-gnu"));
        if multiarch.is_dir() {
            cmd.arg("-I").arg(multiarch);
        }
    }
    cmd.arg("-c").arg(source).arg("-o").arg(object);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => return Err(format!("cannot run {}: {e}", clang.to_string_lossy())),
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("bpf/bpf_helpers.h' file not found")
        || stderr.contains("linux/bpf.h' file not found")
    {
        return Err("libbpf-dev headers missing".into());
    }
    panic!("clang failed on {}:\n{stderr}", source.display());
}

fn write_empty(object: &Path) {
    std::fs::write(object, []).expect("write to OUT_DIR");
}
