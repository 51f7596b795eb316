//! The provider model: which hosts a credential is for, how it is injected,
//! where `moat grant` finds it, and how it is validated.
//!
//! Built-in providers are Rust (one file each); shipped YAML providers live in
//! the top-level `providers/` directory, embedded at build time; users add
//! their own in `$MOAT_HOME/providers/*.yaml`.

pub mod bind;
pub mod hosts;
pub mod placeholder;
pub mod registry;
pub mod validate;
pub mod yaml;

pub mod builtin;
pub mod migrate;
pub mod oauth;
pub mod pkce;

use std::path::PathBuf;

pub use bind::{BindError, Binding, SandboxFile};
pub use hosts::HostPattern;
pub use placeholder::Format as PlaceholderFormat;
pub use registry::Registry;

/// Where a provider definition came from (and so what may override it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled Rust; never overridden.
    Builtin,
    /// YAML shipped inside the binary.
    Shipped,
    /// YAML in `$MOAT_HOME/providers/`.
    Custom(PathBuf),
}

impl Origin {
    pub fn label(&self) -> &'static str {
        match self {
            Origin::Builtin => "built-in",
            Origin::Shipped => "shipped",
            Origin::Custom(_) => "custom",
        }
    }
}

/// How the header value is built from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// `prefix + token` (`Bearer `, `token `, or nothing).
    Prefixed(String),
    /// `Basic base64(user:token)` (GitHub's git endpoints).
    Basic { user: String },
    /// A constant that goes with the credential (Claude's OAuth beta flag),
    /// added to the header's comma-separated list when the client's value
    /// lacks it (the client's own items stay).
    Fixed(String),
}

/// One header injected on a set of hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub hosts: Vec<HostPattern>,
    pub header: String,
    pub value: HeaderValue,
}

/// How the proxy puts the credential on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Set (replace) a header per host.
    Headers(Vec<HeaderRule>),
    /// Replace the placeholder with the token in path, query, headers, body.
    Substitute,
    /// Not HTTP header injection (AWS credential_process, SSH agent, npm's
    /// per-registry hosts, MCP's configured header): the provider's own code.
    Special(&'static str),
}

/// A validation request made by `moat grant` before saving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validate {
    /// May contain `${token}`.
    pub url: String,
    pub method: String,
    pub header: Option<String>,
    pub prefix: String,
    /// Fixed headers the API needs besides the credential (`anthropic-version`).
    pub extra_headers: Vec<(String, String)>,
    /// Ask on a terminal before validating (the request costs the user a call).
    pub confirm: bool,
}

/// A command that prints the token when its tool is installed and logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCommand {
    pub argv: Vec<String>,
    /// For messages: "gh CLI".
    pub label: &'static str,
    /// Recorded as the credential's source: "gh".
    pub id: &'static str,
}

/// How `moat grant <provider>` obtains the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// A single token: `--token-stdin`, `source_env`, then a hidden prompt.
    Token,
    /// Claude Code OAuth token: `claude setup-token`, paste, or import of
    /// `~/.claude/.credentials.json`.
    Claude,
    /// npm registries from `--host`, `~/.npmrc`, `NPM_TOKEN`, merged into one
    /// credential.
    Npm,
    /// A generic OAuth 2.0 credential (`moat grant oauth <name>`).
    Oauth,
    /// Gemini: import of the Gemini CLI's OAuth login, or an API key.
    Gemini,
    /// Meta: an access token plus optional app credentials for the daily
    /// long-lived token exchange.
    Meta,
    /// AWS: an IAM role assumed through STS (`moat grant aws --role ARN`);
    /// the record holds the role's configuration, never a key.
    Aws,
    /// SSH: a key of the host's agent for one host (`moat grant ssh --host
    /// HOST`); the record holds the public key only.
    Ssh,
    /// A provider-specific flow not in this build yet (the text says what to do).
    Pending(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    /// Human name for messages ("GitHub credential saved").
    pub title: String,
    pub description: String,
    pub aliases: Vec<String>,
    pub hosts: Vec<HostPattern>,
    pub injection: Injection,
    pub source_env: Vec<String>,
    pub container_env: Option<String>,
    pub placeholder: Option<PlaceholderFormat>,
    pub validate: Option<Validate>,
    pub prompt: Option<String>,
    pub flow: Flow,
    pub origin: Origin,
    /// A CLI that prints the token, tried before `source_env` (`gh auth token`).
    pub source_command: Option<SourceCommand>,
    /// Hosts whose responses may carry the real token (OAuth token
    /// endpoints): there the proxy replaces it by the placeholder, so it never
    /// reaches the sandbox.
    pub response_hosts: Vec<HostPattern>,
    /// Requests the proxy answers itself instead of forwarding them.
    pub local: Option<Local>,
}

/// Hosts whose requests the proxy answers itself (`proxy::local`), because
/// forwarding them would hand the sandbox a real token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub hosts: Vec<HostPattern>,
    pub answer: LocalAnswer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAnswer {
    /// Google's OAuth endpoint as the Gemini CLI uses it: a refresh carrying
    /// the placeholder refresh token is answered by Moat with placeholder
    /// tokens (Moat refreshes the real ones itself); other requests go
    /// upstream with the placeholder access token replaced by the real one
    /// and the real tokens replaced by placeholders in the answer.
    GoogleOauth {
        /// The scope the token response reports.
        scope: String,
    },
}

impl Provider {
    /// Refuse a token that is plainly for another provider (an Anthropic API
    /// key given to `claude`, an OAuth token given to `anthropic`); the
    /// message says which command takes it.
    pub fn check_token(&self, token: &str) -> Result<(), &'static str> {
        match (&self.origin, self.name.as_str()) {
            (Origin::Builtin, "anthropic") => builtin::anthropic::check_api_key(token),
            (Origin::Builtin, "claude") => builtin::claude::check_oauth_token(token),
            _ => Ok(()),
        }
    }

    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

fn hosts(list: &[&str]) -> Vec<HostPattern> {
    list.iter()
        .map(|h| HostPattern::parse(h).expect("built-in host patterns are valid"))
        .collect()
}
