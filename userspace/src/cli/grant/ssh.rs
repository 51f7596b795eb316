//! `moat grant ssh --host HOST [--key FINGERPRINT|COMMENT]`: pick one key of
//! the host's SSH agent and store the host → public key mapping as
//! `ssh:HOST` (never a private key: it stays in the agent).

use std::io::IsTerminal as _;

use anyhow::{Context as _, Result, anyhow, bail};
use secrecy::SecretString;
use ssh_key::PublicKey;

use crate::store::Credential;

/// The metadata key of the stored key's fingerprint (`SHA256:…`).
pub const FINGERPRINT: &str = "fingerprint";
/// The metadata key of the host the grant is for.
pub const HOST: &str = "host";

const START_AGENT: &str =
    "start ssh-agent and ssh-add your key: eval \"$(ssh-agent -s)\" && ssh-add ~/.ssh/id_ed25519";

/// The host as stored (`ssh:HOST`): a lowercase name or address, no port.
pub fn host_name(raw: &str) -> Result<String> {
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.contains(':') || host.contains('/') || host.contains('@') {
        bail!(
            "--host takes a host name only, e.g. --host github.com (not '{raw}': the user and port do not matter to the grant)"
        );
    }
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        bail!("--host '{raw}' is not a host name");
    }
    Ok(host)
}

/// Which of the agent's `keys` `wanted` names: a fingerprint (with or
/// without `SHA256:`) or a comment; with no `wanted`, the only key.
/// `Ok(None)`: several keys and nothing chosen yet.
pub fn choose(keys: &[PublicKey], wanted: Option<&str>) -> Result<Option<usize>> {
    let print = |k: &PublicKey| crate::ssh::fingerprint(k.key_data());
    if keys.is_empty() {
        bail!("your SSH agent holds no keys; {START_AGENT}");
    }
    let Some(wanted) = wanted.map(str::trim) else {
        return Ok((keys.len() == 1).then_some(0));
    };
    let by_print = |k: &PublicKey| {
        let p = print(k);
        p == wanted || p.strip_prefix("SHA256:") == Some(wanted)
    };
    if let Some(i) = keys.iter().position(by_print) {
        return Ok(Some(i));
    }
    let named: Vec<usize> = (0..keys.len())
        .filter(|&i| keys[i].comment() == wanted)
        .collect();
    match named.as_slice() {
        [i] => Ok(Some(*i)),
        [] => bail!(
            "no key in your SSH agent matches --key '{wanted}'; it holds:\n{}",
            listing(keys)
        ),
        _ => bail!(
            "several keys in your SSH agent have the comment '{wanted}'; name one by fingerprint:\n{}",
            listing(keys)
        ),
    }
}

