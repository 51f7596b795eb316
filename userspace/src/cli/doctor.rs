//! `moat doctor`: what this machine can do, which mode `moat run` will use,
//! and how to fix what is missing. Every probe is read-only or happens in a
//! throwaway child process's own namespaces; nothing on the host changes.

use anyhow::Result;
use serde::Serialize;

use super::Ctx;
use super::output::outln;

#[derive(Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    /// What to do when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(name: &'static str, result: Result<String, (String, String)>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
            fix: None,
        },
        Err((detail, fix)) => Check {
            name,
            ok: false,
            detail,
            fix: Some(fix),
        },
    }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut checks = Vec::new();
    #[cfg(target_os = "linux")]
    let (transparent, mode_reason) = linux::checks(&mut checks);
    #[cfg(not(target_os = "linux"))]
    let (transparent, mode_reason) = (false, "the transparent sandbox is Linux-only".to_owned());
    checks.push(keychain(ctx));
    checks.push(docker());

    let mode = if transparent { "transparent" } else { "env" };
    if ctx.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "checks": checks,
                "network_mode": mode,
                "reason": mode_reason,
            }))?
        )?;
        return Ok(());
    }
    for c in &checks {
        let mark = if c.ok { "✓" } else { "✗" };
        outln!("{mark} {:<16} {}", c.name, c.detail)?;
        if let Some(fix) = &c.fix {
            outln!("  {:<16} fix: {fix}", "")?;
        }
    }
    outln!()?;
    outln!("moat run will use --network-mode {mode}: {mode_reason}")?;
    Ok(())
}

fn keychain(ctx: &Ctx) -> Check {
    #[cfg(target_os = "linux")]
    use crate::store::keys::KeyBackend as _;
    let home = match ctx.home() {
        Ok(h) => h,
        Err(e) => {
            return check(
                "keychain",
                Err((
                    e.to_string(),
                    "set MOAT_HOME to a writable directory".into(),
                )),
            );
        }
    };
    let file = home.key_file();
    let file_note = if file.exists() {
        format!("; a key file exists at {}", file.display())
    } else {
        String::new()
    };
    match crate::store::Policy::from_env() {
        Err(e) => {
            return check(
                "keychain",
                Err((
                    e.to_string(),
                    "set MOAT_KEY_BACKEND to auto, keyring or file (or unset it)".into(),
                )),
            );
        }
        Ok(crate::store::Policy::File) => return key_file(&home),
        Ok(_) => {}
    }
    #[cfg(target_os = "linux")]
    {
        let backend = crate::store::keyring::KeyringBackend::new(home.owner());
        check(
            "keychain",
            match backend.load() {
                Ok(Some(_)) => Ok(format!("Secret Service reachable, holds Moat's key{file_note}")),
                Ok(None) => Ok(format!("Secret Service reachable, no Moat key yet{file_note}")),
                Err(e) => Err((
                    format!("{e}{file_note}"),
                    "run inside a desktop session (or dbus-run-session with gnome-keyring), or use MOAT_KEY_BACKEND=file for a 0600 key file".into(),
                )),
            },
        )
    }
    #[cfg(not(target_os = "linux"))]
    check(
        "keychain",
        Ok(format!("not checked on this platform{file_note}")),
    )
}

/// `MOAT_KEY_BACKEND=file`: the keychain is not used, so the row is about
/// the key file (created 0600 by the first grant).
fn key_file(home: &crate::home::MoatHome) -> Check {
    use crate::store::keys::KeyBackend as _;
    let backend = crate::store::keys::FileBackend::new(home.clone());
    let path = home.key_file();
    check(
        "keychain",
        match backend.load() {
            Ok(Some(_)) => Ok(format!(
                "file backend in use (MOAT_KEY_BACKEND=file): Moat's key is in {} (0600); the keychain is not used",
                path.display()
            )),
            Ok(None) => Ok(format!(
                "file backend in use (MOAT_KEY_BACKEND=file): the first grant creates {} (0600); the keychain is not used",
                path.display()
            )),
            Err(e) => Err((
                format!("MOAT_KEY_BACKEND=file: {e}"),
                "fix the key file as the message says (it holds the key of every credential: never delete it while credentials exist)".into(),
            )),
        },
    )
}

/// Does a Docker engine answer `GET /_ping` on its unix socket?
fn docker() -> Check {
    use std::io::{Read, Write};
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let Some(path) = host.strip_prefix("unix://") else {
        return check(
            "docker",
            Ok(format!(
                "DOCKER_HOST={host} (not probed: only unix sockets are)"
            )),
        );
    };
    let answer = std::os::unix::net::UnixStream::connect(path).and_then(|mut s| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    });
    check(
        "docker",
        match answer {
            Ok(text) if text.starts_with("HTTP/1.") && text.contains(" 200 ") => {
                Ok(format!("engine answers at {path} (--runtime docker)"))
            }
            Ok(text) => Err((
                format!("{path} answered: {}", text.lines().next().unwrap_or("")),
                "check the Docker engine's logs".into(),
            )),
            Err(e) => Err((
                format!("no engine at {path} ({e})"),
                "start Docker (or set DOCKER_HOST); only needed for --runtime docker".into(),
            )),
        },
    )
}

#[cfg(target_os = "linux")]
mod linux {
    use super::{Check, check};
    use nix::sched::CloneFlags;

