//! `moat claude`, `moat codex`, `moat gemini`: what each agent CLI is (its
//! npm package and program), which grant it runs with, and what its
//! sandbox needs to start without prompts and without needless
//! connections (the environment, the files of its state directory). Pure;
//! the install cache is [`install`], the command `cli/agent.rs`.

pub mod install;

use std::path::PathBuf;

/// One of the agent CLIs Moat runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Claude,
    Codex,
    Gemini,
}

/// Where the installed CLI appears inside a native sandbox (read-only).
pub const INSTALL_INSIDE: &str = "/tmp/.moat/agent";

impl Agent {
    pub fn name(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
            Self::Gemini => "gemini",
        }
    }

    /// The npm package the CLI comes from.
    pub fn package(self) -> &'static str {
        match self {
            Self::Claude => "@anthropic-ai/claude-code",
            Self::Codex => "@openai/codex",
            Self::Gemini => "@google/gemini-cli",
        }
    }

    /// The package's program.
    pub fn bin(self) -> &'static str {
        self.name()
    }

    /// Its state directory, relative to the sandbox's HOME: kept per
    /// workspace between runs.
    pub fn state_dir(self) -> &'static str {
        match self {
            Self::Claude => ".claude",
            Self::Codex => ".codex",
            Self::Gemini => ".gemini",
        }
    }

    /// The grant it needs when the run names none of its own.
    pub fn default_grant(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "openai",
            Self::Gemini => "gemini",
        }
    }

    /// Variables that switch off telemetry, error reports and update
    /// checks (each CLI's documented ones), and point it at its state
    /// directory. `home` is the sandbox's HOME.
    pub fn env(self, home: &str) -> Vec<(String, String)> {
        let state = format!("{home}/{}", self.state_dir());
        let pairs: Vec<(&str, String)> = match self {
            Self::Claude => vec![
                ("CLAUDE_CONFIG_DIR", state),
                ("DISABLE_AUTOUPDATER", "1".into()),
                ("DISABLE_TELEMETRY", "1".into()),
                ("DISABLE_ERROR_REPORTING", "1".into()),
                ("DISABLE_BUG_COMMAND", "1".into()),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ],
            Self::Codex => vec![("CODEX_HOME", state)],
            Self::Gemini => vec![
                ("GEMINI_CLI_NO_RELAUNCH", "true".into()),
                // The workspace is the one the user gave Moat: trusted.
                ("GEMINI_CLI_TRUST_WORKSPACE", "true".into()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Files the state directory gets when it lacks them (the user's
    /// changes on later runs are kept): (path relative to the state
    /// directory, contents). `grant` is the credential the run uses.
    pub fn state_files(self, grant: &str) -> Vec<(PathBuf, String)> {
        match self {
            Self::Claude => {
                // API-key mode: Claude Code asks once whether to use a key it
                // finds in ANTHROPIC_API_KEY, by the key's last 20 characters;
                // the key is a placeholder, so there is nothing to approve here.
                let _ = grant;
                vec![(
                    ".claude.json".into(),
                    serde_json::json!({
                        "hasCompletedOnboarding": true,
                        "bypassPermissionsModeAccepted": true,
                        "autoUpdates": false,
                    })
                    .to_string(),
                )]
            }
            // The built-in provider ignores OPENAI_API_KEY in `exec` and tries
            // a WebSocket seven times before HTTPS; this one uses the key (a
            // placeholder: Moat's proxy holds the real one) and HTTPS. Codex's
            // own sandbox (bubblewrap) cannot start inside Moat's, which is
            // the boundary here. Plugins would fetch from chatgpt.com and
            // GitHub, analytics go to ab.chatgpt.com: off.
            Self::Codex => vec![(
                "config.toml".into(),
                "# Written by Moat on first run; yours to change.\n\
                 model_provider = \"openai-http\"\n\
                 sandbox_mode = \"danger-full-access\"\n\
                 check_for_update_on_startup = false\n\
                 \n\
                 [model_providers.openai-http]\n\
                 name = \"OpenAI (HTTPS)\"\n\
                 base_url = \"https://api.openai.com/v1\"\n\
                 env_key = \"OPENAI_API_KEY\"\n\
                 wire_api = \"responses\"\n\
                 supports_websockets = false\n\
                 \n\
                 [features]\nplugins = false\n\
                 \n\
                 [analytics]\nenabled = false\n\
                 \n\
                 [feedback]\nenabled = false\n\
                 \n\
                 [otel]\nexporter = \"none\"\n"
                    .into(),
            )],
            // An OAuth grant's own settings.json (Google login) is merged over
            // this one by the run (session: home files in a shown directory).
            Self::Gemini => {
                let _ = grant;
                let auth = "gemini-api-key";
                vec![(
                    "settings.json".into(),
                    serde_json::json!({
                        "security": {"auth": {"selectedType": auth}},
                        "privacy": {"usageStatisticsEnabled": false},
                        "telemetry": {"enabled": false},
                        "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false},
                    })
                    .to_string(),
                )]
            }
        }
    }
}

/// A workspace's state directory name: the workspace's last component and a
/// hash of its full path (`my-project-1a2b3c4d5e6f7081`).
pub fn workspace_key(workspace: &std::path::Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(workspace.as_os_str().as_encoded_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let base: String = workspace
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if base.is_empty() {
        tag
    } else {
        format!("{base}-{tag}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_workspace_has_its_own_state_key() {
        let a = workspace_key(std::path::Path::new("/srv/my project"));
        let b = workspace_key(std::path::Path::new("/home/u/my project"));
        assert!(a.starts_with("my_project-") && b.starts_with("my_project-"));
        assert_ne!(a, b);
        assert_eq!(a, workspace_key(std::path::Path::new("/srv/my project")));
        assert_eq!(workspace_key(std::path::Path::new("/")).len(), 16);
    }

    #[test]
    fn every_agent_points_its_state_into_home() {
        let claude = Agent::Claude.env("/tmp/home");
        assert!(claude.contains(&("CLAUDE_CONFIG_DIR".into(), "/tmp/home/.claude".into())));
        assert!(claude.iter().any(|(k, _)| k == "DISABLE_TELEMETRY"));
        let codex = Agent::Codex.env("/tmp/home");
        assert!(codex.contains(&("CODEX_HOME".into(), "/tmp/home/.codex".into())));
        for agent in [Agent::Claude, Agent::Codex, Agent::Gemini] {
            assert!(!agent.state_files("x").is_empty());
        }
    }
}
