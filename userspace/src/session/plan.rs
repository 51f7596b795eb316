//! A run's plan, decided without I/O: flags and `moat.yaml` → the network
//! mode, the runtime, the ports, the grants, the command, the environment
//! and the host services. What the host is (Linux, root, user namespaces)
//! comes in as a [`Host`], so every choice is unit-tested.

use std::ffi::OsString;

use anyhow::{Result, bail};

use crate::config::{Config, HOST_ALIAS};
use crate::providers::HostPattern;
use crate::proxy::Policy;
use crate::proxy::rules::HostRule;

/// How the command's traffic reaches the proxy.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Mode {
    Transparent,
    Env,
}

/// How transparent mode redirects connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Redirect {
    Nft,
    Ebpf,
}

/// Where the command runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum RuntimeKind {
    Native,
    Docker,
}

/// What the machine allows, for the choices below.
pub struct Host<'a> {
    pub linux: bool,
    pub root: bool,
    /// Can this (unprivileged) process build a rootless sandbox? (A forked
    /// probe: asked only when it matters.)
    pub userns: &'a dyn Fn() -> Result<(), String>,
}

impl Host<'_> {
    /// This machine, with `userns` as its user-namespace probe
    /// ([`crate::sandbox::probe::userns`]).
    pub fn this(userns: &dyn Fn() -> Result<(), String>) -> Host<'_> {
        Host {
            linux: cfg!(target_os = "linux"),
            root: nix::unistd::geteuid().is_root(),
            userns,
        }
    }
}

/// Variables passed through from the host; everything else stays outside.
pub const PASS: &[&str] = &[
    "PATH",
    "TERM",
    "LANG",
    "TZ",
    "COLORTERM",
    "USER",
    "LOGNAME",
    "SHELL",
    "NO_COLOR",
];

/// Variables pointing TLS clients at the merged bundle inside.
pub const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "AWS_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
];

/// The flag (or `MOAT_RUNTIME`) wins over moat.yaml's `runtime:`.
pub fn runtime(flag: Option<RuntimeKind>, config: &Config) -> RuntimeKind {
    match (flag, config.runtime.as_deref()) {
        (Some(r), _) => r,
        (None, Some("docker")) => RuntimeKind::Docker,
        (None, _) => RuntimeKind::Native,
    }
}

/// The network mode of a native run: transparent when it can work here
/// (Linux, as root or with unprivileged user namespaces), else env only
/// with `insecure_env`. Without root, also the line that says which and why
/// when the user did not choose (as root transparent is the quiet default).
pub fn choose_mode(
    asked: Option<Mode>,
    redirect: Redirect,
    insecure_env: bool,
    host: &Host,
) -> Result<(Mode, Option<String>)> {
    if !host.linux {
        return match asked {
            Some(Mode::Transparent) => {
                bail!("--network-mode transparent is Linux-only; use --network-mode env")
            }
            _ => Ok((Mode::Env, None)),
        };
    }
    if host.root {
        return Ok((asked.unwrap_or(Mode::Transparent), None));
    }
    if redirect == Redirect::Ebpf && asked != Some(Mode::Env) {
        bail!(
            "--redirect ebpf needs root (it attaches eBPF programs to a cgroup): \
             use sudo moat run …, or --redirect nft, which works without root"
        );
    }
    if asked == Some(Mode::Env) {
        return Ok((Mode::Env, None));
    }
    match (asked, (host.userns)()) {
        (Some(_), Ok(())) => Ok((Mode::Transparent, None)),
        (Some(_), Err(why)) => bail!(
            "--network-mode transparent needs root or unprivileged user namespaces, \
             and {why}. Use sudo moat run …, enable user namespaces, or \
             --network-mode env"
        ),
        (None, Ok(())) => Ok((
            Mode::Transparent,
            Some(
                "network mode transparent, rootless (in a user namespace). \
                 Pass --network-mode to silence this."
                    .into(),
            ),
        )),
        (None, Err(why)) if insecure_env => Ok((
            Mode::Env,
            Some(format!(
                "network mode env (HTTP_PROXY): the transparent sandbox needs root \
                 (sudo moat run …) or unprivileged user namespaces, and {why}."
            )),
        )),
        (None, Err(why)) => bail!(
            "the sandbox needs root (sudo moat run …) or unprivileged user namespaces, and \
             {why}. Without them Moat can neither enforce egress nor hide its key and the \
             credential files from the command. Use sudo, enable user namespaces, or pass \
             --insecure-env to run in env mode anyway (the command can then read every \
             stored credential)"
        ),
    }
}