    /// Run `f` in a forked child (its own namespaces, its own fate); did it
    /// return true? The caller is single-threaded here (no runtime yet).
    fn in_child(f: impl FnOnce() -> bool) -> bool {
        // SAFETY: moat doctor runs these probes before starting any thread.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => std::process::exit(if f() { 0 } else { 1 }),
            Ok(nix::unistd::ForkResult::Parent { child }) => matches!(
                nix::sys::wait::waitpid(child, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            ),
            Err(_) => false,
        }
    }

    pub fn checks(out: &mut Vec<Check>) -> (bool, String) {
        let root = nix::unistd::geteuid().is_root();
        // Without root, `moat run` picks the rootless sandbox exactly when
        // this probe passes (sandbox/probe.rs): doctor reports the same answer.
        let rootless = if root {
            Err("not needed as root".to_owned())
        } else {
            crate::sandbox::probe::userns()
        };
        out.push(check(
            "privileges",
            Ok(match (root, &rootless) {
                (true, _) => "root: transparent mode with nft or eBPF".into(),
                (false, Ok(())) => {
                    "not root: transparent mode in a user namespace (rootless; --redirect nft)"
                        .into()
                }
                (false, Err(_)) => {
                    "not root, no usable user namespaces: transparent mode needs sudo; env mode works as is"
                        .into()
                }
            }),
        ));
        let netns = if root {
            in_child(|| nix::sched::unshare(CloneFlags::CLONE_NEWNET).is_ok())
        } else {
            rootless.is_ok()
        };
        out.push(check(
            "netns",
            match (netns, root) {
                (true, true) => Ok("a new network namespace can be created".into()),
                (true, false) => {
                    Ok("a new network namespace can be created inside a user namespace".into())
                }
                (false, true) => Err((
                    "unshare(CLONE_NEWNET) failed".into(),
                    "the kernel needs CONFIG_NET_NS".into(),
                )),
                (false, false) => Err((
                    "needs root or a usable user namespace (see below)".into(),
                    "sudo moat run …, or enable unprivileged user namespaces".into(),
                )),
            },
        ));
        out.push(check(
            "user namespaces",
            match (&rootless, root) {
                (_, true) => Ok("not needed as root".into()),
                (Ok(()), false) => Ok(
                    "unprivileged user namespaces work (with network and mount namespaces)".into(),
                ),
                (Err(why), false) => Err((
                    why.clone(),
                    "sysctl kernel.unprivileged_userns_clone=1 (and user.max_user_namespaces > 0; \
                     on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0); or run with sudo"
                        .into(),
                )),
            },
        ));
        let lib = crate::sandbox::libnft::available();
        let soname = crate::sandbox::libnft::SONAME;
        // Test-loaded in a forked child's own network namespace (no thread
        // has started yet), never in the host's; without root, in a user
        // namespace, as the rootless sandbox does.
        let loads = lib.is_ok()
            && netns
            && in_child(|| {
                (root || nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok())
                    && nix::sched::unshare(CloneFlags::CLONE_NEWNET).is_ok()
                    && crate::sandbox::libnft::load(&crate::sandbox::nft::ruleset(1, 2)).is_ok()
            });
        out.push(check(
            "nftables",
            match (lib, netns, loads) {
                (Err(why), _, _) => Err((
                    format!("{soname} cannot be loaded: {why}"),
                    "apt-get install nftables (it brings libnftables), or use --network-mode env"
                        .into(),
                )),
                (Ok(()), false, _) => Ok(format!(
                    "{soname} (rules not test-loaded: no network namespace to load them in)"
                )),
                (Ok(()), true, true) => Ok(format!(
                    "{soname}: the sandbox ruleset loads in a scratch namespace"
                )),
                (Ok(()), true, false) => Err((
                    format!("{soname}: the sandbox ruleset does not load"),
                    "modprobe nf_tables nft_redir nft_reject_ipv6 (kernel with nf_tables nat)"
                        .into(),
                )),
            },
        ));
        let cgroup = crate::sandbox::cgroup::cgroup2_mount();
        let built = crate::sandbox::bpf::is_built();
        out.push(check(
            "cgroup2 + BPF",
            match (&cgroup, built) {
                (Ok(m), true) => Ok(format!(
                    "cgroup2 at {}; eBPF redirector built in (--redirect ebpf, as root)",
                    m.display()
                )),
                (Ok(m), false) => Err((
                    format!(
                        "cgroup2 at {}, but this moat was built without clang",
                        m.display()
                    ),
                    "apt-get install clang libbpf-dev and rebuild, or use --redirect nft".into(),
                )),
                (Err(e), _) => Err((e.to_string(), "mount cgroup2, or use --redirect nft".into())),
            },
        ));
        match (root, &rootless) {
            (true, _) if netns && loads => {
                (true, "root, network namespaces and nftables work".into())
            }
            (true, _) => (
                false,
                "root, but the network namespace or nftables check failed (see above)".into(),
            ),
            (false, Ok(())) => (
                true,
                "not root, but unprivileged user namespaces work: the rootless sandbox".into(),
            ),
            (false, Err(why)) => (
                false,
                format!("not root, and {why} (sudo moat run … gives the transparent sandbox)"),
            ),
        }
    }
}
