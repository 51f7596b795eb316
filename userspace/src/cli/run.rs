//! `moat run [DIR] [-- CMD ARGS…]`: a command in the transparent sandbox.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use super::Ctx;
use crate::config::{Config, HOST_ALIAS};
use crate::events::Events;
use crate::providers::HostPattern;
use crate::proxy::rules::HostRule;
use crate::proxy::{MoatCa, Policy};
use crate::sandbox::trust;

#[derive(Args)]
#[command(after_help = "\
Examples:
  sudo moat run --grant github -- gh api user
  moat run --grant github -- printenv GH_TOKEN     # a placeholder; the real token is nowhere inside
  moat run ./project --grant openai -- python agent.py
  moat run --network-mode env --grant openai -- python agent.py
  moat run -p 3000 -- npm run dev                 # the dev server on the host's 127.0.0.1:3000
  sudo moat run --runtime docker --grant github -- gh api user   # in a container
  moat run -d --grant github -- ./agent.sh        # detached: prints the run id
  moat logs -f RUN; moat stop RUN; moat list      # (see moat help logs, stop, destroy)

Network modes:
  transparent  (default as root, and without root where unprivileged user
               namespaces work) the command gets its own network namespace:
               every TCP connection goes to Moat's proxy and every DNS query to
               Moat's resolver; other UDP, ICMP and IPv6 are blocked. Works for
               programs that ignore HTTP_PROXY. The host's HOME, ~/.moat, /root,
               /run/user, the SSH agent and docker.sock are hidden; system
               directories are read-only; HOME and /tmp are fresh.
  env          (default elsewhere) HTTP_PROXY/HTTPS_PROXY point at Moat's proxy
               with a per-run password; no isolation beyond that.

