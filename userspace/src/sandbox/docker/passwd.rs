//! The container's user gets an `/etc/passwd` entry when the image has none
//! for its uid: `ssh` (and git over ssh, `whoami`, …) refuse to run for a
//! user they cannot look up. The image's file is read and written back
//! through the engine's archive API before the container starts; the entry
//! names HOME, [`super::HOME_INSIDE`].

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

/// A ustar archive of one regular file `name` (root's, mode 0644).
pub fn one_file(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], bytes.len() as u64);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(bytes);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
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
            bollard::body_full(one_file("passwd", new.as_bytes()).into()),
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
    fn the_archive_round_trips_one_file() {
        let body = b"root:x:0:0:root:/root:/bin/sh\n";
        let tar = one_file("passwd", body);
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(first_file(&tar), Some(&body[..]));
        // The header checksum is what tar(1) computes.
        let sum: u32 = tar[..512]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        let stored = std::str::from_utf8(&tar[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(first_file(&tar[..100]), None);
    }
}
