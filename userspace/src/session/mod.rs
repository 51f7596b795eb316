//! One run, from request to exit code: read `moat.yaml` and check it is
//! trusted, decide the plan ([`plan`]), load the grants ([`grants`]), make
//! the run's directory, lock, events and trust files, start the command in
//! its [`runtime`], and record how it ended.
//!
//! `cli/run.rs` only turns flags into a [`Request`].

pub mod grants;
pub mod plan;
mod runtime;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};

use crate::config::Config;
use crate::events::Events;
use crate::home::MoatHome;
use crate::proxy::MoatCa;
use crate::sandbox::trust;

pub use plan::{Mode, Redirect, RuntimeKind};

/// What the user asked for: `moat run`'s flags.
pub struct Request {
    /// The workspace (read-write, the command's working directory).
    pub dir: PathBuf,
    pub grants: Vec<String>,
    /// `-e KEY=VALUE`.
    pub env: Vec<String>,
    pub network_mode: Option<Mode>,
    pub insecure_env: bool,
    pub yes: bool,
    pub redirect: Redirect,
    pub runtime: Option<RuntimeKind>,
    pub rebuild: bool,
    pub keep: bool,
    pub detach: bool,
    /// `-p HOSTPORT:PORT`, as given.
    pub publish: Vec<String>,
    pub resolve: Vec<String>,
    pub upstream_ca: Option<PathBuf>,
    pub command: Vec<OsString>,
    /// What a command like `moat claude` adds (`cli/agent.rs`).
    pub extras: Extras,
}

/// What a run started by `moat claude|codex|gemini` adds to `moat run`.
#[derive(Debug, Default)]
pub struct Extras {
    /// Environment for the command (moat.yaml's `env:` and `-e` win).
    pub env: Vec<(String, String)>,
    /// Host directories the sandbox shows: (host, absolute path inside,
    /// read-only). Under /tmp (native) or anywhere (Docker); not in env mode.
    pub dirs: Vec<(PathBuf, PathBuf, bool)>,
}

/// Where a run gets what it does not own.
pub struct Sources<'a> {
    pub home: MoatHome,
    pub store: &'a dyn Fn() -> Result<crate::store::Store>,
    pub registry: &'a dyn Fn() -> Result<crate::providers::Registry>,
    /// `moat run -d`: start the run in the background (`cli/detach.rs`).
    pub detach: &'a dyn Fn(&MoatHome) -> Result<i32>,
    /// In the background process of `moat run -d`: the run's id.
    pub detached_run: Option<String>,
}

/// Everything a run needs, prepared the same way for every mode. (Env mode,
/// all macOS has, uses neither `id`, `home_files` nor `dir`.)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Prepared {
    id: String,
    /// (host copy, path relative to the sandbox HOME).
    home_files: Vec<(PathBuf, PathBuf)>,
    events: Events,
    /// The run's proxy, built once here and handed to the runtime.
    proxy: Arc<crate::proxy::Engine>,
    bundle: PathBuf,
    truststore: PathBuf,
    workspace: PathBuf,
    /// What the sandbox must never show, even inside the workspace.
    masks: Vec<PathBuf>,
    /// The sudo caller's real home (HOME is root's under sudo).
    caller_home: Option<PathBuf>,
    command: Vec<OsString>,
    env_extra: Vec<(OsString, OsString)>,
    /// The run's directory ($MOAT_HOME/runs/<id>).
    dir: PathBuf,
    /// An `aws` grant in credential_process mode: (grant, region). The
    /// runtime writes the sandbox's AWS config file for it.
    aws_process: Option<(String, Option<String>)>,
    /// With `ssh:` grants: the run's SSH agent, which the runtime serves on
    /// a socket only the sandbox reaches, pointing `SSH_AUTH_SOCK` at it.
    ssh_agent: Option<Arc<crate::ssh::Agent>>,
    /// [`Extras::dirs`].
    dirs: Vec<(PathBuf, PathBuf, bool)>,
}

