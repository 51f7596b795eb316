//! `moat.yaml`: a workspace's run configuration.
//!
//! Keys: `name`, `command`, `grants`, `env`, `secrets`, `network` (`policy`, `rules`,
//! `host`), `mcp` (`name`, `url`, `auth: {grant, header}`), and for
//! `--runtime docker`: `runtime`, `image`, `base_image`, `dependencies`,
//! `mounts` (`src:dst[:ro]`), `ports`, `container` (`memory`, `cpus`).
//! Unknown keys are errors that name the nearest known key; wrong
//! types are errors with file:line:column. Command-line flags override and
//! merge (grants are merged). The legacy name `agent.yaml` is read when there
//! is no `moat.yaml`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::providers::HostPattern;
use crate::proxy::rules::{HostRule, Mode, NetworkPolicy, Route};

mod dependency;

pub use dependency::{Dependency, ImageError};

/// File names looked for in the workspace, in order.
pub const FILE_NAMES: [&str; 2] = ["moat.yaml", "agent.yaml"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A loaded `moat.yaml` (defaults when there is none).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    /// SHA-256 (hex) of the exact text parsed, for config trust.
    pub sha256: Option<String>,
    pub name: Option<String>,
    /// argv; a YAML string becomes `/bin/sh -c STRING`.
    pub command: Vec<OsString>,
    pub grants: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `secrets:` VAR → reference, resolved when a run starts.
    pub secrets: Vec<(String, crate::secrets::SecretRef)>,
    pub network: Network,
    pub mcp: Vec<Mcp>,
    /// `runtime: native|docker` (the flag and `MOAT_RUNTIME` win).
    pub runtime: Option<String>,
    /// `image:`: run in this image as is.
    pub image: Option<String>,
    /// `base_image:`: what generated images start from.
    pub base_image: Option<String>,
    /// `dependencies:` (`python@3.11`, `node@20`, `git`, …), as written.
    pub dependencies: Vec<String>,
    pub mounts: Vec<Mount>,
    /// `unmask:` paths the sandbox may see although Moat masks them (a
    /// tool's credential file); `~/` is the invoking user's HOME.
    pub unmask: Vec<PathBuf>,
    /// `ports:` published on the host's 127.0.0.1, as `-p` (HOSTPORT, PORT).
    pub ports: Vec<(u16, u16)>,
    pub container: ContainerLimits,
    /// `agent:` defaults of `moat claude|codex|gemini`, by agent name.
    pub agent: BTreeMap<String, AgentDefaults>,
}

/// `agent: {claude: {version: 2.1.197, args: [--model, sonnet]}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefaults {
    /// The CLI version (`--agent-version` wins).
    pub version: Option<String>,
    /// Arguments put before the command line's agent arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// `mounts: - src:dst[:ro]` (src relative to the workspace unless absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub read_only: bool,
}

impl Mount {
    /// `SRC:DST` or `SRC:DST:ro` (or `:rw`); DST must be absolute.
    pub fn parse(spec: &str, base: &Path) -> Result<Self, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, read_only) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            _ => return Err(format!("mount '{spec}': expected SRC:DST or SRC:DST:ro")),
        };
        if src.is_empty() || !dst.starts_with('/') {
            return Err(format!(
                "mount '{spec}': expected SRC:DST[:ro] with an absolute DST"
            ));
        }
        Ok(Self {
            src: base.join(src),
            dst: dst.into(),
            read_only,
        })
    }
}

/// `container: {memory: 2g, cpus: 1.5}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerLimits {
    /// Bytes.
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
}

/// `512m`, `2g`, `1024k`, `1073741824` → bytes.
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| (n * mult as f64) as i64)
        .filter(|b| *b >= 6 << 20)
        .ok_or_else(|| {
            format!("container.memory: '{s}' is not a size of at least 6m (e.g. 512m, 2g)")
        })
}

/// `HOSTPORT:PORT` or `PORT`.
pub fn parse_port(spec: &str) -> Result<(u16, u16), String> {
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!("port '{spec}': '{s}' is not a port (expected HOSTPORT:PORT or PORT)")
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

/// An MCP server whose requests get a stored credential in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mcp {
    pub name: String,
    pub url: String,
    /// The credential (`mcp-<name>`, from `moat grant mcp <name>`).
    pub grant: String,
    pub header: String,
}

