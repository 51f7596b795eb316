//! What no sandbox may ever show, whatever its workspace. [`masks`] and
//! [`check_workspace`] are pure; [`HostView::read`] and [`inside`] look at the
//! host.
//!
//! The workspace is the one host directory a run sees read-write, and it may
//! contain what Moat exists to keep out: `moat run ~` holds `~/.moat` (the
//! key and every sealed credential), a workspace may hold the agent socket
//! or a tool's token file. So the sandbox shapes its filesystem in this
//! order: hide whole directories (the real HOME, /root, /run, …), re-expose
//! the workspace, then put an empty read-only mount over every *mask* that
//! is still reachable, inside the workspace or not. A mask always wins over
//! the workspace; a workspace inside a mask is refused (it would be masked
//! away), so is one that is `$MOAT_HOME` or lies inside it.
//!
//! [`masks`] turns a [`HostView`] (the few facts read off the host: where
//! `$MOAT_HOME`, the real homes and the sockets are) into the list; every
//! runtime applies the same list (native init, Docker binds, env mode).

use std::path::{Component, Path, PathBuf};

/// A tool's credential file (or directory), relative to a real HOME: the
/// files Moat imports grants from. `.ssh/id_*` are found by [`HostView::read`].
pub const HOME_CREDENTIALS: [&str; 10] = [
    ".config/gh/hosts.yml",
    ".aws/credentials",
    ".aws/config",
    ".claude/.credentials.json",
    ".gemini/oauth_creds.json",
    ".config/gcloud",
    ".npmrc",
    ".netrc",
    ".git-credentials",
    ".docker/config.json",
];

/// Docker's engine socket, under both spellings.
pub const DOCKER_SOCKETS: [&str; 2] = ["/run/docker.sock", "/var/run/docker.sock"];

/// The facts about the host that decide what is masked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// `$MOAT_HOME`, made absolute.
    pub moat_home: PathBuf,
    /// The invoking user's real homes: `$HOME`, and under sudo the caller's.
    pub homes: Vec<PathBuf>,
    /// `~/.ssh/id_*` of each home (private and public keys alike).
    pub ssh_keys: Vec<PathBuf>,
    /// The host's `SSH_AUTH_SOCK`.
    pub ssh_auth_sock: Option<PathBuf>,
    /// The session bus socket (`DBUS_SESSION_BUS_ADDRESS=unix:path=…`),
    /// which reaches the keyring.
    pub session_bus: Option<PathBuf>,
    /// Paths moat.yaml's `unmask:` lets through.
    pub unmask: Vec<PathBuf>,
}

/// One path to cover, and why (for the one line `moat run` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub path: PathBuf,
    pub what: &'static str,
    /// May moat.yaml's `unmask:` let it through? Never for Moat's own
    /// state and the sockets that reach the keyring, the agent or Docker.
    pub unmaskable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error(
        "the workspace {} is Moat's own state directory ($MOAT_HOME) or lies inside it: \
         the sandbox would see the key and every credential. Choose a project directory \
         outside {}",
        workspace.display(), moat_home.display()
    )]
    WorkspaceInMoatHome {
        workspace: PathBuf,
        moat_home: PathBuf,
    },
    #[error(
        "the workspace {} lies inside {} ({what}), which no sandbox may see: \
         choose a directory outside it",
        workspace.display(), mask.display()
    )]
    WorkspaceInMask {
        workspace: PathBuf,
        mask: PathBuf,
        what: &'static str,
    },
    #[error(
        "moat.yaml unmask: {} cannot be unmasked ({what}); only tools' credential files can",
        path.display()
    )]
    NotUnmaskable { path: PathBuf, what: &'static str },
    #[error("moat.yaml unmask: {} is not a path Moat masks (nothing to unmask)", .0.display())]
    NotMasked(PathBuf),
}

/// Paths lexically normalised (`.` and `..` folded, no symlinks followed):
/// the host paths here are already canonical, moat.yaml's may not be.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

