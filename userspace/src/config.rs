//! `moat.yaml`: a workspace's run configuration.
//!
//! Keys: `name`, `command`, `grants`, `env`, `network` (`policy`, `rules`,
//! `host`), `mcp` (`name`, `url`, `auth: {grant, header}`). Unknown keys are errors that name the nearest known key; wrong
//! types are errors with file:line:column. Command-line flags override and
//! merge (grants are merged). The legacy name `agent.yaml` is read when there
//! is no `moat.yaml`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::providers::HostPattern;
use crate::proxy::rules::{HostRule, Mode, NetworkPolicy, Route};

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
    pub name: Option<String>,
    /// argv; a YAML string becomes `/bin/sh -c STRING`.
    pub command: Vec<OsString>,
    pub grants: Vec<String>,
    pub env: Vec<(String, String)>,
    pub network: Network,
    pub mcp: Vec<Mcp>,
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
    network: Option<NetworkDoc>,
    #[serde(default)]
    mcp: Vec<McpDoc>,
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
        Ok(Config {
            path: Some(path.to_owned()),
            name: doc.name,
            command,
            grants: doc.grants,
            env,
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
    fn agent_yaml_is_read_when_there_is_no_moat_yaml() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Config::find(dir.path()).unwrap().path.is_none());
        std::fs::write(dir.path().join("agent.yaml"), "grants: [a]\n").unwrap();
        assert_eq!(Config::find(dir.path()).unwrap().grants, ["a"]);
        std::fs::write(dir.path().join("moat.yaml"), "grants: [b]\n").unwrap();
        assert_eq!(Config::find(dir.path()).unwrap().grants, ["b"]);
    }
}
