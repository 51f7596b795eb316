//! Where the command runs: natively in the transparent sandbox, in a
//! Docker container, or in env mode. Each takes the same prepared run and
//! returns the command's exit code.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use super::Prepared;
use super::plan::{CA_VARS, Redirect, base_env, merged};
use crate::config::Config;
use crate::home::MoatHome;
use crate::sandbox::trust;

pub(crate) trait Runtime {
    /// Run the prepared command to its end; its exit code.
    fn run(&self, home: &MoatHome, p: Prepared) -> Result<i32>;
}

/// The transparent sandbox (`sandbox::run`).
pub(crate) struct Native {
    pub publish: Vec<(u16, u16)>,
    pub redirect: Redirect,
}

/// A container (`sandbox::docker`).
pub(crate) struct Docker<'a> {
    pub config: &'a Config,
    pub publish: Vec<(u16, u16)>,
    pub rebuild: bool,
    pub keep: bool,
}

/// Env mode (`sandbox::envmode`): `masked` when `moat __env-init` can
/// mask (see `plan::env_masking`).
pub(crate) struct Env {
    pub publish: Vec<(u16, u16)>,
    pub masked: bool,
}

impl Runtime for Native {
    fn run(&self, home: &MoatHome, p: Prepared) -> Result<i32> {
        transparent(home, p, self.publish.clone(), self.redirect)
    }
}

impl Runtime for Docker<'_> {
    fn run(&self, home: &MoatHome, p: Prepared) -> Result<i32> {
        docker(
            home,
            p,
            self.publish.clone(),
            self.config,
            (self.rebuild, self.keep),
        )
    }
}

impl Runtime for Env {
    fn run(&self, home: &MoatHome, p: Prepared) -> Result<i32> {
        env_mode(home, p, &self.publish, self.masked)
    }
}

/// For an `aws` grant in credential_process mode: the sandbox's AWS config
/// file, written at `host_path`, whose profile runs `moat_argv()…
/// __aws-credentials` (the sandbox's way to run this binary, only asked
/// when there is such a grant); the
/// `AWS_CONFIG_FILE` entry pointing at it as the sandbox sees it (`inside`).
fn aws_config(
    aws: &Option<(String, Option<String>)>,
    proxy: &crate::proxy::Engine,
    moat_argv: impl FnOnce() -> Result<Vec<String>>,
    host_path: &std::path::Path,
    inside: &std::path::Path,
) -> Result<Option<(OsString, OsString)>> {
    use secrecy::ExposeSecret;
    let Some((grant, region)) = aws else {
        return Ok(None);
    };
    let token = proxy.self_token().expose_secret();
    let text = crate::aws::process::config_file(&moat_argv()?, grant, token, region.as_deref());
    if let Some(dir) = host_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(host_path, text).with_context(|| format!("writing {}", host_path.display()))?;
    Ok(Some(("AWS_CONFIG_FILE".into(), inside.into())))
}

/// Where a native sandbox gets a copy of this binary when its own path is
/// hidden there (under /tmp, /home, /root, /run).
const MOAT_COPY_INSIDE: &str = "/tmp/.moat/moat";

/// This binary's path, as env mode's command sees it too (the host's tree).
fn self_exe() -> Result<String> {
    Ok(std::env::current_exe()
        .context("finding moat's own binary")?
        .to_string_lossy()
        .into_owned())
}