/// `--runtime docker` runs transparent, with the nft redirect, as root.
pub fn docker_mode(
    asked: Option<Mode>,
    redirect: Redirect,
    host: &Host,
    config: &Config,
) -> Result<Mode> {
    if !host.linux {
        bail!("--runtime docker is Linux-only in this build; use --network-mode env");
    }
    if asked == Some(Mode::Env) {
        bail!("--runtime docker always redirects transparently; drop --network-mode env");
    }
    if redirect == Redirect::Ebpf {
        bail!(
            "--runtime docker redirects with nft inside the container's namespace; drop --redirect ebpf"
        );
    }
    if !host.root {
        bail!(
            "--runtime docker needs root (sudo moat run --runtime docker …): Moat enters the \
             container's network namespace to install its redirect"
        );
    }
    if config.image.is_some() && !config.dependencies.is_empty() {
        bail!("moat.yaml: image: and dependencies: exclude each other");
    }
    Ok(Mode::Transparent)
}

/// Can env mode mask (a mount namespace, through a user namespace unless
/// Moat runs as root)? Where it cannot, only with `insecure_env`, which
/// gives `Ok((false, what it means))`; `moat_home` is named there.
pub fn env_masking(
    host: &Host,
    insecure_env: bool,
    moat_home: &std::path::Path,
) -> Result<(bool, Option<String>)> {
    let why = if !host.linux {
        "masks need Linux mount namespaces".to_string()
    } else if host.root {
        return Ok((true, None));
    } else {
        match (host.userns)() {
            Ok(()) => return Ok((true, None)),
            Err(why) => why,
        }
    };
    if !insecure_env {
        bail!(
            "env mode cannot mask $MOAT_HOME and the credential files here: {why}. Pass \
             --insecure-env to run anyway, knowing the command can read Moat's key and \
             every stored credential"
        );
    }
    Ok((
        false,
        Some(format!(
            "--insecure-env: nothing is masked ({why}): the command can read Moat's key \
             and every stored credential in {}",
            moat_home.display()
        )),
    ))
}

/// `HOSTPORT:PORT` or `PORT`.
pub fn parse_publish(spec: &str) -> Result<(u16, u16)> {
    let port = |s: &str| {
        s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            anyhow::anyhow!("-p {spec}: '{s}' is not a port (expected HOSTPORT:PORT or PORT)")
        })
    };
    match spec.split_once(':') {
        Some((h, p)) => Ok((port(h)?, port(p)?)),
        None => {
            let p = port(spec)?;
            Ok((p, p))
        }
    }
}

/// The `-p` flags, then moat.yaml's `ports:` unless a flag already
/// publishes that host port.
pub fn publish(flags: &[String], config: &Config) -> Result<Vec<(u16, u16)>> {
    let mut publish = flags
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<Vec<_>>>()?;
    for &(h, c) in &config.ports {
        if !publish.iter().any(|(ph, _)| *ph == h) {
            publish.push((h, c));
        }
    }
    Ok(publish)
}

/// moat.yaml's grants, then the flags' (each once).
pub fn grant_names(config: &Config, flags: &[String]) -> Vec<String> {
    let mut names = config.grants.clone();
    for g in flags {
        if !names.contains(g) {
            names.push(g.clone());
        }
    }
    names
}

/// The command: the flag's, moat.yaml's, else a shell (`/bin/sh` in a
/// container, the user's `shell` natively).
pub fn command(
    flag: Vec<OsString>,
    config: &Config,
    runtime: RuntimeKind,
    shell: Option<OsString>,
) -> Vec<OsString> {
    if !flag.is_empty() {
        flag
    } else if !config.command.is_empty() {
        config.command.clone()
    } else if runtime == RuntimeKind::Docker {
        vec!["/bin/sh".into()]
    } else {
        vec![shell.unwrap_or_else(|| "/bin/sh".into())]
    }
}