/// One line per key: `  N. COMMENT (SHA256:…)`.
fn listing(keys: &[PublicKey]) -> String {
    keys.iter()
        .enumerate()
        .map(|(i, k)| format!("  {}. {}", i + 1, describe(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe(k: &PublicKey) -> String {
    let comment = if k.comment().is_empty() {
        "(no comment)"
    } else {
        k.comment()
    };
    format!("{comment} ({})", crate::ssh::fingerprint(k.key_data()))
}

/// The keys of the agent at `SSH_AUTH_SOCK` (certificates left out).
fn agent_keys() -> Result<Vec<PublicKey>> {
    let sock = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            anyhow!("SSH_AUTH_SOCK is not set: no SSH agent to take a key from; {START_AGENT}")
        })?;
    let stream = std::os::unix::net::UnixStream::connect(&sock).map_err(|e| {
        anyhow!(
            "the SSH agent at SSH_AUTH_SOCK={} does not answer ({e}); {START_AGENT}",
            std::path::Path::new(&sock).display()
        )
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let ids = ssh_agent_lib::blocking::Client::new(stream)
        .request_identities()
        .map_err(|e| anyhow!("asking the SSH agent for its keys: {e}"))?;
    Ok(ids
        .into_iter()
        .filter_map(|id| match id.credential {
            ssh_agent_lib::proto::PublicCredential::Key(k) => Some(PublicKey::new(k, id.comment)),
            ssh_agent_lib::proto::PublicCredential::Cert(_) => None,
        })
        .collect())
}

/// Ask on the terminal which key to use.
fn ask(keys: &[PublicKey]) -> Result<usize> {
    eprintln!(
        "Your SSH agent holds {} keys:\n{}",
        keys.len(),
        listing(keys)
    );
    eprint!("Use which key for this host? [1-{}]: ", keys.len());
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the choice")?;
    match line.trim().parse::<usize>() {
        Ok(n) if (1..=keys.len()).contains(&n) => Ok(n - 1),
        _ => bail!(
            "'{}' is not one of 1-{}; run the command again, or name the key with --key",
            line.trim(),
            keys.len()
        ),
    }
}

pub fn obtain(host: &str, key: Option<&str>) -> Result<Credential> {
    let keys = agent_keys()?;
    let index = match choose(&keys, key)? {
        Some(i) => i,
        None if std::io::stdin().is_terminal() => ask(&keys)?,
        None => bail!(
            "your SSH agent holds {} keys; choose one with --key FINGERPRINT or --key COMMENT:\n{}",
            keys.len(),
            listing(&keys)
        ),
    };
    let chosen = &keys[index];
    eprintln!("Using key: {}", describe(chosen));
    let line = chosen
        .to_openssh()
        .context("writing the public key in OpenSSH form")?;
    let mut cred = Credential::new_static("ssh", SecretString::from(line), "ssh-agent");
    cred.metadata.insert(
        FINGERPRINT.into(),
        crate::ssh::fingerprint(chosen.key_data()),
    );
    cred.metadata.insert(HOST.into(), host.to_owned());
    if !chosen.comment().is_empty() {
        cred.metadata
            .insert("comment".into(), chosen.comment().to_owned());
    }
    Ok(cred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::public::{Ed25519PublicKey, KeyData};

    fn key(seed: u8, comment: &str) -> PublicKey {
        PublicKey::new(KeyData::Ed25519(Ed25519PublicKey([seed; 32])), comment)
    }

    #[test]
    fn host_names_are_plain_lowercase_names() {
        assert_eq!(host_name(" GitHub.com. ").unwrap(), "github.com");
        assert_eq!(host_name("10.0.0.2").unwrap(), "10.0.0.2");
        for bad in ["github.com:22", "git@github.com", "", "a b", "ssh://x"] {
            assert!(host_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_key_is_taken_several_need_a_choice() {
        let one = [key(1, "me@laptop")];
        assert_eq!(choose(&one, None).unwrap(), Some(0));
        let two = [key(1, "me@laptop"), key(2, "deploy")];
        assert_eq!(choose(&two, None).unwrap(), None);
        assert_eq!(choose(&two, Some("deploy")).unwrap(), Some(1));
        let print = crate::ssh::fingerprint(two[0].key_data());
        assert_eq!(choose(&two, Some(&print)).unwrap(), Some(0));
        let bare = print.strip_prefix("SHA256:").unwrap();
        assert_eq!(choose(&two, Some(bare)).unwrap(), Some(0));
    }

    #[test]
    fn no_keys_or_an_unknown_key_say_what_to_do() {
        let none = choose(&[], None).unwrap_err().to_string();
        assert!(
            none.contains("holds no keys") && none.contains("ssh-add"),
            "{none}"
        );
        let two = [key(1, "a"), key(2, "a")];
        let unknown = choose(&two, Some("b")).unwrap_err().to_string();
        assert!(
            unknown.contains("no key") && unknown.contains("SHA256:"),
            "{unknown}"
        );
        let twice = choose(&two, Some("a")).unwrap_err().to_string();
        assert!(twice.contains("by fingerprint"), "{twice}");
    }
}
