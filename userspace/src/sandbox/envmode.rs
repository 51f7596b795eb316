//! `--network-mode env`: no namespaces. The command runs as a normal child
//! with `HTTP_PROXY`/`HTTPS_PROXY` pointing at Moat's explicit proxy on
//! 127.0.0.1, guarded by a per-run password, and the CA trust variables set.
//!
//! This is the macOS path and `--network-mode env` on Linux. It protects
//! only programs that honour the proxy variables; the command can still open
//! direct connections (without credentials: the real tokens never leave
//! Moat), and it sees the host's filesystem, except, on Linux, the masks
//! (`$MOAT_HOME`, the agent socket, credential files) that
//! `moat __env-init` covers before it execs the command (`envinit`).

use std::ffi::OsString;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::net::front::Front;

pub struct EnvRunSpec {
    /// The run's proxy (built once by the session).
    pub proxy: Arc<dyn Front>,
    pub env: Vec<(OsString, OsString)>,
    pub workspace: std::path::PathBuf,
    pub command: Vec<OsString>,
    /// Linux: what to mask (`None`: nothing, `--insecure-env`).
    pub masking: Option<Masking>,
}

/// What `moat __env-init` covers before it execs the command.
pub struct Masking {
    pub masks: Vec<std::path::PathBuf>,
    /// An empty directory and an empty file to bind over them.
    pub empty: (std::path::PathBuf, std::path::PathBuf),
    /// Under sudo: the caller's uid and gid.
    pub run_as: Option<(u32, u32)>,
}

/// The proxy variables for a proxy at `url` (every spelling tools read).
pub fn proxy_env(url: &str) -> Vec<(OsString, OsString)> {
    let no_proxy = "localhost,127.0.0.1,::1";
    [
        ("HTTP_PROXY", url),
        ("HTTPS_PROXY", url),
        ("http_proxy", url),
        ("https_proxy", url),
        ("ALL_PROXY", url),
        ("all_proxy", url),
        ("NO_PROXY", no_proxy),
        ("no_proxy", no_proxy),
        // Node 20.x's fetch ignores the variables unless asked.
        ("NODE_USE_ENV_PROXY", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect()
}

/// Run the command with the proxy up; its exit code (128+N for signal N,
/// 126/127 when it cannot be run / is not found).
pub fn run(spec: EnvRunSpec) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let rt = crate::net::runtime::runtime()?;
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let password = URL_SAFE_NO_PAD.encode(secret);
    let proxy = spec.proxy;
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("listening on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        tokio::spawn(proxy.explicit(listener, password.clone()));
        anyhow::Ok(addr)
    })?;
    let url = format!("http://moat:{password}@{addr}");

    let Some(program) = spec.command.first().cloned() else {
        anyhow::bail!("no command");
    };
    // The command runs as Moat's own user: without this it could read the
    // tokens out of Moat's memory (/proc/PID/mem, ptrace).
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false).context("PR_SET_DUMPABLE")?;
    let mut cmd = match spec.masking {
        #[cfg(target_os = "linux")]
        Some(m) => {
            let mut cmd = Command::new(std::env::current_exe().context("finding moat")?);
            cmd.args(super::envinit::to_args(&super::envinit::EnvInitArgs {
                mask: m.masks,
                empty: Some(m.empty),
                run_as: m.run_as,
                command: spec.command,
            }));
            cmd
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => anyhow::bail!("env mode masks are Linux-only"),
        None => {
            let mut cmd = Command::new(&program);
            cmd.args(&spec.command[1..]);
            cmd
        }
    };
    cmd.current_dir(&spec.workspace)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .envs(proxy_env(&url).iter().map(|(k, v)| (k, v)));
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let name = program.to_string_lossy();
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                eprintln!("moat: {name}: command not found");
                127
            } else {
                eprintln!("moat: {name}: cannot execute: {e}");
                126
            });
        }
    };

    // Ctrl-C reaches the command from the terminal; Moat stays up until the
    // command exits. Signals other processes send to Moat are passed on,
    // from before `started` lets `moat stop` know the run.
    #[cfg(unix)]
    super::signals::forward_to(child.id() as i32)?;
    crate::runs::started();
    let status = child.wait()?;
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
    #[cfg(not(unix))]
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proxy_spelling_and_node_opt_in() {
        let env = proxy_env("http://moat:pw@127.0.0.1:1234");
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(get(k).as_deref(), Some("http://moat:pw@127.0.0.1:1234"));
        }
        assert_eq!(get("NODE_USE_ENV_PROXY").as_deref(), Some("1"));
        assert!(get("NO_PROXY").unwrap().contains("127.0.0.1"));
    }
}