/// The allowlisted variables of `host_env` (plus HOME, as given).
pub fn base_env(
    host_env: impl IntoIterator<Item = (OsString, OsString)>,
    home: OsString,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = host_env
        .into_iter()
        .filter(|(k, _)| {
            let name = k.to_string_lossy();
            PASS.contains(&name.as_ref()) || name.starts_with("LC_")
        })
        .collect();
    env.push(("HOME".into(), home));
    env
}

/// Later entries win over earlier ones with the same name.
pub fn merged(
    mut env: Vec<(OsString, OsString)>,
    extra: Vec<(OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != &k);
        env.push((k, v));
    }
    env
}

/// The policy from moat.yaml's `network:`, plus the host's loopback services
/// named in `network.host`, reachable as host.moat.internal:PORT (nothing
/// else of the host is); the `--resolve` entries that make them so.
pub fn host_services(config: &Config, resolve: &[String]) -> Result<(Vec<String>, Policy)> {
    let mut resolve = resolve.to_vec();
    let mut policy = Policy {
        network: config.network.policy.clone(),
        ..Policy::default()
    };
    policy
        .network
        .reserved
        .push(HostPattern::parse(HOST_ALIAS)?);
    for port in &config.network.host_ports {
        resolve.push(format!("{HOST_ALIAS}:{port}=127.0.0.1:{port}"));
        let pattern = HostPattern::parse(&format!("{HOST_ALIAS}:{port}"))?;
        policy.allow_restricted.push(pattern.clone());
        policy.network.rules.push(HostRule {
            host: pattern,
            routes: Vec::new(),
        });
    }
    Ok((resolve, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::parse(yaml, std::path::Path::new("/w/moat.yaml")).unwrap()
    }

    fn host(root: bool, userns: &dyn Fn() -> Result<(), String>) -> Host<'_> {
        Host {
            linux: true,
            root,
            userns,
        }
    }

    #[test]
    fn the_mode_is_transparent_where_it_can_work_and_env_only_when_asked_or_allowed() {
        let works = || Ok(());
        let refused = || Err("this system refuses them".to_string());
        let never = || -> Result<(), String> { panic!("probed as root") };
        let (t, e) = (Mode::Transparent, Mode::Env);
        let pick = |asked, insecure, h: &Host| choose_mode(asked, Redirect::Nft, insecure, h);
        assert_eq!(pick(None, false, &host(true, &never)).unwrap(), (t, None));
        assert_eq!(
            pick(Some(e), false, &host(true, &never)).unwrap(),
            (e, None)
        );
        let (m, note) = pick(None, false, &host(false, &works)).unwrap();
        assert_eq!(m, t);
        assert!(note.unwrap().contains("rootless"));
        assert_eq!(
            pick(Some(e), false, &host(false, &refused)).unwrap(),
            (e, None)
        );
        let err = pick(None, false, &host(false, &refused)).unwrap_err();
        assert!(err.to_string().contains("--insecure-env"), "{err}");
        let (m, note) = pick(None, true, &host(false, &refused)).unwrap();
        assert_eq!(m, e);
        assert!(note.unwrap().contains("this system refuses them"));
        assert!(pick(Some(t), false, &host(false, &refused)).is_err());
        let mac = Host {
            linux: false,
            root: false,
            userns: &never,
        };
        assert_eq!(pick(None, false, &mac).unwrap(), (e, None));
        assert!(pick(Some(t), false, &mac).is_err());
        // eBPF needs root, whatever user namespaces allow.
        let err = choose_mode(None, Redirect::Ebpf, false, &host(false, &works)).unwrap_err();
        assert!(err.to_string().contains("needs root"), "{err}");
    }

    #[test]
    fn docker_runs_transparent_as_root_with_nft_and_one_image_source() {
        let never = || -> Result<(), String> { panic!("probed") };
        let plain = config("runtime: docker\n");
        let ok = docker_mode(None, Redirect::Nft, &host(true, &never), &plain).unwrap();
        assert_eq!(ok, Mode::Transparent);
        assert!(docker_mode(Some(Mode::Env), Redirect::Nft, &host(true, &never), &plain).is_err());
        assert!(docker_mode(None, Redirect::Ebpf, &host(true, &never), &plain).is_err());
        assert!(docker_mode(None, Redirect::Nft, &host(false, &never), &plain).is_err());
        let both = Config {
            image: Some("a".into()),
            dependencies: vec!["git".into()],
            ..Config::default()
        };
        assert!(docker_mode(None, Redirect::Nft, &host(true, &never), &both).is_err());
        assert_eq!(runtime(None, &plain), RuntimeKind::Docker);
        assert_eq!(
            runtime(Some(RuntimeKind::Native), &plain),
            RuntimeKind::Native
        );
        assert_eq!(runtime(None, &Config::default()), RuntimeKind::Native);
    }

    #[test]
    fn env_mode_masks_where_it_can_and_says_what_insecure_env_means() {
        let refused = || Err("no user namespaces".to_string());
        let works = || Ok(());
        let mh = std::path::Path::new("/h/.moat");
        assert_eq!(
            env_masking(&host(false, &works), false, mh).unwrap(),
            (true, None)
        );
        assert!(env_masking(&host(false, &refused), false, mh).is_err());
        let (masked, note) = env_masking(&host(false, &refused), true, mh).unwrap();
        assert!(!masked);
        let note = note.unwrap();
        assert!(
            note.contains("can read Moat's key") && note.contains("/h/.moat"),
            "{note}"
        );
    }

    #[test]
    fn ports_flags_first_then_the_configs_unless_taken() {
        assert_eq!(parse_publish("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_publish("3000").unwrap(), (3000, 3000));
        for bad in ["0", "x", "1:99999", ":80"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        let c = config("ports: [3000, \"8080:80\"]\n");
        assert_eq!(
            publish(&["8080:81".into()], &c).unwrap(),
            [(8080, 81), (3000, 3000)]
        );
    }

    #[test]
    fn grants_commands_and_environment_merge_in_order() {
        let c = config("grants: [github, npm]\ncommand: make\n");
        assert_eq!(
            grant_names(&c, &["npm".into(), "openai".into()]),
            ["github", "npm", "openai"]
        );
        let sh = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            command(sh(&["ls"]), &c, RuntimeKind::Native, None),
            sh(&["ls"])
        );
        assert_eq!(
            command(vec![], &c, RuntimeKind::Native, None),
            sh(&["/bin/sh", "-c", "make"])
        );
        let none = Config::default();
        assert_eq!(
            command(vec![], &none, RuntimeKind::Docker, Some("/bin/zsh".into())),
            sh(&["/bin/sh"])
        );
        assert_eq!(
            command(vec![], &none, RuntimeKind::Native, Some("/bin/zsh".into())),
            sh(&["/bin/zsh"])
        );
        let host = [
            ("PATH", "/bin"),
            ("SECRET", "x"),
            ("LC_ALL", "C"),
            ("HOME", "/h"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = base_env(host, "/tmp/home".into());
        assert_eq!(
            env,
            [("PATH", "/bin"), ("LC_ALL", "C"), ("HOME", "/tmp/home")]
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        );
        let env = merged(env, vec![("PATH".into(), "/x".into())]);
        assert_eq!(env.last().unwrap(), &("PATH".into(), "/x".into()));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn host_ports_are_reachable_only_as_the_alias() {
        let c = config("network:\n  host: [5432]\n");
        let (resolve, policy) = host_services(&c, &["a:1=127.0.0.1:2".into()]).unwrap();
        assert_eq!(
            resolve,
            ["a:1=127.0.0.1:2", "host.moat.internal:5432=127.0.0.1:5432"]
        );
        assert_eq!(policy.allow_restricted.len(), 1);
        assert!(
            policy
                .network
                .reserved
                .iter()
                .any(|p| p.to_string() == HOST_ALIAS)
        );
    }
}