moat.yaml in DIR (or agent.yaml; moat init writes a commented one) may set:
  command: [python, agent.py]     grants: [github]     env: {KEY: value}
  secrets: {DB_PASSWORD: op://vault/db/password}   # also ssm:///name, env://VAR
  network:
    policy: strict                # refuse hosts with no grant and no rule
    rules:
      - \"*.pypi.org\"
      - api.github.com: [\"allow GET /repos/**\", \"deny * /**\"]
    host: [5432]                  # host.moat.internal:5432 = the host's 127.0.0.1:5432
  runtime: docker                 # or native (--runtime, MOAT_RUNTIME win)
  image: my/image:tag             # or: dependencies: [python@3.11, node@20, git]
  base_image: debian:bookworm-slim   # what dependencies: are installed on
  mounts: [\"../data:/data:ro\"]     ports: [3000, \"8080:80\"]
  container: {memory: 2g, cpus: 1.5}

Each run's events (DNS, connections, injections, denials, exit) are written to
$MOAT_HOME/runs/<id>/events.jsonl.

Exit codes: the command's own, 128+N if it died of signal N, 125 if the
sandbox could not be set up, 126/127 if the command cannot run / was not found.")]
pub struct RunArgs {
    /// Workspace directory (read-write, the command's working directory)
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Credential to inject (repeatable; merged with moat.yaml's grants)
    #[arg(long = "grant", value_name = "NAME")]
    grants: Vec<String>,
    /// Set an environment variable inside (repeatable; wins over moat.yaml)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// How the command's traffic reaches the proxy [default: transparent as root or with user namespaces, else env]
    #[arg(long, value_enum, env = "MOAT_NETWORK_MODE")]
    network_mode: Option<NetworkMode>,
    /// Run in env mode even where it cannot mask $MOAT_HOME and the credential
    /// files from the command (no user namespaces, macOS): the command can then
    /// read Moat's key and every stored credential
    #[arg(long)]
    insecure_env: bool,
    /// Accept what moat.yaml asks for beyond what you accepted before (new
    /// grants, secrets, host ports, network rules, MCP servers, mounts,
    /// unmasks) without being asked; without a terminal, such a moat.yaml is
    /// refused unless this is given
    #[arg(short = 'y', long)]
    yes: bool,
    /// How transparent mode redirects connections
    #[arg(long, value_enum, default_value = "nft")]
    redirect: Redirect,
    /// Where the command runs [default: moat.yaml's runtime, else native]
    #[arg(long, value_enum, env = "MOAT_RUNTIME")]
    runtime: Option<Runtime>,
    /// (docker) Build the image from moat.yaml's dependencies even if it is cached
    #[arg(long)]
    rebuild: bool,
    /// (docker) Keep the container after the run
    #[arg(long)]
    keep: bool,
    /// Run in the background: print the run id once the command has started;
    /// output goes to the run's log (moat logs RUN)
    #[arg(short = 'd', long)]
    detach: bool,
    /// Publish a sandbox port on the host's 127.0.0.1 (HOSTPORT:PORT or PORT; repeatable)
    #[arg(short = 'p', long = "publish", value_name = "HOSTPORT:PORT")]
    publish: Vec<String>,
    /// HOST:PORT=ADDR:PORT override for upstream connections (repeatable; added to MOAT_RESOLVE)
    #[arg(long, value_name = "HOST:PORT=ADDR:PORT")]
    resolve: Vec<String>,
    /// PEM file of extra CA roots to trust upstream (also MOAT_UPSTREAM_CA)
    #[arg(long, value_name = "FILE", env = "MOAT_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// The command and its arguments (default: moat.yaml's command, else your shell)
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum NetworkMode {
    Transparent,
    Env,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Redirect {
    Nft,
    Ebpf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Runtime {
    Native,
    Docker,
}

/// Variables passed through from the host; everything else stays outside.
const PASS: &[&str] = &[
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
const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "AWS_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
];

/// Everything a run needs, prepared the same way for every mode. (Env mode,
/// all macOS has, uses neither `id`, `home_files` nor `dir`.)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Prepared {
    id: String,
    /// (host copy, path relative to the sandbox HOME).
    home_files: Vec<(PathBuf, PathBuf)>,
    events: Events,
    grants: Vec<crate::proxy::Grant>,
    upstream: crate::net::Upstream,
    policy: Policy,
    ca: Arc<MoatCa>,
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
}

pub fn run(ctx: &Ctx, args: RunArgs) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let home = ctx.home()?;
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
        super::config_trust::check(&config, user_home, &home, args.yes)?;
    }
    // `moat run -d`: this process only starts the real run in the background
    // and waits until it has started (cli/detach.rs).
    if args.detach && ctx.detached_run.is_none() {
        if args.command.is_empty() && config.command.is_empty() {
            bail!(
                "moat run -d needs a command (moat run -d -- CMD, or command: in moat.yaml): \
                 a detached run has no terminal for an interactive shell"
            );
        }
        return super::detach::start(ctx, &home);
    }
    // The flag (or MOAT_RUNTIME) wins over moat.yaml's runtime.
    let runtime = match (args.runtime, config.runtime.as_deref()) {
        (Some(r), _) => r,
        (None, Some("docker")) => Runtime::Docker,
        (None, _) => Runtime::Native,
    };
    let mode = if runtime == Runtime::Docker {
        check_docker(&args, &config)?
    } else {
        choose_mode(args.network_mode, args.redirect, args.insecure_env)?
    };
    if mode == NetworkMode::Env && args.redirect == Redirect::Ebpf {
        bail!("--redirect ebpf needs --network-mode transparent");
    }
    let masked = runtime == Runtime::Docker
        || mode == NetworkMode::Transparent
        || env_can_mask(&home, args.insecure_env)?;
    if masked {
        for note in mask_notes {
            eprintln!("moat: {note}");
        }
    }
    if runtime == Runtime::Native && !config.mounts.is_empty() {
        bail!(
            "moat.yaml mounts: need --runtime docker (native runs see the host's directories \
             read-only already, and the workspace read-write)"
        );
    }
    let mut publish = args
        .publish
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<Vec<_>>>()?;
    // moat.yaml's ports, unless a -p already publishes that host port.
    for &(h, c) in &config.ports {
        if !publish.iter().any(|(ph, _)| *ph == h) {
            publish.push((h, c));
        }
    }
    let mut grant_names = config.grants.clone();
    for g in &args.grants {
        if !grant_names.contains(g) {
            grant_names.push(g.clone());
        }
    }
    let store = ctx.store()?;
    let registry = ctx.registry()?;
    let mcp: Vec<super::proxy::McpUse> = config
        .mcp
        .iter()
        .map(|m| super::proxy::McpUse {
            grant: m.grant.clone(),
            server: crate::providers::builtin::mcp::McpServer {
                name: m.name.clone(),
                url: m.url.clone(),
                header: m.header.clone(),
            },
        })
        .collect();
    let loaded = super::proxy::load(&store, &registry, &grant_names, &mcp)?;
    let grants = loaded.grants;

    let (resolve, policy) = host_services(&config, &args.resolve)?;
    let upstream = super::proxy::upstream_from(&resolve, args.upstream_ca.as_deref())?;
    // Secrets are fetched before anything is created: a failing one leaves no run behind.
    let env_extra = extra_env(&grants, &config, &args.env)?;
    let ca = Arc::new(MoatCa::load_or_create(&home)?);

    // A fresh run directory, or the one `moat run -d` made for this run.
    let (id, dir) = match &ctx.detached_run {
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
    let trust_dir = if runtime == Runtime::Native && mode == NetworkMode::Env {
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
        let host = dir.join("home-files").join(&f.rel_path);
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&host, &f.contents)
            .with_context(|| format!("writing {}", host.display()))?;
        home_files.push((host, f.rel_path));
    }
    let (rebuild, keep) = (args.rebuild, args.keep);
    let command = if !args.command.is_empty() {
        args.command
    } else if !config.command.is_empty() {
        config.command.clone()
    } else if runtime == Runtime::Docker {
        vec!["/bin/sh".into()]
    } else {
        vec![std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into())]
    };
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
            "detached": ctx.detached_run.is_some(),
        }),
    );
    tracing::info!(run = %id, "events: {}", events_path.display());
    tracing::debug!("run prepared in {:?}", t0.elapsed());
    let prepared = Prepared {
        id: id.clone(),
        home_files,
        events: events.clone(),
        grants,
        upstream,
        policy,
        ca,
        bundle: bundle_path,
        truststore: truststore_path,
        workspace,
        masks,
        caller_home,
        command,
        env_extra,
        dir: dir.clone(),
    };
    let trust_files = [prepared.bundle.clone(), prepared.truststore.clone()];
    let home_files_dir = dir.join("home-files");
    let result = match (runtime, mode) {
        (Runtime::Docker, _) => docker(&home, prepared, publish, &config, (rebuild, keep)),
        (Runtime::Native, NetworkMode::Transparent) => {
            transparent(&home, prepared, publish, args.redirect)
        }
        (Runtime::Native, NetworkMode::Env) => env_mode(&home, prepared, &publish, masked),
    };
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

/// The sudo caller's home, when Moat runs under sudo for them.
fn caller_home(home: &crate::home::MoatHome) -> Option<PathBuf> {
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

/// The policy from moat.yaml's `network:`, plus the host's loopback services
/// named in `network.host`, reachable as host.moat.internal:PORT (nothing
/// else of the host is); the `--resolve` entries that make them so.
fn host_services(config: &Config, resolve: &[String]) -> Result<(Vec<String>, Policy)> {
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
/// each grant's placeholder, moat.yaml `env:`, moat.yaml `secrets:` (fetched
/// now: op://, ssm://, env://), then `-e KEY=VALUE`.
fn extra_env(
    grants: &[crate::proxy::Grant],
    config: &Config,
    flags: &[String],
) -> Result<Vec<(OsString, OsString)>> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    for g in grants {
        if let (Some(var), Some(ph)) = (&g.provider.container_env, &g.placeholder) {
            env.push((var.into(), ph.into()));
        }
    }
    for (k, v) in &config.env {
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

/// `--runtime docker` runs transparent, with the nft redirect, as root.
fn check_docker(args: &RunArgs, config: &Config) -> Result<NetworkMode> {
    if !cfg!(target_os = "linux") {
        bail!("--runtime docker is Linux-only in this build; use --network-mode env");
    }
    if args.network_mode == Some(NetworkMode::Env) {
        bail!("--runtime docker always redirects transparently; drop --network-mode env");
    }
    if args.redirect == Redirect::Ebpf {
        bail!(
            "--runtime docker redirects with nft inside the container's namespace; drop --redirect ebpf"
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "--runtime docker needs root (sudo moat run --runtime docker …): Moat enters the \
             container's network namespace to install its redirect"
        );
    }
    if config.image.is_some() && !config.dependencies.is_empty() {
        bail!("moat.yaml: image: and dependencies: exclude each other");
    }
    Ok(NetworkMode::Transparent)
}

#[cfg(target_os = "linux")]
fn docker(
    home: &crate::home::MoatHome,
    p: Prepared,
    publish: Vec<(u16, u16)>,
    config: &Config,
    (rebuild, keep): (bool, bool),
) -> Result<i32> {
    use crate::sandbox::docker as d;
    use crate::sandbox::image;
    let mut env = base_env(d::HOME_INSIDE.into());
    // The host's PATH means nothing in an image: the image's own applies.
    env.retain(|(k, _)| k != "PATH" && k != "SHELL");
    for var in CA_VARS {
        env.push(((*var).into(), d::BUNDLE_INSIDE.into()));
    }
    env.push((
        "JAVA_TOOL_OPTIONS".into(),
        trust::java_tool_options(d::JAVA_TRUSTSTORE_INSIDE).into(),
    ));
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
                .map(|s| image::Dependency::parse(s))
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
    let home_files = p.dir.join("home-files");
    let code = d::run(
        d::DockerSpec {
            id: p.id,
            events: p.events,
            image,
            rebuild,
            keep,
            workspace: p.workspace,
            mounts: config.mounts.clone(),
            limits: config.container.clone(),
            env,
            user,
            idmap,
            command: p.command,
            bundle: p.bundle,
            truststore: p.truststore,
            home_files: (!p.home_files.is_empty()).then_some(home_files),
            run_dir: p.dir,
            mask: p.masks,
            publish,
        },
        d::ProxyParts {
            grants: p.grants,
            upstream: p.upstream,
            policy: p.policy,
            ca: p.ca,
        },
    )?;
    Ok(code)
}

#[cfg(not(target_os = "linux"))]
fn docker(
    _home: &crate::home::MoatHome,
    _p: Prepared,
    _publish: Vec<(u16, u16)>,
    _config: &Config,
    _flags: (bool, bool),
) -> Result<i32> {
    bail!("--runtime docker is Linux-only in this build")
}

/// transparent when it can work here (Linux, as root or with unprivileged
/// user namespaces), env otherwise; without root, say which and why when the
/// user did not choose (as root transparent is the quiet default).
fn choose_mode(
    asked: Option<NetworkMode>,
    redirect: Redirect,
    insecure_env: bool,
) -> Result<NetworkMode> {
    if !cfg!(target_os = "linux") {
        return match asked {
            Some(NetworkMode::Transparent) => {
                bail!("--network-mode transparent is Linux-only; use --network-mode env")
            }
            _ => Ok(NetworkMode::Env),
        };
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(asked.unwrap_or(NetworkMode::Transparent));
    }
    if redirect == Redirect::Ebpf && asked != Some(NetworkMode::Env) {
        bail!(
            "--redirect ebpf needs root (it attaches eBPF programs to a cgroup): \
             use sudo moat run …, or --redirect nft, which works without root"
        );
    }
    if asked == Some(NetworkMode::Env) {
        return Ok(NetworkMode::Env);
    }
    match (asked, crate::sandbox::probe::userns()) {
        (Some(_), Ok(())) => Ok(NetworkMode::Transparent),
        (Some(_), Err(why)) => bail!(
            "--network-mode transparent needs root or unprivileged user namespaces, \
             and {why}. Use sudo moat run …, enable user namespaces, or \
             --network-mode env"
        ),
        (None, Ok(())) => {
            eprintln!(
                "moat: network mode transparent, rootless (in a user namespace). \
                 Pass --network-mode to silence this."
            );
            Ok(NetworkMode::Transparent)
        }
        (None, Err(why)) if insecure_env => {
            eprintln!(
                "moat: network mode env (HTTP_PROXY): the transparent sandbox needs root \
                 (sudo moat run …) or unprivileged user namespaces, and {why}."
            );
            Ok(NetworkMode::Env)
        }
        (None, Err(why)) => bail!(
            "the sandbox needs root (sudo moat run …) or unprivileged user namespaces, and \
             {why}. Without them Moat can neither enforce egress nor hide its key and the \
             credential files from the command. Use sudo, enable user namespaces, or pass \
             --insecure-env to run in env mode anyway (the command can then read every \
             stored credential)"
        ),
    }
}

/// `HOSTPORT:PORT` or `PORT`.
fn parse_publish(spec: &str) -> Result<(u16, u16)> {
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

/// The allowlisted host variables (plus HOME, as given).
fn base_env(home: OsString) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let name = k.to_string_lossy();
            PASS.contains(&name.as_ref()) || name.starts_with("LC_")
        })
        .collect();
    env.push(("HOME".into(), home));
    env
}

/// Later entries win over earlier ones with the same name.
fn merged(
    mut env: Vec<(OsString, OsString)>,
    extra: Vec<(OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    for (k, v) in extra {
        env.retain(|(name, _)| name != &k);
        env.push((k, v));
    }
    env
}

fn env_mode(
    home: &crate::home::MoatHome,
    p: Prepared,
    publish: &[(u16, u16)],
    masked: bool,
) -> Result<i32> {
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
    let mut env = base_env(home);
    for var in CA_VARS {
        env.push(((*var).into(), p.bundle.clone().into()));
    }
    env.push((
        "JAVA_TOOL_OPTIONS".into(),
        trust::java_tool_options(&p.truststore.to_string_lossy()).into(),
    ));
    let env = merged(env, p.env_extra);
    crate::sandbox::envmode::run(crate::sandbox::envmode::EnvRunSpec {
        grants: p.grants,
        upstream: p.upstream,
        policy: p.policy,
        ca: p.ca,
        events: p.events,
        env,
        workspace: p.workspace,
        command: p.command,
        masking,
    })
}

/// Can env mode mask (a mount namespace, through a user namespace unless
/// Moat runs as root)? Where it cannot, the run starts only with
/// `--insecure-env`, which says what that means: `Ok(false)`.
fn env_can_mask(home: &crate::home::MoatHome, insecure: bool) -> Result<bool> {
    let why = if !cfg!(target_os = "linux") {
        "masks need Linux mount namespaces".to_string()
    } else if nix::unistd::geteuid().is_root() {
        return Ok(true);
    } else {
        match crate::sandbox::probe::userns() {
            Ok(()) => return Ok(true),
            Err(why) => why,
        }
    };
    if !insecure {
        bail!(
            "env mode cannot mask $MOAT_HOME and the credential files here: {why}. Pass \
             --insecure-env to run anyway, knowing the command can read Moat's key and \
             every stored credential"
        );
    }
    eprintln!(
        "moat: --insecure-env: nothing is masked ({why}): the command can read Moat's key \
         and every stored credential in {}",
        home.root().display()
    );
    Ok(false)
}

#[cfg(target_os = "linux")]
fn transparent(
    home: &crate::home::MoatHome,
    p: Prepared,
    publish: Vec<(u16, u16)>,
    redirect: Redirect,
) -> Result<i32> {
    use crate::sandbox::{init, run};
    let mut env = base_env(init::HOME_INSIDE.into());
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
    for (host, rel) in p.home_files {
        files.push((host, PathBuf::from(init::HOME_INSIDE).join(rel)));
    }
    let env = merged(env, p.env_extra);

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
    let code = run::run(run::RunSpec {
        id: p.id,
        redirect: match redirect {
            Redirect::Nft => run::Redirect::Nft,
            Redirect::Ebpf => run::Redirect::Ebpf,
        },
        grants: p.grants,
        upstream: p.upstream,
        policy: p.policy,
        ca: p.ca,
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
    })?;
    Ok(code)
}

#[cfg(not(target_os = "linux"))]
fn transparent(
    _home: &crate::home::MoatHome,
    _p: Prepared,
    _publish: Vec<(u16, u16)>,
    _redirect: Redirect,
) -> Result<i32> {
    bail!("--network-mode transparent is Linux-only; use --network-mode env")
}
