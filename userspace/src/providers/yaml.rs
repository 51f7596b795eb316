//! YAML provider definitions (the Provider YAML reference schema).

use std::path::Path;

use serde::Deserialize;

use super::hosts::HostPattern;
use super::placeholder::{Alphabet, Format};
use super::{Flow, HeaderRule, HeaderValue, Injection, Origin, Provider, Validate};
use crate::store::CredName;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    name: String,
    description: String,
    #[serde(default)]
    aliases: Vec<String>,
    hosts: Vec<String>,
    inject: Option<Inject>,
    #[serde(default)]
    source_env: Vec<String>,
    container_env: Option<String>,
    validate: Option<ValidateDoc>,
    prompt: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inject {
    header: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateDoc {
    url: String,
    method: Option<String>,
    header: Option<String>,
    prefix: Option<String>,
}

/// A provider file that failed to load: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct YamlError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// 1-based line of the first top-level `field:` key, for errors found after parsing.
fn line_of(text: &str, field: &str) -> usize {
    let key = format!("{field}:");
    text.lines()
        .position(|l| l.starts_with(&key))
        .map(|i| i + 1)
        .unwrap_or(1)
}

pub fn parse(text: &str, file: &Path, origin: Origin) -> Result<Provider, YamlError> {
    let file_name = file.display().to_string();
    let at = |field: &str, message: String| YamlError {
        file: file_name.clone(),
        line: line_of(text, field),
        message,
    };
    let doc: Doc = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(1);
        let mut message = e.to_string();
        // The location is already in front; keep the message itself.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        YamlError {
            file: file_name.clone(),
            line,
            message,
        }
    })?;

    let name = CredName::parse(&doc.name).map_err(|e| at("name", format!("field 'name': {e}")))?;
    if doc.name.contains(':') {
        return Err(at(
            "name",
            "field 'name': ':' is reserved for ssh:<host> grants".into(),
        ));
    }
    if doc.description.trim().is_empty() {
        return Err(at(
            "description",
            "field 'description' must not be empty".into(),
        ));
    }
    if doc.hosts.is_empty() {
        return Err(at(
            "hosts",
            "field 'hosts' must list at least one host".into(),
        ));
    }
    let hosts = doc
        .hosts
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at("hosts", format!("field 'hosts': {e}")))?;
    for alias in &doc.aliases {
        CredName::parse(alias).map_err(|e| at("aliases", format!("field 'aliases': {e}")))?;
    }
    let env_ok =
        |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if let Some(bad) = doc.source_env.iter().find(|v| !env_ok(v)) {
        return Err(at(
            "source_env",
            format!("field 'source_env': '{bad}' is not an environment variable name"),
        ));
    }
    if let Some(bad) = doc.container_env.as_deref().filter(|v| !env_ok(v)) {
        return Err(at(
            "container_env",
            format!("field 'container_env': '{bad}' is not an environment variable name"),
        ));
    }
    let injection = match (&doc.inject, &doc.container_env) {
        (Some(inject), _) => {
            if !valid_header_name(&inject.header) {
                return Err(at(
                    "inject",
                    format!(
                        "field 'inject.header': '{}' is not a valid HTTP header name",
                        inject.header
                    ),
                ));
            }
            Injection::Headers(vec![HeaderRule {
                hosts: hosts.clone(),
                header: inject.header.clone(),
                value: HeaderValue::Prefixed(inject.prefix.clone()),
            }])
        }
        (None, Some(_)) => Injection::Substitute,
        (None, None) => {
            return Err(at(
                "inject",
                "missing field 'inject.header' (required unless 'container_env' is set for token substitution)".into(),
            ));
        }
    };
    let validate = match doc.validate {
        None => None,
        Some(v) => {
            if !v.url.starts_with("https://") && !v.url.starts_with("http://") {
                return Err(at(
                    "validate",
                    format!("field 'validate.url': '{}' is not an http(s) URL", v.url),
                ));
            }
            if let Some(h) = v.header.as_deref().filter(|h| !valid_header_name(h)) {
                return Err(at(
                    "validate",
                    format!("field 'validate.header': '{h}' is not a valid HTTP header name"),
                ));
            }
            let method = v
                .method
                .unwrap_or_else(|| "GET".into())
                .to_ascii_uppercase();
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(at(
                    "validate",
                    format!("field 'validate.method': '{method}' is not an HTTP method"),
                ));
            }
            Some(Validate {
                url: v.url,
                method,
                header: v.header,
                prefix: v.prefix.unwrap_or_default(),
                extra_headers: Vec::new(),
                confirm: false,
            })
        }
    };
    let placeholder = doc.container_env.as_ref().map(|_| match injection {
        Injection::Substitute => Format::Substitution,
        _ => Format::prefixed("moat-", 32, Alphabet::Hex),
    });
    Ok(Provider {
        title: doc.name.clone(),
        name: name.as_str().to_owned(),
        description: doc.description.trim().to_owned(),
        aliases: doc.aliases,
        hosts,
        injection,
        source_env: doc.source_env,
        container_env: doc.container_env,
        placeholder,
        validate,
        prompt: doc.prompt.map(|p| p.trim_end().to_owned()),
        flow: Flow::Token,
        origin,
        response_hosts: Vec::new(),
        local: None,
        source_command: None,
    })
}

fn valid_header_name(h: &str) -> bool {
    http::HeaderName::from_bytes(h.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Provider, YamlError> {
        parse(text, Path::new("p.yaml"), Origin::Custom("p.yaml".into()))
    }

    #[test]
    fn full_schema() {
        let p = load(
            "name: acme\ndescription: Acme API\naliases: [ac]\nhosts: [\"api.acme.test\", \"*.acme.test\"]\n\
             inject:\n  header: Authorization\n  prefix: \"Bearer \"\nsource_env: [ACME_TOKEN]\ncontainer_env: ACME_TOKEN\n\
             validate:\n  url: https://api.acme.test/me\n  method: post\nprompt: |\n  Paste it\n",
        )
        .unwrap();
        assert_eq!(p.name, "acme");
        assert!(p.is_named("ac"));
        assert_eq!(p.hosts.len(), 2);
        assert_eq!(p.validate.as_ref().unwrap().method, "POST");
        assert_eq!(p.prompt.as_deref(), Some("Paste it"));
        assert!(matches!(p.injection, Injection::Headers(_)));
    }

    #[test]
    fn substitution_mode_without_header() {
        let p =
            load("name: bot\ndescription: d\nhosts: [api.bot.test]\ncontainer_env: BOT_TOKEN\n")
                .unwrap();
        assert_eq!(p.injection, Injection::Substitute);
        assert_eq!(p.placeholder, Some(Format::Substitution));
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = load("name: x\ndescription: d\nhosts: [a.test]\n").unwrap_err();
        assert!(e.message.contains("inject.header"), "{e}");
        let e = load("name: x\ndescription: d\n").unwrap_err();
        assert!(e.message.contains("missing field `hosts`"), "{e}");
        let e =
            load("name: x\ndescription: d\nhosts: [a.test]\ninject:\n  header: X\n  prefx: y\n")
                .unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("prefx"), "{e}");
        let e = load("name: x\ndescription: d\nhosts:\n  - 'bad host'\ninject: {header: X}\n")
            .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().starts_with("p.yaml:3: field 'hosts'"), "{e}");
        let e = load("name: x\n  description: [\n").unwrap_err();
        assert!(e.line >= 1, "{e}");
        let e = load("name: Bad Name\ndescription: d\nhosts: [a.test]\ninject: {header: X}\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("p.yaml:1: field 'name'"), "{e}");
    }
}