impl HostView {
    /// Read the view off this process's environment and the filesystem.
    /// `moat_home` is Moat's state directory; `extra_home` the sudo
    /// caller's home, if any.
    pub fn read(moat_home: &Path, extra_home: Option<&Path>, unmask: Vec<PathBuf>) -> Self {
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| normalize(p));
        let mut homes: Vec<PathBuf> = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| abs(Path::new(&h)))
            .into_iter()
            .chain(extra_home.map(abs))
            .collect();
        homes.dedup();
        let mut ssh_keys = Vec::new();
        for home in &homes {
            if let Ok(dir) = std::fs::read_dir(home.join(".ssh")) {
                for e in dir.flatten() {
                    if e.file_name().to_string_lossy().starts_with("id_") {
                        ssh_keys.push(e.path());
                    }
                }
            }
        }
        ssh_keys.sort();
        let session_bus = std::env::var("DBUS_SESSION_BUS_ADDRESS")
            .ok()
            .and_then(|a| bus_path(&a));
        Self {
            moat_home: abs(moat_home),
            homes,
            ssh_keys,
            ssh_auth_sock: std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(|s| abs(Path::new(&s))),
            session_bus,
            unmask: unmask.iter().map(|p| abs(p)).collect(),
        }
    }
}

/// The socket path of a D-Bus address (`unix:path=/run/user/1000/bus,guid=…`);
/// abstract addresses have none (the network namespace already keeps
/// those out of reach).
pub fn bus_path(address: &str) -> Option<PathBuf> {
    address.split(';').find_map(|one| {
        let rest = one.strip_prefix("unix:")?;
        rest.split(',')
            .find_map(|kv| kv.strip_prefix("path="))
            .map(PathBuf::from)
    })
}

/// Every mask of `view`, deepest last, without the ones `unmask:` lets
/// through; refuses an `unmask:` of what may not be unmasked.
pub fn masks(view: &HostView) -> Result<Vec<Mask>, MaskError> {
    let mut all = vec![Mask {
        path: view.moat_home.clone(),
        what: "Moat's key and credentials",
        unmaskable: false,
    }];
    let fixed = |path: PathBuf, what| Mask {
        path,
        what,
        unmaskable: false,
    };
    all.extend(
        view.ssh_auth_sock
            .clone()
            .map(|p| fixed(p, "the SSH agent")),
    );
    all.extend(
        view.session_bus
            .clone()
            .map(|p| fixed(p, "the keyring bus")),
    );
    all.push(fixed("/run/user".into(), "the keyring bus"));
    for s in DOCKER_SOCKETS {
        all.push(fixed(s.into(), "the Docker engine"));
    }
    for home in &view.homes {
        // Where accepted moat.yaml hashes are kept: not the sandbox's to edit.
        all.push(fixed(
            home.join(".config/moat"),
            "Moat's trusted configurations",
        ));
        for rel in HOME_CREDENTIALS {
            all.push(Mask {
                path: home.join(rel),
                what: "a tool's credentials",
                unmaskable: true,
            });
        }
    }
    for key in &view.ssh_keys {
        all.push(Mask {
            path: key.clone(),
            what: "an SSH key",
            unmaskable: true,
        });
    }
    for path in &view.unmask {
        match all.iter().find(|m| &m.path == path) {
            Some(m) if !m.unmaskable => {
                return Err(MaskError::NotUnmaskable {
                    path: path.clone(),
                    what: m.what,
                });
            }
            Some(_) => {}
            None => return Err(MaskError::NotMasked(path.clone())),
        }
    }
    all.retain(|m| !view.unmask.contains(&m.path));
    all.sort_by(|a, b| a.path.cmp(&b.path));
    all.dedup_by(|a, b| a.path == b.path);
    Ok(all)
}

/// Refuse a workspace that a mask would cover (or that is `$MOAT_HOME`).
pub fn check_workspace(workspace: &Path, view: &HostView, masks: &[Mask]) -> Result<(), MaskError> {
    if workspace.starts_with(&view.moat_home) {
        return Err(MaskError::WorkspaceInMoatHome {
            workspace: workspace.into(),
            moat_home: view.moat_home.clone(),
        });
    }
    match masks.iter().find(|m| workspace.starts_with(&m.path)) {
        Some(m) => Err(MaskError::WorkspaceInMask {
            workspace: workspace.into(),
            mask: m.path.clone(),
            what: m.what,
        }),
        None => Ok(()),
    }
}

/// The masks inside the workspace that exist: the ones `moat run` names.
pub fn inside<'a>(workspace: &Path, masks: &'a [Mask]) -> Vec<&'a Mask> {
    masks
        .iter()
        .filter(|m| m.path.starts_with(workspace) && std::fs::symlink_metadata(&m.path).is_ok())
        .collect()
}