#[cfg(target_os = "linux")]
fn docker(
    home: &MoatHome,
    p: Prepared,
    publish: Vec<(u16, u16)>,
    config: &Config,
    (rebuild, keep): (bool, bool),
) -> Result<i32> {
    use crate::sandbox::docker as d;
    use crate::sandbox::image;
    let mut env = base_env(std::env::vars_os(), d::HOME_INSIDE.into());
    // The host's PATH means nothing in an image: the image's own applies.
    env.retain(|(k, _)| k != "PATH" && k != "SHELL");
    for var in CA_VARS {
        env.push(((*var).into(), d::BUNDLE_INSIDE.into()));
    }
    env.push((
        "JAVA_TOOL_OPTIONS".into(),
        trust::java_tool_options(d::JAVA_TRUSTSTORE_INSIDE).into(),
    ));
    let home_files = p.dir.join("home-files");
    let aws_inside = PathBuf::from(d::HOME_INSIDE).join(".aws/config");
    if let Some(kv) = aws_config(
        &p.aws_process,
        &p.proxy,
        || Ok(d::moat_argv()?),
        &home_files.join(".aws/config"),
        &aws_inside,
    )? {
        env.push(kv);
    }
    if p.ssh_agent.is_some() {
        env.push(("SSH_AUTH_SOCK".into(), d::SSH_AGENT_INSIDE.into()));
    }
    let env = merged(env, p.env_extra);
    let base = config
        .base_image
        .clone()
        .unwrap_or_else(|| image::DEFAULT_BASE.into());
    let image = match &config.image {
        Some(i) => d::ImageChoice::Use(i.clone()),
        None if config.dependencies.is_empty() => d::ImageChoice::Use(base),
        None => d::ImageChoice::Build {
            base,
            deps: config
                .dependencies
                .iter()
                .map(|s| crate::config::Dependency::parse(s))
                .collect::<Result<_, _>>()?,
        },
    };
    // Under sudo the caller; as root, never the host's root: an
    // unprivileged id, with id-mapped views of the workspace and mounts.
    let idmap = home.owner().is_none() && nix::unistd::geteuid().is_root();
    let user = match home.owner() {
        Some(o) => (o.uid, o.gid),
        None if idmap => {
            let id = crate::sandbox::init::SANDBOX_ID_BASE;
            (id, id)
        }
        None => (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    };
    let has_home_files = !p.home_files.is_empty() || p.aws_process.is_some();
    let code = d::run(
        d::DockerSpec {
            id: p.id,
            events: p.events,
            image,
            rebuild,
            keep,
            workspace: p.workspace,
            mounts: config.mounts.clone(),
            dirs: p.dirs,
            limits: config.container.clone(),
            env,
            user,
            idmap,
            command: p.command,
            bundle: p.bundle,
            truststore: p.truststore,
            home_files: has_home_files.then_some(home_files),
            run_dir: p.dir,
            mask: p.masks,
            publish,
            ssh_agent: p.ssh_agent,
        },
        p.proxy,
    )?;
    Ok(code)
}

#[cfg(not(target_os = "linux"))]
fn docker(
    _home: &MoatHome,
    _p: Prepared,
    _publish: Vec<(u16, u16)>,
    _config: &Config,
    _flags: (bool, bool),
) -> Result<i32> {
    bail!("--runtime docker is Linux-only in this build")
}

fn env_mode(home: &MoatHome, p: Prepared, publish: &[(u16, u16)], masked: bool) -> Result<i32> {
    if let Some((h, c)) = publish.iter().find(|(h, c)| h != c) {
        bail!(
            "-p {h}:{c}: in env mode the command shares the host's network; use its own port ({c}) directly"
        );
    }
    eprintln!(
        "moat: env mode: egress is not enforced. Programs that use HTTP_PROXY go through \
         Moat; any other connection goes out directly, without credentials and without \
         moat.yaml's network policy"
    );
    let masking = if masked {
        Some(crate::sandbox::envmode::Masking {
            masks: p.masks.clone(),
            empty: crate::sandbox::mask::empty_sources(&p.dir).context("making the masks")?,
            run_as: home.owner().map(|o| (o.uid, o.gid)),
        })
    } else {
        None
    };
    // Under sudo the command runs as the caller, in the caller's home.
    let home = match (&masking, &p.caller_home) {
        (Some(m), Some(h)) if m.run_as.is_some() => h.clone().into_os_string(),
        _ => std::env::var_os("HOME").unwrap_or_else(|| "/".into()),
    };
    let mut env = base_env(std::env::vars_os(), home);
    for var in CA_VARS {
        env.push(((*var).into(), p.bundle.clone().into()));
    }
    env.push((
        "JAVA_TOOL_OPTIONS".into(),
        trust::java_tool_options(&p.truststore.to_string_lossy()).into(),
    ));
    // Beside the trust files: outside $MOAT_HOME, which env mode masks.
    let aws_file = p.bundle.with_file_name("aws-config");
    if let Some(kv) = aws_config(
        &p.aws_process,
        &p.proxy,
        || Ok(vec![self_exe()?]),
        &aws_file,
        &aws_file,
    )? {
        env.push(kv);
    }
    let env = merged(env, p.env_extra);
    crate::sandbox::envmode::run(crate::sandbox::envmode::EnvRunSpec {
        proxy: p.proxy,
        env,
        workspace: p.workspace,
        command: p.command,
        masking,
    })
}

#[cfg(target_os = "linux")]
fn transparent(
    home: &MoatHome,
    p: Prepared,
    publish: Vec<(u16, u16)>,
    redirect: Redirect,
) -> Result<i32> {
    use crate::sandbox::{init, run};
    let mut env = base_env(std::env::vars_os(), init::HOME_INSIDE.into());
    for var in CA_VARS {
        env.push(((*var).into(), init::BUNDLE_INSIDE.into()));
    }
    env.push((
        "JAVA_TOOL_OPTIONS".into(),
        trust::java_tool_options(init::JAVA_TRUSTSTORE_INSIDE).into(),
    ));
    let mut files = vec![
        (p.bundle, PathBuf::from(init::BUNDLE_INSIDE)),
        (p.truststore, PathBuf::from(init::JAVA_TRUSTSTORE_INSIDE)),
    ];
    // Whole directories: the real homes (every user's), /root, and every
    // host socket directory. The workspace stays visible inside them; the
    // masks are covered even there.
    let mut hide: Vec<PathBuf> = ["/root", "/home", "/run", "/var/run"]
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(PathBuf::from))
        .chain(p.caller_home.clone())
        .collect();
    hide.sort();
    hide.dedup();
    // credential_process runs this binary inside: at its own path when the
    // sandbox shows it, else a copy in the sandbox's /tmp, run through the
    // host's loader (the copy is not executable; the loader only reads it).
    if p.aws_process.is_some() {
        let exe = std::env::current_exe().context("finding moat's own binary")?;
        let hidden = exe.starts_with("/tmp") || hide.iter().any(|h| exe.starts_with(h));
        let argv = if hidden {
            files.push((exe, PathBuf::from(MOAT_COPY_INSIDE)));
            let loader = crate::sandbox::docker::host_loader()?;
            vec![
                loader.to_string_lossy().into_owned(),
                MOAT_COPY_INSIDE.to_owned(),
            ]
        } else {
            vec![exe.to_string_lossy().into_owned()]
        };
        let aws_host = p.dir.join("aws-config");
        let aws_inside = PathBuf::from(init::HOME_INSIDE).join(".aws/config");
        if let Some(kv) = aws_config(
            &p.aws_process,
            &p.proxy,
            || Ok(argv),
            &aws_host,
            &aws_inside,
        )? {
            env.push(kv);
            files.push((aws_host, aws_inside));
        }
    }
    for (host, rel) in p.home_files {
        files.push((host, PathBuf::from(init::HOME_INSIDE).join(rel)));
    }
    if p.ssh_agent.is_some() {
        env.push(("SSH_AUTH_SOCK".into(), init::SSH_AGENT_INSIDE.into()));
    }
    let env = merged(env, p.env_extra);
    let code = run::run(run::RunSpec {
        id: p.id,
        redirect: match redirect {
            Redirect::Nft => run::Redirect::Nft,
            Redirect::Ebpf => run::Redirect::Ebpf,
        },
        proxy: p.proxy,
        files,
        workspace: p.workspace,
        hide,
        mask: p.masks,
        env,
        run_as: home.owner().map(|o| (o.uid, o.gid)),
        rootless: !nix::unistd::geteuid().is_root(),
        command: p.command,
        events: p.events,
        publish,
        ssh_agent: p.ssh_agent,
        dirs: p.dirs,
    })?;
    Ok(code)
}

#[cfg(not(target_os = "linux"))]
fn transparent(
    _home: &MoatHome,
    _p: Prepared,
    _publish: Vec<(u16, u16)>,
    _redirect: Redirect,
) -> Result<i32> {
    bail!("--network-mode transparent is Linux-only; use --network-mode env")
}