pub fn run(args: Request, src: Sources<'_>) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let home = src.home;
    let workspace = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("workspace {}", args.dir.display()))?;
    if !workspace.is_dir() {
        bail!("workspace {} is not a directory", workspace.display());
    }
    let config = Config::find(&workspace)?;
    let caller_home = caller_home(&home);
    let (masks, mask_notes) = masks_for(&home, caller_home.as_deref(), &workspace, &config)?;
    // moat.yaml is in the workspace, which earlier runs could write: only
    // access the user accepted is used (cli/config_trust.rs).
    let user_home = caller_home
        .clone()
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from));
    if let Some(user_home) = &user_home {
        crate::cli::config_trust::check(&config, user_home, &home, args.yes)?;
    }
    // `moat run -d`: this process only starts the real run in the background
    // and waits until it has started (cli/detach.rs).
    if args.detach && src.detached_run.is_none() {
        if args.command.is_empty() && config.command.is_empty() {
            bail!(
                "moat run -d needs a command (moat run -d -- CMD, or command: in moat.yaml): \
                 a detached run has no terminal for an interactive shell"
            );
        }
        return (src.detach)(&home);
    }
    // Forked once at most, though the mode and env mode's masks both ask.
    let probed = std::cell::OnceCell::new();
    let probe = || probed.get_or_init(crate::sandbox::probe::userns).clone();
    let host = plan::Host::this(&probe);
    let runtime = plan::runtime(args.runtime, &config);
    let mode = if runtime == RuntimeKind::Docker {
        plan::docker_mode(args.network_mode, args.redirect, &host, &config)?
    } else {
        let (mode, note) =
            plan::choose_mode(args.network_mode, args.redirect, args.insecure_env, &host)?;
        if let Some(note) = note {
            eprintln!("moat: {note}");
        }
        mode
    };
    if mode == Mode::Env && args.redirect == Redirect::Ebpf {
        bail!("--redirect ebpf needs --network-mode transparent");
    }
    let masked = runtime == RuntimeKind::Docker || mode == Mode::Transparent || {
        let (masked, note) = plan::env_masking(&host, args.insecure_env, home.root())?;
        if let Some(note) = note {
            eprintln!("moat: {note}");
        }
        masked
    };
    if masked {
        for note in mask_notes {
            eprintln!("moat: {note}");
        }
    }
    if runtime == RuntimeKind::Native && mode == Mode::Env && !args.extras.dirs.is_empty() {
        bail!(
            "this command needs the transparent sandbox or --runtime docker (env mode cannot \
             show the agent's install and state directories)"
        );
    }
    if runtime == RuntimeKind::Native && !config.mounts.is_empty() {
        bail!(
            "moat.yaml mounts: need --runtime docker (native runs see the host's directories \
             read-only already, and the workspace read-write)"
        );
    }
    let publish = plan::publish(&args.publish, &config)?;
    let grant_names = plan::grant_names(&config, &args.grants);
    let store = (src.store)()?;
    let grant_names = grants::migrate(&store, grant_names)?;
    let registry = (src.registry)()?;
    let mcp: Vec<grants::McpUse> = config
        .mcp
        .iter()
        .map(|m| grants::McpUse {
            grant: m.grant.clone(),
            server: crate::providers::builtin::mcp::McpServer {
                name: m.name.clone(),
                url: m.url.clone(),
                header: m.header.clone(),
            },
        })
        .collect();
    let (resolve, policy) = plan::host_services(&config, &args.resolve)?;
    let upstream = grants::upstream_from(&resolve, args.upstream_ca.as_deref())?;
    // AWS's STS calls: the same way out, without the proxy's safety guard
    // (they are Moat's own, like grant validation).
    let aws_upstream = Arc::new(grants::upstream_from(
        &resolve,
        args.upstream_ca.as_deref(),
    )?);
    let loaded = grants::load(&store, &registry, &grant_names, &mcp, &aws_upstream)?;
    let ssh_upstream = ssh_upstream(&loaded.ssh, mode, runtime)?;
    let grants = loaded.grants;
    // Secrets are fetched before anything is created: a failing one leaves no run behind.
    let env_extra = extra_env(&grants, &args.extras.env, &config, &args.env)?;
    let ca = Arc::new(MoatCa::load_or_create(&home)?);

    // A fresh run directory, or the one `moat run -d` made for this run.
    let (id, dir) = match &src.detached_run {
        Some(id) => (id.clone(), crate::runs::runs_dir(&home).join(id)),
        None => crate::runs::create_run_dir(&home).context("creating the run directory")?,
    };
    // Held while the run lives (the kernel drops it even on kill -9):
    // `moat list` and `moat clean` tell live runs from dead ones by it.
    let lock = std::fs::File::create(dir.join(crate::runs::LOCK))?;
    lock.lock().context("locking the run directory")?;
    crate::runs::write_pid(&home, &dir)?;
    let events_path = dir.join("events.jsonl");
    let events = Events::create(&events_path)
        .with_context(|| format!("creating {}", events_path.display()))?;
    home.chown(&events_path)?;

    // Env mode's command sees $MOAT_HOME masked: its trust files (public
    // certificates only) live in a temporary directory of their own,
    // removed with it at the end of the run.
    let trust_dir = if runtime == RuntimeKind::Native && mode == Mode::Env {
        let t = tempfile::Builder::new()
            .prefix("moat-trust-")
            .tempdir()
            .context("creating the run's trust directory")?;
        home.chown(t.path())?;
        Some(t)
    } else {
        None
    };
    let trust_at = trust_dir.as_ref().map_or(dir.as_path(), |t| t.path());
    let (bundle_path, truststore_path) = write_trust_files(&home, trust_at, &ca)?;

    // Placeholder config files (.npmrc, …) for the sandbox's fresh HOME.
    let mut home_files = Vec::new();
    for f in loaded.files {
        // A file in a directory the command shows in HOME (`moat gemini`'s
        // ~/.gemini) goes into that directory, which would cover it. The
        // sandbox writes there too: nothing there is followed (a planted
        // symlink is replaced), and JSON settings merge over what is there.
        let inside = Path::new(crate::sandbox::init::HOME_INSIDE).join(&f.rel_path);
        let shown = args.extras.dirs.iter().find_map(|(host, at, read_only)| {
            let rest = inside.strip_prefix(at).ok()?;
            (!read_only && rest.components().count() == 1).then(|| (host, rest.to_path_buf()))
        });
        if let Some((shared, name)) = shown {
            use crate::store::fsio;
            let old =
                fsio::read_in_shared_dir(shared, &name).and_then(|b| String::from_utf8(b).ok());
            let contents = match old.as_deref().map(|o| merge_json(o, &f.contents)) {
                Some(Some(merged)) => merged,
                _ => f.contents.clone(),
            };
            fsio::replace_in_shared_dir(&home, shared, &name, contents.as_bytes(), f.mode)
                .with_context(|| format!("writing {}", shared.join(&name).display()))?;
            continue;
        }
        let host = dir.join("home-files").join(&f.rel_path);
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&host, &f.contents)
            .with_context(|| format!("writing {}", host.display()))?;
        home_files.push((host, f.rel_path));
    }
    let (rebuild, keep) = (args.rebuild, args.keep);
    let command = plan::command(args.command, &config, runtime, std::env::var_os("SHELL"));
    events.emit(
        "start",
        serde_json::json!({
            "run": id,
            "mode": format!("{mode:?}").to_lowercase(),
            "runtime": format!("{runtime:?}").to_lowercase(),
            "workspace": workspace,
            "command": command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "grants": grant_names,
            "secrets": config.secrets.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "config": config.path,
            "config_sha256": config.sha256,
            "pid": std::process::id(),
            "detached": src.detached_run.is_some(),
        }),
    );
    tracing::info!(run = %id, "events: {}", events_path.display());
    // One proxy for the run, whatever runs the command; its events are the run's.
    let proxy = grants::engine(ca, &grants, upstream, policy)?;
    proxy.set_events(events.clone());
    let ssh_agent = ssh_upstream.map(|host_agent| {
        let keys = crate::ssh::by_key(&loaded.ssh);
        for problem in crate::ssh::agent::host_agent_problems(&host_agent, &keys) {
            eprintln!("moat: {problem}");
        }
        let seen = Arc::new(crate::ssh::HostKeys::default());
        proxy.watch_ssh(seen.clone());
        Arc::new(crate::ssh::Agent::new(
            keys,
            host_agent,
            seen,
            events.clone(),
        ))
    });
    tracing::debug!("run prepared in {:?}", t0.elapsed());
    let prepared = Prepared {
        id: id.clone(),
        home_files,
        events: events.clone(),
        proxy,
        bundle: bundle_path,
        truststore: truststore_path,
        workspace,
        masks,
        caller_home,
        command,
        env_extra,
        dir: dir.clone(),
        aws_process: grants
            .iter()
            .filter_map(|g| g.aws.as_ref())
            .find(|a| a.inject() == crate::aws::Inject::CredentialProcess)
            .map(|a| (a.grant.clone(), a.role.region.clone())),
        ssh_agent,
        dirs: args.extras.dirs,
    };
    let trust_files = [prepared.bundle.clone(), prepared.truststore.clone()];
    let home_files_dir = dir.join("home-files");
    let launcher: Box<dyn runtime::Runtime + '_> = match (runtime, mode) {
        (RuntimeKind::Docker, _) => Box::new(runtime::Docker {
            config: &config,
            publish,
            rebuild,
            keep,
        }),
        (RuntimeKind::Native, Mode::Transparent) => Box::new(runtime::Native {
            publish,
            redirect: args.redirect,
        }),
        (RuntimeKind::Native, Mode::Env) => Box::new(runtime::Env { publish, masked }),
    };
    let result = launcher.run(&home, prepared);
    // The run's directory keeps its events; the trust files are not needed again.
    for f in trust_files {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(home_files_dir);
    drop(trust_dir);
    match &result {
        Ok(code) => events.emit("exit", serde_json::json!({"code": code})),
        Err(e) => events.emit("exit", serde_json::json!({"error": format!("{e:#}")})),
    }
    result
}

