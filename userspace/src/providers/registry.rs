//! All providers a user can grant: built-in Rust, then custom YAML
//! (`$MOAT_HOME/providers/`), then shipped YAML. Custom overrides shipped of
//! the same name; nothing overrides a built-in.

use std::fs;
use std::path::{Path, PathBuf};

use super::yaml::{self, YamlError};
use super::{Origin, Provider, builtin};

/// YAML providers shipped inside the binary (top-level `providers/`).
const SHIPPED: &[(&str, &str)] = &[
    (
        "brave-search.yaml",
        include_str!("../../../providers/brave-search.yaml"),
    ),
    (
        "datadog.yaml",
        include_str!("../../../providers/datadog.yaml"),
    ),
    (
        "elevenlabs.yaml",
        include_str!("../../../providers/elevenlabs.yaml"),
    ),
    (
        "gitlab.yaml",
        include_str!("../../../providers/gitlab.yaml"),
    ),
    (
        "linear.yaml",
        include_str!("../../../providers/linear.yaml"),
    ),
    (
        "sentry.yaml",
        include_str!("../../../providers/sentry.yaml"),
    ),
    (
        "telegram.yaml",
        include_str!("../../../providers/telegram.yaml"),
    ),
    (
        "vercel.yaml",
        include_str!("../../../providers/vercel.yaml"),
    ),
];

/// Words `moat grant` uses as subcommands; no provider may take them.
pub const RESERVED: &[&str] = &["list", "providers", "show", "help"];

/// Something wrong with a provider file that did not stop the others loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    Invalid(YamlError),
    ShadowsBuiltin {
        file: PathBuf,
        name: String,
    },
    Reserved {
        file: PathBuf,
        name: String,
    },
    Duplicate {
        file: PathBuf,
        name: String,
        first: PathBuf,
    },
    AliasTaken {
        file: PathBuf,
        alias: String,
        owner: String,
    },
    Unreadable {
        path: PathBuf,
        reason: String,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::Invalid(e) => write!(f, "skipping provider file {e}"),
            Warning::ShadowsBuiltin { file, name } => write!(
                f,
                "{}: provider '{name}' is built in and cannot be overridden; this file is ignored (rename it)",
                file.display()
            ),
            Warning::Reserved { file, name } => {
                write!(
                    f,
                    "{}: '{name}' is a 'moat grant' subcommand, not a usable provider name; ignored",
                    file.display()
                )
            }
            Warning::Duplicate { file, name, first } => write!(
                f,
                "{}: provider '{name}' is already defined in {}; this file is ignored",
                file.display(),
                first.display()
            ),
            Warning::AliasTaken { file, alias, owner } => {
                write!(
                    f,
                    "{}: alias '{alias}' already names provider '{owner}'; alias ignored",
                    file.display()
                )
            }
            Warning::Unreadable { path, reason } => {
                write!(f, "cannot read provider file {}: {reason}", path.display())
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    providers: Vec<Provider>,
}

impl Registry {
    /// Built-in and shipped providers only (no user files).
    pub fn builtin_and_shipped() -> Self {
        let (reg, warnings) = Self::load_from(None);
        debug_assert!(
            warnings.is_empty(),
            "shipped providers must load cleanly: {warnings:?}"
        );
        reg
    }

    /// Everything, including `$MOAT_HOME/providers/*.yaml`.
    pub fn load(custom_dir: &Path) -> (Self, Vec<Warning>) {
        Self::load_from(Some(custom_dir))
    }

    fn load_from(custom_dir: Option<&Path>) -> (Self, Vec<Warning>) {
        let mut warnings = Vec::new();
        let mut providers = builtin::all();
        let builtin_count = providers.len();

        let mut custom: Vec<Provider> = Vec::new();
        for (path, text) in custom_dir.map(read_yaml_dir).unwrap_or_default() {
            let text = match text {
                Ok(t) => t,
                Err(reason) => {
                    warnings.push(Warning::Unreadable { path, reason });
                    continue;
                }
            };
            match yaml::parse(&text, &path, Origin::Custom(path.clone())) {
                Err(e) => warnings.push(Warning::Invalid(e)),
                Ok(p)
                    if providers[..builtin_count]
                        .iter()
                        .any(|b| b.is_named(&p.name)) =>
                {
                    warnings.push(Warning::ShadowsBuiltin {
                        file: path,
                        name: p.name,
                    })
                }
                Ok(p) if RESERVED.contains(&p.name.as_str()) => warnings.push(Warning::Reserved {
                    file: path,
                    name: p.name,
                }),
                Ok(p) => match custom.iter().find(|c| c.name == p.name) {
                    Some(first) => {
                        let first = match &first.origin {
                            Origin::Custom(f) => f.clone(),
                            _ => PathBuf::new(),
                        };
                        warnings.push(Warning::Duplicate {
                            file: path,
                            name: p.name,
                            first,
                        })
                    }
                    None => custom.push(p),
                },
            }
        }

        let mut shipped = Vec::new();
        for (file, text) in SHIPPED {
            match yaml::parse(text, Path::new(file), Origin::Shipped) {
                Ok(p) if custom.iter().any(|c| c.name == p.name) => {}
                Ok(p) => shipped.push(p),
                Err(e) => warnings.push(Warning::Invalid(e)),
            }
        }

        // Aliases may not steal another provider's name or alias.
        for mut p in custom.into_iter().chain(shipped) {
            let file = match &p.origin {
                Origin::Custom(f) => f.clone(),
                _ => PathBuf::from("(shipped)"),
            };
            p.aliases
                .retain(|alias| match providers.iter().find(|o| o.is_named(alias)) {
                    Some(owner) => {
                        warnings.push(Warning::AliasTaken {
                            file: file.clone(),
                            alias: alias.clone(),
                            owner: owner.name.clone(),
                        });
                        false
                    }
                    None => true,
                });
            providers.push(p);
        }
        (Self { providers }, warnings)
    }

    /// A provider by name or alias.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.is_named(name))
    }

    pub fn all(&self) -> &[Provider] {
        &self.providers
    }

    pub fn names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name.as_str()).collect()
    }
}