#[derive(Debug, Clone, Default)]
pub struct Network {
    pub policy: NetworkPolicy,
    /// Ports of the host's loopback reachable from inside as
    /// `host.moat.internal:PORT`.
    pub host_ports: Vec<u16>,
}

/// The name the sandbox uses for the host's loopback services.
pub const HOST_ALIAS: &str = "host.moat.internal";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    name: Option<String>,
    command: Option<CommandDoc>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    network: Option<NetworkDoc>,
    #[serde(default)]
    mcp: Vec<McpDoc>,
    runtime: Option<String>,
    image: Option<String>,
    base_image: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    mounts: Vec<String>,
    #[serde(default)]
    unmask: Vec<String>,
    #[serde(default)]
    ports: Vec<Scalar>,
    container: Option<ContainerDoc>,
    #[serde(default)]
    agent: BTreeMap<String, AgentDefaults>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerDoc {
    memory: Option<Scalar>,
    cpus: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpDoc {
    name: String,
    url: String,
    auth: McpAuthDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpAuthDoc {
    grant: String,
    header: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CommandDoc {
    Shell(String),
    Argv(Vec<String>),
}

/// An env value: YAML numbers and booleans are taken as written.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::String(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkDoc {
    policy: Option<String>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    #[serde(default)]
    host: Vec<u16>,
}

/// `- api.example.com` or `- api.example.com: [ "allow GET /**", … ]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RuleDoc {
    Host(String),
    WithRoutes(BTreeMap<String, Vec<String>>),
}

impl Config {
    /// `moat.yaml` (or `agent.yaml`) in `dir`; defaults if neither exists.
    pub fn find(dir: &Path) -> Result<Self, ConfigError> {
        for name in FILE_NAMES {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => return Self::parse(&text, &path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ConfigError::Read(path, e)),
            }
        }
        Ok(Self::default())
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let invalid_at = |line: usize, column: usize, message: String| ConfigError::Invalid {
            file: file.clone(),
            line,
            column,
            message,
        };
        // An empty file (or only comments) is an empty config.
        let doc: Doc = if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            serde_yaml_ng::from_str("{}").map_err(|e| invalid_at(1, 1, e.to_string()))?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                invalid_at(line, column, explain(&e.to_string()))
            })?
        };
        // Errors found after parsing point at the line that holds the value.
        let at = |needle: &str, message: String| {
            let line = text
                .lines()
                .position(|l| l.contains(needle))
                .map_or(1, |i| i + 1);
            invalid_at(line, 1, message)
        };

        let command = match doc.command {
            None => Vec::new(),
            Some(CommandDoc::Shell(s)) => vec!["/bin/sh".into(), "-c".into(), s.into()],
            Some(CommandDoc::Argv(v)) => v.into_iter().map(Into::into).collect(),
        };
        let mut env = Vec::new();
        for (k, v) in doc.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(at(&k, format!("env: '{k}' is not a variable name")));
            }
            env.push((k, v.into_string()));
        }
        let mut secrets = Vec::new();
        for (k, v) in doc.secrets {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(at(&k, format!("secrets: '{k}' is not a variable name")));
            }
            let r = crate::secrets::SecretRef::parse(&v)
                .map_err(|e| at(&v, format!("secrets: {k}: {e}")))?;
            secrets.push((k, r));
        }
        let mut network = Network::default();
        if let Some(n) = doc.network {
            if let Some(p) = n.policy {
                network.policy.mode = p.parse::<Mode>().map_err(|m| at("policy", m))?;
            }
            for rule in n.rules {
                let (host, routes) = match rule {
                    RuleDoc::Host(h) => (h, Vec::new()),
                    RuleDoc::WithRoutes(map) if map.len() == 1 => {
                        map.into_iter().next().unwrap_or_default()
                    }
                    RuleDoc::WithRoutes(_) => {
                        return Err(at(
                            "rules",
                            "network.rules: each entry is one host (with optional route entries)"
                                .into(),
                        ));
                    }
                };
                let pattern = HostPattern::parse(&host)
                    .map_err(|e| at(&host, format!("network.rules: {e}")))?;
                let routes = routes
                    .iter()
                    .map(|r| Route::parse(r).map_err(|m| at(r, format!("network.rules: {m}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                network.policy.rules.push(HostRule {
                    host: pattern,
                    routes,
                });
            }
            if n.host.contains(&0) {
                return Err(at("host", "network.host: port 0 is not a port".into()));
            }
            network.host_ports = n.host;
        }
        if let Some(r) = &doc.runtime
            && r != "native"
            && r != "docker"
        {
            return Err(at(
                "runtime",
                format!("runtime: '{r}' is not a runtime (native or docker)"),
            ));
        }
        if doc.image.is_some() && !doc.dependencies.is_empty() {
            return Err(at(
                "image",
                "image: and dependencies: exclude each other (dependencies: builds an image \
                 on base_image:)"
                    .into(),
            ));
        }
        for d in &doc.dependencies {
            Dependency::parse(d).map_err(|e| at(d, format!("dependencies: {e}")))?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mounts = doc
            .mounts
            .iter()
            .map(|m| Mount::parse(m, base).map_err(|e| at(m, format!("mounts: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let unmask = doc
            .unmask
            .iter()
            .map(|u| match (u.strip_prefix("~/"), &home) {
                (Some(rel), Some(h)) => Ok(h.join(rel)),
                (Some(_), None) => Err(at(u, "unmask: ~/ needs HOME to be set".into())),
                (None, _) if Path::new(u).is_absolute() => Ok(PathBuf::from(u)),
                (None, _) => Err(at(
                    u,
                    format!("unmask: '{u}' must be absolute or start with ~/ (e.g. ~/.npmrc)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ports = doc
            .ports
            .into_iter()
            .map(|p| {
                let p = p.into_string();
                parse_port(&p).map_err(|e| at(&p, format!("ports: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut container = ContainerLimits::default();
        if let Some(c) = doc.container {
            if let Some(m) = c.memory {
                let m = m.into_string();
                container.memory = Some(parse_memory(&m).map_err(|e| at("memory", e))?);
            }
            if let Some(cpus) = c.cpus {
                if !(cpus.is_finite() && cpus > 0.0) {
                    return Err(at(
                        "cpus",
                        format!("container.cpus: {cpus} is not a positive number of CPUs"),
                    ));
                }
                container.cpus = Some(cpus);
            }
        }
        if let Some(name) = doc
            .agent
            .keys()
            .find(|k| !matches!(k.as_str(), "claude" | "codex" | "gemini"))
        {
            return Err(at(
                &format!("{name}:"),
                format!("agent: '{name}' is not an agent (claude, codex or gemini)"),
            ));
        }
        Ok(Config {
            agent: doc.agent,
            runtime: doc.runtime,
            image: doc.image,
            base_image: doc.base_image,
            dependencies: doc.dependencies,
            mounts,
            unmask,
            ports,
            container,
            path: Some(path.to_owned()),
            sha256: Some(hex_sha256(text.as_bytes())),
            name: doc.name,
            command,
            grants: doc.grants,
            env,
            secrets,
            network,
            mcp: doc
                .mcp
                .into_iter()
                .map(|m| Mcp {
                    name: m.name,
                    url: m.url,
                    grant: m.auth.grant,
                    header: m.auth.header,
                })
                .collect(),
        })
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Config {
    /// What this config lets a run reach beyond Moat's defaults, one line
    /// per item, sorted: grants, secrets and where they come from, host
    /// ports, the network policy and its rules, MCP servers, mounts and
    /// unmasks. Config trust compares these lines: a line the user has not
    /// accepted widens access.
    pub fn access(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for g in &self.grants {
            lines.push(format!("grant {g}"));
        }
        for (var, r) in &self.secrets {
            let from = r.reference();
            lines.push(format!("secret {var} from {from}"));
        }
        for port in &self.network.host_ports {
            lines.push(format!("host port {port} (the host's 127.0.0.1:{port})"));
        }
        if self.network.policy.mode == Mode::Permissive {
            lines.push("network policy permissive (any host, without credentials)".into());
        }
        for rule in &self.network.policy.rules {
            let routes: Vec<String> = rule.routes.iter().map(ToString::to_string).collect();
            if routes.is_empty() {
                lines.push(format!("network rule {}", rule.host));
            } else {
                lines.push(format!("network rule {}: {}", rule.host, routes.join(", ")));
            }
        }
        for m in &self.mcp {
            lines.push(format!(
                "mcp {} at {} with grant {} in {}",
                m.name, m.url, m.grant, m.header
            ));
        }
        for m in &self.mounts {
            let ro = if m.read_only { " (read-only)" } else { "" };
            lines.push(format!(
                "mount {} at {}{ro}",
                m.src.display(),
                m.dst.display()
            ));
        }
        for p in &self.unmask {
            lines.push(format!("unmask {}", p.display()));
        }
        lines.sort();
        lines.dedup();
        lines
    }
}

/// What `moat init` writes, before rendering: lines whose content starts
/// with `@ ` are optional settings (commented out), `@! ` ones stay
/// commented out even in [`template_all_on`] (they exclude another key).
const TEMPLATE: &str = r##"# moat.yaml: how `moat run` runs this workspace (written by moat init).
# Every key is optional; command-line flags win, and --grant adds to grants.
# To use a commented-out setting, remove its "# ". Reference: docs/config.md

# A name for this workspace.
name: {NAME}

# What `moat run` runs when given no command: a list, or a string run with
# /bin/sh -c. Without it: your shell (moat run -d needs one).
@ command: [python, agent.py]

# Credentials injected by the proxy (names from `moat grant list`).
grants: []

# Environment variables for the command (-e KEY=VALUE wins).
@ env:
@   LOG_LEVEL: debug

# Environment variables from a secret store, fetched when the run starts:
# env://VAR (this machine's environment), op://vault/item/field (1Password
# CLI), ssm:///path/name (AWS SSM Parameter Store, through the AWS CLI).
# Real values, unlike grants: for what is not an HTTP credential.
@ secrets:
@   DATABASE_PASSWORD: op://Private/db/password
@   SIGNING_KEY: ssm:///prod/signing-key

network:
  # permissive: every host is reachable, credentials go only to granted hosts.
  # strict: only granted hosts and the rules below; the rest is refused.
  policy: permissive
  # Hosts allowed (patterns), optionally with route entries
  # "allow|deny METHOD PATH" (the first that matches a request decides).
  @ rules:
  @   - "*.pypi.org"
  @   - api.github.com: ["allow GET /repos/**", "deny * /**"]
  # Ports of this machine's 127.0.0.1 the command may reach, as
  # host.moat.internal:PORT.
  @ host: [5432]

# MCP servers whose credential Moat injects (moat grant mcp NAME).
@ mcp:
@   - name: context7
@     url: https://mcp.context7.com/mcp
@     auth: {grant: mcp-context7, header: CONTEXT7_API_KEY}

# Ports of the sandbox published on this machine's 127.0.0.1 (as -p):
# PORT or "HOSTPORT:PORT".
@ ports: [3000, "8080:80"]

# Where the command runs: native (this machine, in Moat's sandbox) or
# docker (a container; needs root). --runtime and MOAT_RUNTIME win.
@ runtime: docker

# docker: the image to run as it is...
@! image: debian:bookworm-slim
# ...or one Moat builds (and caches by content) from dependencies on
# base_image. Not together with image:.
@ base_image: debian:bookworm-slim
@ dependencies: [python@3.11, node@20, git]

# docker: more bind mounts, SRC:DST[:ro] (SRC relative to this file).
@ mounts: ["../data:/data:ro"]

# docker: limits.
@ container:
@   memory: 2g
@   cpus: 1.5
"##;

/// The commented `moat.yaml` that `moat init` writes for a workspace named
/// `name`: optional settings commented out.
pub fn template(name: &str) -> String {
    render(name, false)
}

/// [`template`] with every optional setting switched on (except those that
/// exclude another): tests that every key it teaches is a valid one.
pub fn template_all_on(name: &str) -> String {
    render(name, true)
}

fn render(name: &str, all_on: bool) -> String {
    // A JSON string is a YAML string: any name is quoted safely.
    let quoted = serde_json::Value::String(name.to_owned()).to_string();
    let mut out = String::new();
    for line in TEMPLATE.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let body = line.trim_start();
        if let Some(rest) = body.strip_prefix("@! ") {
            out.push_str(&format!("{indent}# {rest}"));
        } else if let Some(rest) = body.strip_prefix("@ ") {
            let mark = if all_on { "" } else { "# " };
            out.push_str(&format!("{indent}{mark}{rest}"));
        } else {
            out.push_str(&line.replace("{NAME}", &quoted));
        }
        out.push('\n');
    }
    out
}

/// serde's "unknown field `x`, expected one of `a`, `b`" plus the nearest
/// known key, when one is close.
fn explain(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let names: Vec<&str> = rest.split('`').step_by(2).collect();
    let Some((unknown, known)) = names.split_first() else {
        return message.to_owned();
    };
    let nearest = known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let location_free = message.split(" at line ").next().unwrap_or(message);
    match nearest {
        Some((_, k)) => format!("{location_free} (did you mean `{k}`?)"),
        None => location_free.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("moat.yaml"))
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"
name: demo
command: ["python", "agent.py"]
grants: [github, openai]
env:
  DEBUG: 1
  MODE: fast
network:
  policy: strict
  rules:
    - "*.pypi.test"
    - api.github.com:
        - allow GET /repos/**
        - deny * /**
  host: [8080]
mcp:
  - name: context7
    url: https://mcp.context7.test/mcp
    auth: {grant: mcp-context7, header: CONTEXT7_API_KEY}
"#,
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("demo"));
        assert_eq!(c.command, vec![OsString::from("python"), "agent.py".into()]);
        assert_eq!(c.grants, ["github", "openai"]);
        assert_eq!(
            c.env,
            [("DEBUG".into(), "1".into()), ("MODE".into(), "fast".into())]
        );
        assert_eq!(c.network.policy.mode, Mode::Strict);
        assert_eq!(c.network.policy.rules.len(), 2);
        assert_eq!(c.network.policy.rules[1].routes.len(), 2);
        assert_eq!(c.network.host_ports, [8080]);
        assert_eq!(c.mcp[0].grant, "mcp-context7");
        assert_eq!(c.mcp[0].header, "CONTEXT7_API_KEY");
    }

    #[test]
    fn the_init_template_loads_commented_and_uncommented() {
        let c = parse(&template("my \"odd\": name")).unwrap();
        assert_eq!(c.name.as_deref(), Some("my \"odd\": name"));
        assert!(c.grants.is_empty() && c.command.is_empty() && c.runtime.is_none());
        assert_eq!(c.network.policy.mode, Mode::Permissive);
        let all = template_all_on("w");
        let c = parse(&all).unwrap();
        assert_eq!(c.runtime.as_deref(), Some("docker"));
        assert_eq!(c.dependencies.len(), 3);
        assert_eq!(c.network.host_ports, [5432]);
        assert_eq!(c.mcp.len(), 1);
        assert_eq!(c.ports, [(3000, 3000), (8080, 80)]);
        assert_eq!(c.container.cpus, Some(1.5));
        assert_eq!(c.env, [("LOG_LEVEL".into(), "debug".into())]);
        assert_eq!(c.secrets.len(), 2);
        // Every key the loader knows is taught.
        for key in [
            "name:",
            "command:",
            "grants:",
            "env:",
            "secrets:",
            "network:",
            "policy:",
            "rules:",
            "host:",
            "mcp:",
            "runtime:",
            "image:",
            "base_image:",
            "dependencies:",
            "mounts:",
            "ports:",
            "container:",
            "memory:",
            "cpus:",
        ] {
            assert!(all.contains(key), "{key} is not in the template");
        }
    }

    #[test]
    fn secrets_are_references_checked_at_load() {
        let c = parse("secrets:\n  DB: op://v/db/pw\n  KEY: ssm:///prod/key\n").unwrap();
        assert_eq!(
            c.secrets,
            [
                (
                    "DB".into(),
                    crate::secrets::SecretRef::Op("op://v/db/pw".into())
                ),
                (
                    "KEY".into(),
                    crate::secrets::SecretRef::Ssm {
                        name: "/prod/key".into(),
                        region: None
                    }
                ),
            ]
        );
        let e = parse("env: {}\nsecrets:\n  DB: hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("moat.yaml:3:1: secrets: DB:"), "{e}");
        assert!(e.contains("op://vault/item/field"), "{e}");
    }

    #[test]
    fn a_string_command_runs_in_a_shell() {
        let c = parse("command: echo hi && env\n").unwrap();
        assert_eq!(c.command[..2], [OsString::from("/bin/sh"), "-c".into()]);
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = parse("# nothing yet\n").unwrap();
        assert!(c.grants.is_empty() && c.command.is_empty());
        assert_eq!(c.network.policy.mode, Mode::Permissive);
    }

    #[test]
    fn unknown_key_names_the_nearest() {
        let e = parse("grants: [github]\ngrnats: [x]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("moat.yaml:2:1: unknown field `grnats`"),
            "{e}"
        );
        assert!(e.contains("did you mean `grants`?"), "{e}");
        let e = parse("network:\n  polcy: strict\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("moat.yaml:2:3") && e.contains("`policy`"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_point_at_the_line() {
        let e = parse("grants: github\n").unwrap_err().to_string();
        assert!(e.starts_with("moat.yaml:1:"), "{e}");
        let e = parse("network:\n  policy: paranoid\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("moat.yaml:2:1:") && e.contains("paranoid"),
            "{e}"
        );
        let e = parse("network:\n  rules:\n    - x.test:\n        - permit GET /\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("moat.yaml:4:1:") && e.contains("permit"),
            "{e}"
        );
        let e = parse("network:\n  host: [70000]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("moat.yaml:2:"), "{e}");
    }

    #[test]
    fn container_keys() {
        let c = Config::parse(
            r#"
runtime: docker
base_image: moat-test-base:latest
dependencies: [git, "python@3.11"]
mounts:
  - data:/data:ro
  - /srv/cache:/cache
ports: [3000, "8080:80"]
container:
  memory: 512m
  cpus: 1.5
"#,
            Path::new("/ws/moat.yaml"),
        )
        .unwrap();
        assert_eq!(c.runtime.as_deref(), Some("docker"));
        assert_eq!(c.base_image.as_deref(), Some("moat-test-base:latest"));
        assert_eq!(c.dependencies, ["git", "python@3.11"]);
        assert_eq!(
            c.mounts,
            [
                Mount {
                    src: "/ws/data".into(),
                    dst: "/data".into(),
                    read_only: true
                },
                Mount {
                    src: "/srv/cache".into(),
                    dst: "/cache".into(),
                    read_only: false
                }
            ]
        );
        assert_eq!(c.ports, [(3000, 3000), (8080, 80)]);
        assert_eq!(c.container.memory, Some(512 << 20));
        assert_eq!(c.container.cpus, Some(1.5));
    }

    #[test]
    fn container_key_errors() {
        let e = parse(
            "runtime: docker
imgae: x
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("moat.yaml:2:1:") && e.contains("`image`"),
            "{e}"
        );
        let e = parse(
            "container:
  memroy: 1g
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("moat.yaml:2:3:") && e.contains("`memory`"),
            "{e}"
        );
        let e = parse(
            "dependencies: git
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("moat.yaml:1:"), "{e}");
        let e = parse(
            "container:
  cpus: many
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("moat.yaml:2:"), "{e}");
        let e = parse(
            "runtime: podman
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("moat.yaml:1:1:") && e.contains("podman"),
            "{e}"
        );
        let e = parse("x: 1\nmounts: [\"/a\"]\n").unwrap_err().to_string();
        assert!(e.starts_with("moat.yaml:1:"), "{e}");
        let e = parse("mounts: [\"/a\"]\n").unwrap_err().to_string();
        assert!(
            e.starts_with("moat.yaml:1:1:") && e.contains("SRC:DST"),
            "{e}"
        );
        let e = parse("dependencies: [git, \"rm -rf\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rm -rf"), "{e}");
        let e = parse(
            "image: x
dependencies: [git]
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("moat.yaml:1:1:"), "{e}");
        let e = parse(
            "ports: [0]
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("moat.yaml:1:"), "{e}");
        let e = parse(
            "container:
  memory: lots
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("moat.yaml:2:1:"), "{e}");
    }

    #[test]
    fn agent_yaml_is_read_when_there_is_no_moat_yaml() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Config::find(dir.path()).unwrap().path.is_none());
        std::fs::write(dir.path().join("agent.yaml"), "grants: [a]\n").unwrap();
        assert_eq!(Config::find(dir.path()).unwrap().grants, ["a"]);
        std::fs::write(dir.path().join("moat.yaml"), "grants: [b]\n").unwrap();
        assert_eq!(Config::find(dir.path()).unwrap().grants, ["b"]);
    }

    #[test]
    fn agent_defaults_by_agent_name() {
        let c = parse(
            "agent:\n  claude:\n    version: 2.1.197\n    args: [--model, sonnet]\n  codex: {}\n",
        )
        .unwrap();
        let claude = &c.agent["claude"];
        assert_eq!(claude.version.as_deref(), Some("2.1.197"));
        assert_eq!(claude.args, ["--model", "sonnet"]);
        assert_eq!(c.agent["codex"], AgentDefaults::default());
        let err = parse("grants: []\nagent:\n  cursor: {}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("moat.yaml:3:") && err.contains("'cursor' is not an agent"),
            "{err}"
        );
        assert!(parse("agent:\n  claude: {versoin: 1}\n").is_err());
    }
}