/// An empty directory and an empty file in the run's directory, for the
/// masks to be bound from (read-only there, and read-only binds).
#[cfg(unix)]
pub fn empty_sources(run_dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let (dir, file) = (run_dir.join("mask-dir"), run_dir.join("mask-file"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&file, b"")?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444))?;
    Ok((dir, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> HostView {
        HostView {
            moat_home: "/home/u/.moat".into(),
            homes: vec!["/home/u".into()],
            ssh_keys: vec!["/home/u/.ssh/id_ed25519".into()],
            ssh_auth_sock: Some("/tmp/ssh-x/agent.1".into()),
            session_bus: Some("/run/user/1000/bus".into()),
            unmask: vec![],
        }
    }

    fn paths(m: &[Mask]) -> Vec<&Path> {
        m.iter().map(|m| m.path.as_path()).collect()
    }

    #[test]
    fn moat_home_sockets_and_credential_files_are_masked() {
        let m = masks(&view()).unwrap();
        let p = paths(&m);
        for want in [
            "/home/u/.moat",
            "/tmp/ssh-x/agent.1",
            "/run/user/1000/bus",
            "/run/user",
            "/run/docker.sock",
            "/var/run/docker.sock",
            "/home/u/.config/gh/hosts.yml",
            "/home/u/.aws/credentials",
            "/home/u/.aws/config",
            "/home/u/.claude/.credentials.json",
            "/home/u/.gemini/oauth_creds.json",
            "/home/u/.config/gcloud",
            "/home/u/.npmrc",
            "/home/u/.netrc",
            "/home/u/.git-credentials",
            "/home/u/.ssh/id_ed25519",
            "/home/u/.docker/config.json",
        ] {
            assert!(p.contains(&Path::new(want)), "{want} not in {p:?}");
        }
        assert!(!p.contains(&Path::new("/home/u/.ssh/known_hosts")));
        assert!(!p.contains(&Path::new("/home/u/.ssh/config")));
        assert!(
            !p.contains(&Path::new("/home/u")),
            "HOME itself is hidden, not masked"
        );
    }

    #[test]
    fn a_workspace_that_is_or_lies_in_moat_home_is_refused() {
        let v = view();
        let m = masks(&v).unwrap();
        for ws in ["/home/u/.moat", "/home/u/.moat/runs"] {
            let e = check_workspace(Path::new(ws), &v, &m).unwrap_err();
            assert!(matches!(e, MaskError::WorkspaceInMoatHome { .. }), "{e}");
            assert!(e.to_string().contains("outside /home/u/.moat"), "{e}");
        }
        let e = check_workspace(Path::new("/home/u/.config/gcloud/x"), &v, &m).unwrap_err();
        assert!(e.to_string().contains("a tool's credentials"), "{e}");
        // A workspace that *contains* masks is fine: they are masked inside it.
        for ws in ["/home/u", "/home", "/", "/home/u/project", "/home/u/.moatx"] {
            check_workspace(Path::new(ws), &v, &m).unwrap();
        }
    }

    #[test]
    fn unmask_lets_a_credential_file_through_but_never_moat_home_or_a_socket() {
        let mut v = view();
        v.unmask = vec!["/home/u/.npmrc".into()];
        let p = masks(&v).unwrap();
        assert!(!paths(&p).contains(&Path::new("/home/u/.npmrc")));
        assert!(paths(&p).contains(&Path::new("/home/u/.netrc")));
        for (path, what) in [
            ("/home/u/.moat", "Moat's key"),
            ("/tmp/ssh-x/agent.1", "SSH agent"),
            ("/run/docker.sock", "Docker"),
        ] {
            v.unmask = vec![path.into()];
            let e = masks(&v).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
        v.unmask = vec!["/home/u/notes.txt".into()];
        assert!(matches!(masks(&v).unwrap_err(), MaskError::NotMasked(_)));
    }

    #[test]
    fn both_homes_under_sudo_are_covered() {
        let mut v = view();
        v.homes = vec!["/root".into(), "/home/u".into()];
        let m = masks(&v).unwrap();
        let p = paths(&m);
        assert!(p.contains(&Path::new("/root/.netrc")));
        assert!(p.contains(&Path::new("/home/u/.netrc")));
    }

    #[test]
    fn bus_paths_and_lexical_normalisation() {
        assert_eq!(
            bus_path("unix:path=/run/user/1000/bus,guid=abc"),
            Some("/run/user/1000/bus".into())
        );
        assert_eq!(
            bus_path("unix:abstract=/tmp/dbus-x;unix:path=/tmp/b"),
            Some("/tmp/b".into())
        );
        assert_eq!(bus_path("unix:abstract=/tmp/dbus-x"), None);
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