/// `*.yaml`/`*.yml` in `dir`, sorted by file name (a missing dir is empty).
fn read_yaml_dir(dir: &Path) -> Vec<(PathBuf, Result<String, String>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).map_err(|e| e.to_string());
            (p, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{HeaderValue, Injection};

    fn write(dir: &Path, file: &str, text: &str) {
        fs::write(dir.join(file), text).unwrap();
    }

    fn header_of(p: &Provider) -> (String, String) {
        let Injection::Headers(rules) = &p.injection else {
            panic!("{} injects no header", p.name)
        };
        let HeaderValue::Prefixed(prefix) = &rules[0].value else {
            panic!()
        };
        (rules[0].header.clone(), prefix.clone())
    }

    #[test]
    fn every_shipped_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../providers");
        let mut on_disk: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = SHIPPED.iter().map(|(f, _)| *f).collect();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn builtins_and_shipped_are_all_there() {
        let reg = Registry::builtin_and_shipped();
        for name in [
            "github",
            "claude",
            "anthropic",
            "openai",
            "gemini",
            "graphite",
            "meta",
            "npm",
            "aws",
            "ssh",
            "mcp",
            "gitlab",
            "brave-search",
            "elevenlabs",
            "linear",
            "vercel",
            "sentry",
            "datadog",
            "telegram",
        ] {
            assert!(reg.get(name).is_some(), "{name} missing");
        }
        assert_eq!(reg.get("tg").unwrap().name, "telegram");
        assert_eq!(reg.get("gl").unwrap().name, "gitlab");
    }

    /// Hosts, sources and sandbox variables of the built-ins, as issue 6 and
    /// the grants reference give them (github.com's Basic is tested below).
    #[test]
    fn builtins_match_the_issue() {
        let reg = Registry::builtin_and_shipped();
        /// Name, hosts, source variables, sandbox variable.
        type Case = (
            &'static str,
            &'static [&'static str],
            &'static [&'static str],
            Option<&'static str>,
        );
        let cases: [Case; 9] = [
            (
                "github",
                &["api.github.com", "github.com"],
                &["GITHUB_TOKEN", "GH_TOKEN"],
                Some("GH_TOKEN"),
            ),
            (
                "claude",
                &["api.anthropic.com"],
                &["CLAUDE_CODE_OAUTH_TOKEN"],
                Some("CLAUDE_CODE_OAUTH_TOKEN"),
            ),
            (
                "anthropic",
                &["api.anthropic.com"],
                &["ANTHROPIC_API_KEY"],
                Some("ANTHROPIC_API_KEY"),
            ),
            (
                "openai",
                &["api.openai.com", "chatgpt.com", "*.openai.com"],
                &["OPENAI_API_KEY"],
                Some("OPENAI_API_KEY"),
            ),
            (
                "gemini",
                &["generativelanguage.googleapis.com"],
                &["GEMINI_API_KEY"],
                Some("GEMINI_API_KEY"),
            ),
            (
                "graphite",
                &["api.graphite.com", "*.graphite.com"],
                &["GRAPHITE_TOKEN", "GT_TOKEN"],
                None,
            ),
            (
                "meta",
                &["graph.facebook.com", "graph.instagram.com"],
                &["META_ACCESS_TOKEN"],
                None,
            ),
            ("npm", &[], &["NPM_TOKEN"], None),
            ("mcp", &[], &[], None),
        ];
        for (name, hosts, env, container) in cases {
            let p = reg.get(name).unwrap();
            let got: Vec<String> = p.hosts.iter().map(|h| h.to_string()).collect();
            assert_eq!(got, hosts, "{name} hosts");
            assert_eq!(p.source_env, env, "{name} sources");
            assert_eq!(p.container_env.as_deref(), container, "{name} sandbox env");
        }
        let header = |n: &str| header_of(reg.get(n).unwrap());
        assert_eq!(header("anthropic"), ("x-api-key".into(), "".into()));
        assert_eq!(header("claude"), ("Authorization".into(), "Bearer ".into()));
        assert_eq!(header("openai"), ("Authorization".into(), "Bearer ".into()));
        assert_eq!(header("gemini"), ("x-goog-api-key".into(), "".into()));
        assert_eq!(
            header("graphite"),
            ("Authorization".into(), "token ".into())
        );
        assert_eq!(header("meta"), ("Authorization".into(), "Bearer ".into()));
        // graphite and meta have no variable in the sandbox; meta nothing at all.
        assert!(reg.get("meta").unwrap().placeholder.is_none());
    }

    #[test]
    fn shipped_match_the_reference_table() {
        let reg = Registry::builtin_and_shipped();
        let hosts = |n: &str| {
            reg.get(n)
                .unwrap()
                .hosts
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
        };
        let header = |n: &str| header_of(reg.get(n).unwrap());
        assert_eq!(hosts("gitlab"), ["gitlab.com", "*.gitlab.com"]);
        assert_eq!(header("gitlab"), ("PRIVATE-TOKEN".into(), "".into()));
        assert_eq!(
            reg.get("gitlab").unwrap().source_env,
            ["GITLAB_TOKEN", "GL_TOKEN"]
        );
        assert_eq!(header("brave-search").0, "X-Subscription-Token");
        assert_eq!(
            reg.get("brave-search").unwrap().source_env,
            ["BRAVE_API_KEY", "BRAVE_SEARCH_API_KEY"]
        );
        assert_eq!(header("elevenlabs").0, "xi-api-key");
        assert_eq!(header("linear"), ("Authorization".into(), "".into()));
        assert_eq!(header("vercel"), ("Authorization".into(), "Bearer ".into()));
        assert_eq!(hosts("vercel"), ["api.vercel.com", "*.vercel.com"]);
        assert_eq!(hosts("sentry"), ["sentry.io", "*.sentry.io"]);
        assert_eq!(header("sentry"), ("Authorization".into(), "Bearer ".into()));
        assert_eq!(hosts("datadog"), ["*.datadoghq.com"]);
        assert_eq!(header("datadog").0, "DD-API-KEY");
        assert_eq!(
            reg.get("datadog").unwrap().source_env,
            ["DD_API_KEY", "DATADOG_API_KEY"]
        );
        let tg = reg.get("telegram").unwrap();
        assert_eq!(tg.injection, Injection::Substitute);
        assert_eq!(hosts("telegram"), ["api.telegram.org"]);
        assert_eq!(tg.container_env.as_deref(), Some("TELEGRAM_BOT_TOKEN"));
    }

    #[test]
    fn placeholder_formats_per_provider() {
        use crate::providers::placeholder::derive;
        let reg = Registry::builtin_and_shipped();
        let ph = |n: &str| {
            let p = reg.get(n).unwrap();
            derive(
                p.placeholder.as_ref().expect("placeholder"),
                &[3; 32],
                n,
                "real-token-value",
            )
        };
        let check = |n: &str, prefix: &str, len: usize| {
            let v = ph(n);
            assert!(v.starts_with(prefix) && v.len() == len, "{n}: {v}");
            assert!(!v.contains("real-token-value"));
        };
        check("github", "ghp_", 40);
        check("anthropic", "sk-ant-api03-", 108);
        check("claude", "sk-ant-oat01-", 108);
        check("openai", "sk-proj-", 72);
        check("gemini", "AIza", 39);
        check("telegram", "moat-", 37);
        assert_eq!(ph("npm"), "npm_moatProxyInjected00000000");
        // Every provider that sets an env var inside the sandbox has a placeholder for it.
        for p in reg.all() {
            assert!(
                p.container_env.is_none() || p.placeholder.is_some(),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn github_injects_bearer_on_api_and_basic_on_git() {
        let reg = Registry::builtin_and_shipped();
        let Injection::Headers(rules) = &reg.get("github").unwrap().injection else {
            panic!()
        };
        let rule_for = |host: &str| {
            rules
                .iter()
                .find(|r| r.hosts.iter().any(|h| h.matches(host, 443)))
                .unwrap()
        };
        assert_eq!(
            rule_for("api.github.com").value,
            HeaderValue::Prefixed("Bearer ".into())
        );
        assert_eq!(
            rule_for("github.com").value,
            HeaderValue::Basic {
                user: "x-access-token".into()
            }
        );
    }

    #[test]
    fn custom_overrides_shipped_but_not_builtin() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gitlab.yaml",
            "name: gitlab\ndescription: self-hosted\naliases: [gl]\nhosts: [git.corp.test]\ninject: {header: PRIVATE-TOKEN}\n",
        );
        write(
            dir.path(),
            "github.yaml",
            "name: github\ndescription: evil\nhosts: [evil.test]\ninject: {header: X}\n",
        );
        write(
            dir.path(),
            "broken.yaml",
            "name: broken\ndescription: d\nhosts: [a.test]\ninject:\n  headr: X\n",
        );
        write(
            dir.path(),
            "ok.yml",
            "name: acme\ndescription: d\naliases: [gl, ac]\nhosts: [api.acme.test]\ninject: {header: X}\n",
        );
        write(
            dir.path(),
            "list.yaml",
            "name: list\ndescription: d\nhosts: [a.test]\ninject: {header: X}\n",
        );
        write(dir.path(), "notes.txt", "not yaml");
        let (reg, warnings) = Registry::load(dir.path());
        let gitlab = reg.get("gitlab").unwrap();
        assert_eq!(gitlab.description, "self-hosted");
        assert!(matches!(gitlab.origin, Origin::Custom(_)));
        assert_eq!(reg.get("github").unwrap().origin, Origin::Builtin);
        assert_eq!(reg.get("ac").unwrap().name, "acme");
        assert_eq!(reg.get("gl").unwrap().name, "gitlab");
        assert_eq!(reg.all().iter().filter(|p| p.name == "gitlab").count(), 1);
        assert!(reg.get("list").is_none());
        let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            text.iter()
                .any(|w| w.contains("github.yaml") && w.contains("cannot be overridden")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|w| w.contains("broken.yaml:5") && w.contains("headr")),
            "{text:?}"
        );
        assert!(text.iter().any(|w| w.contains("alias 'gl'")), "{text:?}");
        assert!(text.iter().any(|w| w.contains("list.yaml")), "{text:?}");
        assert_eq!(warnings.len(), 4, "{text:?}");
    }
}
