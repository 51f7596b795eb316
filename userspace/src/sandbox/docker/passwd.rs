//! The container's user gets an `/etc/passwd` entry when the image has none
//! for its uid: `ssh` (and git over ssh, `whoami`, …) refuse to run for a
//! user they cannot look up. The image's file is read and written back
//! through the engine's archive API before the container starts; the entry
//! names HOME, [`super::HOME_INSIDE`]. (The archive is
//! `image::one_file_tar`'s.)

use bollard::Docker;
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use futures_util::StreamExt as _;

/// The name the entry gets.
const USER: &str = "moat";
/// A passwd file larger than this is left alone.
const MAX_PASSWD: usize = 1 << 20;

/// `passwd` with a line for `uid` added, or `None` when it has one.
pub fn with_user(passwd: &str, (uid, gid): (u32, u32)) -> Option<String> {
    let has = passwd
        .lines()
        .any(|l| l.split(':').nth(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid));
    if has {
        return None;
    }
    let taken = passwd.lines().any(|l| l.split(':').next() == Some(USER));
    let name = if taken {
        format!("{USER}{uid}")
    } else {
        USER.to_owned()
    };
    let mut out = passwd.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "{name}:x:{uid}:{gid}:Moat sandbox user:{}:/bin/sh\n",
        super::HOME_INSIDE
    ));
    Some(out)
}

/// The first file's bytes in a tar archive (the engine sends one file).
pub fn first_file(tar: &[u8]) -> Option<&[u8]> {
    let header = tar.get(..512)?;
    let size = std::str::from_utf8(&header[124..136])
        .ok()?
        .trim_matches(|c: char| c == '\0' || c == ' ');
    let size = usize::from_str_radix(size, 8).ok()?;
    // '0' or NUL: a regular file (anything else, e.g. a symlink, is left alone).
    if !matches!(header[156], b'0' | 0) {
        return None;
    }
    tar.get(512..512 + size)
}

/// Give `user` an entry in the created (not yet started) container's
/// `/etc/passwd` if it has none. Best effort: an image without a readable
/// passwd file keeps it as it is.
pub async fn ensure(docker: &Docker, container: &str, user: (u32, u32)) {
    let mut tar = Vec::new();
    let mut stream = docker.download_from_container(
        container,
        Some(DownloadFromContainerOptions {
            path: "/etc/passwd".into(),
        }),
    );
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) if tar.len() + bytes.len() <= MAX_PASSWD + 1024 => {
                tar.extend_from_slice(&bytes)
            }
            Ok(_) => return,
            Err(e) => {
                tracing::debug!("the image's /etc/passwd: {e}");
                return;
            }
        }
    }
    let Some(passwd) = first_file(&tar).and_then(|b| std::str::from_utf8(b).ok()) else {
        return;
    };
    let Some(new) = with_user(passwd, user) else {
        return;
    };
    let upload = docker
        .upload_to_container(
            container,
            Some(UploadToContainerOptions {
                path: "/etc".into(),
                ..Default::default()
            }),
            bollard::body_full(
                crate::sandbox::image::one_file_tar("passwd", new.as_bytes()).into(),
            ),
        )
        .await;
    if let Err(e) = upload {
        tracing::warn!("adding uid {} to the container's /etc/passwd: {e}", user.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_a_line_only_for_an_unknown_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh";
        assert_eq!(with_user(passwd, (1000, 1000)), None);
        let added = with_user(passwd, (2147352576, 2147352576)).unwrap();
        assert!(added.starts_with(passwd), "{added}");
        assert!(
            added.ends_with("\nmoat:x:2147352576:2147352576:Moat sandbox user:/tmp/home:/bin/sh\n"),
            "{added}"
        );
        let taken = "moat:x:5:5::/:/bin/sh\n";
        assert!(with_user(taken, (7, 7)).unwrap().contains("\nmoat7:x:7:7:"));
    }

    #[test]
    fn reads_the_file_of_a_one_file_archive() {
        let body = b"root:x:0:0:root:/root:/bin/sh\n";
        let tar = crate::sandbox::image::one_file_tar("passwd", body);
        assert_eq!(first_file(&tar), Some(&body[..]));
        assert_eq!(first_file(&tar[..100]), None);
    }
}
