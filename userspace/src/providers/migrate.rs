//! Claude credentials across the provider split: earlier Moat kept Claude
//! OAuth tokens under `anthropic`. Such a token is moved to `claude` on first
//! use, and a Claude agent picks `claude`, else `anthropic`.

use secrecy::ExposeSecret;

use super::builtin::CLAUDE_OAUTH_PREFIX;
use crate::store::{CredName, Store, StoreError};

/// What [`migrate_anthropic_oauth`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// Nothing to do: no `anthropic` credential, or it holds an API key.
    None,
    /// The OAuth token moved from `anthropic` to `claude`.
    Moved,
    /// Both hold a token; `anthropic`'s OAuth token was left where it is
    /// (nothing is deleted that was not copied) and cannot be injected as a
    /// key. The user revokes it.
    Conflict,
}

fn name(s: &str) -> CredName {
    CredName::parse(s).expect("static credential names are valid")
}

/// Move an OAuth token stored under `anthropic` to `claude`: copy, then
/// delete the old entry, so a crash in between leaves both, never neither.
pub fn migrate_anthropic_oauth(store: &Store) -> Result<Migration, StoreError> {
    let (anthropic, claude) = (name("anthropic"), name("claude"));
    let mut cred = match store.get(&anthropic) {
        Ok(c) => c,
        Err(StoreError::NotFound { .. }) => return Ok(Migration::None),
        Err(e) => return Err(e),
    };
    if !cred.token.expose_secret().starts_with(CLAUDE_OAUTH_PREFIX) {
        return Ok(Migration::None);
    }
    match store.get(&claude) {
        Ok(_) => return Ok(Migration::Conflict),
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    cred.provider = "claude".into();
    cred.metadata
        .insert("migrated_from".into(), "anthropic".into());
    store.put(&claude, &cred)?;
    store.delete(&anthropic)?;
    Ok(Migration::Moved)
}

/// The credential a Claude agent runs with: `claude` if stored, else
/// `anthropic`, after migrating an old OAuth token. `None` when neither is
/// stored; the caller tells the user to run `moat grant claude`.
pub fn claude_agent_grant(store: &Store) -> Result<Option<CredName>, StoreError> {
    migrate_anthropic_oauth(store)?;
    for candidate in ["claude", "anthropic"] {
        let n = name(candidate);
        match store.get(&n) {
            Ok(_) => return Ok(Some(n)),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What to tell a user who has no Claude credential.
pub const NO_CLAUDE_CREDENTIAL: &str = "no Claude credential stored; run 'moat grant claude' (Claude Pro/Max subscription) or 'moat grant anthropic' (API key)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::MoatHome;
    use crate::store::{Credential, keys};
    use secrecy::SecretString;

    fn store(dir: &std::path::Path) -> Store {
        let home = MoatHome::new(dir.to_owned(), None);
        let file = || Box::new(keys::FileBackend::new(home.clone()));
        let keys = keys::Keys::new(keys::Policy::File, file(), file());
        Store::new(home.clone(), None, keys)
    }

    fn put(s: &Store, n: &str, provider: &str, token: &str) {
        let c = Credential::new_static(provider, SecretString::from(token), "stdin");
        s.put(&name(n), &c).unwrap();
    }

    #[test]
    fn oauth_token_under_anthropic_moves_to_claude() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(claude_agent_grant(&s).unwrap(), None);
        put(&s, "anthropic", "anthropic", "sk-ant-oat01-old");
        assert_eq!(claude_agent_grant(&s).unwrap().unwrap().as_str(), "claude");
        let moved = s.get(&name("claude")).unwrap();
        assert_eq!(moved.provider, "claude");
        assert_eq!(moved.token.expose_secret(), "sk-ant-oat01-old");
        assert!(s.get(&name("anthropic")).is_err());
        assert_eq!(migrate_anthropic_oauth(&s).unwrap(), Migration::None);
    }

    #[test]
    fn api_key_stays_and_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "anthropic", "anthropic", "sk-ant-api03-key");
        assert_eq!(migrate_anthropic_oauth(&s).unwrap(), Migration::None);
        assert_eq!(
            claude_agent_grant(&s).unwrap().unwrap().as_str(),
            "anthropic"
        );
        put(&s, "claude", "claude", "sk-ant-oat01-new");
        assert_eq!(claude_agent_grant(&s).unwrap().unwrap().as_str(), "claude");
    }

    #[test]
    fn never_overwrites_an_existing_claude_credential() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        put(&s, "claude", "claude", "sk-ant-oat01-new");
        put(&s, "anthropic", "anthropic", "sk-ant-oat01-old");
        assert_eq!(migrate_anthropic_oauth(&s).unwrap(), Migration::Conflict);
        assert_eq!(
            s.get(&name("claude")).unwrap().token.expose_secret(),
            "sk-ant-oat01-new"
        );
        assert!(s.get(&name("anthropic")).is_ok());
    }
}
