//! `dependencies:` in moat.yaml: what each entry names, checked when the
//! config is read; `sandbox/image.rs` turns them into a Dockerfile.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error(
        "dependency '{0}' is not one Moat knows how to install (known: python[@VERSION], \
         node[@MAJOR], or a Debian package name such as git, make, jq)"
    )]
    Unknown(String),
    #[error("dependency '{0}': {1}")]
    BadVersion(String, &'static str),
}

/// One entry of `dependencies:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dependency {
    /// `python` / `python@3.11`: Debian's python3 with pip and venv.
    Python(Option<String>),
    /// `node` / `node@20`: Node.js from NodeSource's apt repository.
    Node(Option<String>),
    /// Anything else: a Debian package (`git`, `jq`, `build-essential`, …).
    Apt(String),
}

impl Dependency {
    pub fn parse(spec: &str) -> Result<Self, ImageError> {
        let spec = spec.trim();
        let (name, version) = match spec.split_once('@') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (spec, None),
        };
        let valid_version = |v: &Option<String>, what: &'static str| match v {
            Some(v) if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit() || c == '.') => {
                Err(ImageError::BadVersion(spec.to_owned(), what))
            }
            _ => Ok(()),
        };
        match name {
            "python" | "python3" => {
                valid_version(&version, "expected python@MAJOR.MINOR, e.g. python@3.11")?;
                Ok(Self::Python(version))
            }
            "node" | "nodejs" => {
                valid_version(&version, "expected node@MAJOR, e.g. node@20")?;
                if version.as_deref().is_some_and(|v| v.contains('.')) {
                    return Err(ImageError::BadVersion(
                        spec.to_owned(),
                        "NodeSource ships major versions: node@20",
                    ));
                }
                Ok(Self::Node(version))
            }
            _ if version.is_none()
                && !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
                && name.starts_with(|c: char| c.is_ascii_alphanumeric()) =>
            {
                Ok(Self::Apt(name.to_owned()))
            }
            _ => Err(ImageError::Unknown(spec.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_forms() {
        assert_eq!(
            Dependency::parse("python@3.11"),
            Ok(Dependency::Python(Some("3.11".into())))
        );
        assert_eq!(
            Dependency::parse("node@20"),
            Ok(Dependency::Node(Some("20".into())))
        );
        assert_eq!(Dependency::parse("git"), Ok(Dependency::Apt("git".into())));
        assert!(matches!(
            Dependency::parse("node@20.1"),
            Err(ImageError::BadVersion(..))
        ));
        assert!(matches!(
            Dependency::parse("python@latest"),
            Err(ImageError::BadVersion(..))
        ));
        assert!(matches!(
            Dependency::parse("Git; rm -rf /"),
            Err(ImageError::Unknown(_))
        ));
        assert!(matches!(
            Dependency::parse("git@2"),
            Err(ImageError::Unknown(_))
        ));
    }
}
