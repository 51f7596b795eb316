//! A container registry stand-in: the pull half of the Docker Registry HTTP
//! API v2, over plain HTTP on 127.0.0.1 (engines treat loopback registries
//! as insecure-allowed), serving one image of one layer. For testing the
//! engine's pull path with no registry reachable.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use sha2::{Digest, Sha256};

/// The running registry; stops with the test process.
pub struct Registry {
    port: u16,
    repo: String,
    tag: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Registry {
    /// Serves `repo:tag`, an amd64 Linux image whose only layer is `layer_tar`
    /// (an uncompressed tar; engines detect the compression themselves).
    pub fn start(repo: &str, tag: &str, layer_tar: Vec<u8>) -> Result<Self> {
        let layer_digest = digest(&layer_tar);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "moat testkit registry"}],
        }))?;
        let config_digest = digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(),
                "digest": config_digest,
            },
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": layer_tar.len(),
                "digest": layer_digest,
            }],
        }))?;
        let manifest_digest = digest(&manifest);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let content = Arc::new(Content {
            manifest_paths: [
                format!("/v2/{repo}/manifests/{tag}"),
                format!("/v2/{repo}/manifests/{manifest_digest}"),
            ],
            manifest,
            manifest_digest,
            blobs: vec![
                (format!("/v2/{repo}/blobs/{config_digest}"), config),
                (format!("/v2/{repo}/blobs/{layer_digest}"), layer_tar),
            ],
        });
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (content, seen) = (content.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &content, &seen);
                });
            }
        });
        Ok(Self {
            port,
            repo: repo.into(),
            tag: tag.into(),
            requests,
        })
    }

    /// The image reference to pull: `127.0.0.1:PORT/REPO:TAG`.
    pub fn image(&self) -> String {
        format!("127.0.0.1:{}/{}:{}", self.port, self.repo, self.tag)
    }

    /// Every request so far, as `METHOD PATH`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

struct Content {
    manifest_paths: [String; 2],
    manifest: Vec<u8>,
    manifest_digest: String,
    blobs: Vec<(String, Vec<u8>)>,
}

/// One keep-alive connection: requests until the client closes it.
fn serve(conn: TcpStream, content: &Content, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        // Headers carry nothing this stand-in needs; skip to the blank line.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        seen.lock().unwrap().push(format!("{method} {path}"));
        let (status, ctype, body, extra): (&str, &str, &[u8], String) = if path == "/v2/" {
            ("200 OK", "application/json", b"{}", String::new())
        } else if content.manifest_paths.iter().any(|p| p == path) {
            (
                "200 OK",
                "application/vnd.docker.distribution.manifest.v2+json",
                &content.manifest,
                format!("Docker-Content-Digest: {}\r\n", content.manifest_digest),
            )
        } else if let Some((_, blob)) = content.blobs.iter().find(|(p, _)| p == path) {
            ("200 OK", "application/octet-stream", blob, String::new())
        } else {
            (
                "404 Not Found",
                "application/json",
                br#"{"errors":[{"code":"NAME_UNKNOWN","message":"not here"}]}"#,
                String::new(),
            )
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
             Docker-Distribution-API-Version: registry/2.0\r\n{extra}\r\n",
            body.len()
        )?;
        if method != "HEAD" {
            out.write_all(body)?;
        }
        out.flush()?;
    }
}