/// With `ssh:` grants, the host's agent the run's agent forwards to
/// (`SSH_AUTH_SOCK`); refused where Moat cannot see SSH connections.
fn ssh_upstream(
    ssh: &[crate::ssh::SshGrant],
    mode: Mode,
    runtime: RuntimeKind,
) -> Result<Option<PathBuf>> {
    let Some(first) = ssh.first() else {
        return Ok(None);
    };
    if runtime == RuntimeKind::Native && mode == Mode::Env {
        bail!(
            "--grant ssh:{} needs the transparent sandbox or --runtime docker: in env mode \
             SSH connections do not pass through Moat, so its agent could not tell which host \
             a signature is for",
            first.host
        );
    }
    let sock = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--grant ssh:{} needs your SSH agent, and SSH_AUTH_SOCK is not set: start \
                 ssh-agent and ssh-add your key (under sudo, keep it: sudo --preserve-env=SSH_AUTH_SOCK)",
                first.host
            )
        })?;
    Ok(Some(PathBuf::from(sock)))
}

/// `new`'s keys over `old`'s, objects merged key by key, when both are JSON
/// objects; `None` otherwise.
fn merge_json(old: &str, new: &str) -> Option<String> {
    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut a: serde_json::Value = serde_json::from_str(old).ok()?;
    let b: serde_json::Value = serde_json::from_str(new).ok()?;
    if !(a.is_object() && b.is_object()) {
        return None;
    }
    merge(&mut a, b);
    Some(format!("{a:#}\n"))
}

/// The sudo caller's home, when Moat runs under sudo for them.
fn caller_home(home: &MoatHome) -> Option<PathBuf> {
    let owner = home.owner()?;
    let user = nix::unistd::User::from_uid(owner.uid.into()).ok()??;
    Some(user.dir)
}

/// What the run masks (see `sandbox::mask`): refuses a workspace that is or
/// lies in `$MOAT_HOME` or another mask; the lines that say what it masks
/// inside the workspace and what moat.yaml unmasked.
fn masks_for(
    home: &crate::home::MoatHome,
    caller_home: Option<&std::path::Path>,
    workspace: &std::path::Path,
    config: &Config,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mut notes = Vec::new();
    use crate::sandbox::mask;
    let view = mask::HostView::read(home.root(), caller_home, config.unmask.clone());
    let masks = mask::masks(&view)?;
    mask::check_workspace(workspace, &view, &masks)?;
    let inside = mask::inside(workspace, &masks);
    if !inside.is_empty() {
        let names: Vec<String> = inside
            .iter()
            .map(|m| {
                let rel = m.path.strip_prefix(workspace).unwrap_or(&m.path);
                format!("{} ({})", rel.display(), m.what)
            })
            .collect();
        notes.push(format!(
            "masked inside the workspace (empty and read-only in the sandbox): {}",
            names.join(", ")
        ));
    }
    if !view.unmask.is_empty() {
        let names: Vec<String> = view
            .unmask
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        notes.push(format!(
            "unmasked by moat.yaml (visible to the sandbox if it can reach them): {}",
            names.join(", ")
        ));
    }
    Ok((masks.into_iter().map(|m| m.path).collect(), notes))
}

/// Trust inside: system roots + the Moat CA, as PEM and as a Java truststore,
/// written to the run's directory (owned by the caller); their paths.
fn write_trust_files(
    home: &crate::home::MoatHome,
    dir: &std::path::Path,
    ca: &MoatCa,
) -> Result<(PathBuf, PathBuf)> {
    let bundle = trust::merged_bundle(&trust::system_bundle(), ca.cert_pem());
    let truststore = java_truststore_cached(home, &bundle)?;
    let bundle_path = dir.join("ca-bundle.pem");
    let truststore_path = dir.join("java-truststore.p12");
    for (path, bytes) in [(&bundle_path, &bundle), (&truststore_path, &truststore)] {
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        home.chown(path)?;
    }
    Ok((bundle_path, truststore_path))
}

/// The variables a run adds to the base environment, later ones winning:
/// each grant's placeholder, the command's own (`moat claude`'s), moat.yaml
/// `env:`, moat.yaml `secrets:` (fetched now: op://, ssm://, env://), then
/// `-e KEY=VALUE`.
fn extra_env(
    grants: &[crate::proxy::Grant],
    command_env: &[(String, String)],
    config: &Config,
    flags: &[String],
) -> Result<Vec<(OsString, OsString)>> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for g in grants {
        if let (Some(var), Some(ph)) = (&g.provider.container_env, &g.placeholder) {
            env.push((var.into(), ph.into()));
        }
    }
    if let Some(aws) = grants.iter().find_map(|g| g.aws.as_ref()) {
        env.extend(aws_env(aws).into_iter().map(|(k, v)| (k.into(), v.into())));
    }
    for (k, v) in command_env.iter().chain(&config.env) {
        env.push((k.into(), v.into()));
    }
    for (k, r) in &config.secrets {
        use secrecy::ExposeSecret as _;
        let value = r
            .resolve()
            .with_context(|| format!("moat.yaml secrets: {k}"))?;
        env.push((k.into(), value.expose_secret().into()));
    }
    for kv in flags {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("-e expects KEY=VALUE, got '{kv}'")
        };
        env.push((k.into(), v.into()));
    }
    Ok(env)
}

/// What an `aws` grant puts in the sandbox's environment: its region, no
/// instance metadata (there is none inside), and in SigV4 mode the
/// placeholder keys the proxy re-signs for. (credential_process mode's
/// `AWS_CONFIG_FILE` is the runtime's: its path depends on it.)
fn aws_env(aws: &crate::aws::Session) -> Vec<(&'static str, String)> {
    let mut env = vec![("AWS_EC2_METADATA_DISABLED", "true".to_owned())];
    if let Some(r) = &aws.role.region {
        env.push(("AWS_REGION", r.clone()));
        env.push(("AWS_DEFAULT_REGION", r.clone()));
    }
    if aws.inject() == crate::aws::Inject::Sigv4 {
        let ph = &aws.placeholders;
        env.push(("AWS_ACCESS_KEY_ID", ph.access_key_id.clone()));
        env.push(("AWS_SECRET_ACCESS_KEY", ph.secret_access_key.clone()));
        env.push(("AWS_SESSION_TOKEN", ph.session_token.clone()));
    }
    env
}

/// The Java truststore for `bundle`, from `$MOAT_HOME/ca/` when one was
/// built for the same bundle before (building one takes milliseconds of
/// key derivation; the certificates are public, so caching is harmless).
fn java_truststore_cached(home: &crate::home::MoatHome, bundle: &[u8]) -> Result<Vec<u8>> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bundle);
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let dir = home.root().join("ca");
    let path = dir.join(format!("java-truststore-{tag}.p12"));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(bytes);
    }
    let bytes = trust::java_truststore(bundle)?;
    // Best effort: a cache that cannot be written only costs time.
    if home.ensure_dir(&dir).is_ok() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("java-truststore-") && name.ends_with(".p12") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let tmp = dir.join(format!(".java-truststore-{tag}.tmp"));
        if std::fs::write(&tmp, &bytes).is_ok() && std::fs::rename(&tmp, &path).is_ok() {
            let _ = home.chown(&path);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_settings_merge_key_by_key() {
        let old = r#"{"privacy":{"usageStatisticsEnabled":false},"security":{"auth":{"selectedType":"gemini-api-key"},"x":1}}"#;
        let new = r#"{"security":{"auth":{"selectedType":"oauth-personal"}}}"#;
        let merged: serde_json::Value =
            serde_json::from_str(&super::merge_json(old, new).unwrap()).unwrap();
        assert_eq!(merged["security"]["auth"]["selectedType"], "oauth-personal");
        assert_eq!(merged["security"]["x"], 1);
        assert_eq!(merged["privacy"]["usageStatisticsEnabled"], false);
        assert_eq!(super::merge_json("not json", new), None);
    }
}
