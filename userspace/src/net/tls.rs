//! Trust for Moat's own upstream TLS: webpki roots, the system store, and
//! `MOAT_UPSTREAM_CA` (extra PEM roots, e.g. a corporate or test CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("MOAT_UPSTREAM_CA {path}: {reason}")]
    UpstreamCa { path: PathBuf, reason: String },
    #[error("building the TLS client: {0}")]
    Config(rustls::Error),
    #[error("building the TLS client: {0}")]
    Build(String),
}

/// Bundled webpki roots + the system store (a bonus: an unreadable one is
/// not fatal). Parses a few hundred certificates: a few milliseconds.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// The certificates of `MOAT_UPSTREAM_CA`, checked: every one must be usable.
fn extra_roots(extra_ca: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let Some(path) = extra_ca else {
        return Ok(Vec::new());
    };
    let err = |reason: String| TlsError::UpstreamCa {
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE blocks found".into()));
    }
    let mut check = RootCertStore::empty();
    for cert in &certs {
        check
            .add(cert.clone())
            .map_err(|e| err(format!("unusable certificate: {e}")))?;
    }
    Ok(certs)
}

/// Moat's two upstream client configs (HTTP/1.1 only, and h2 + HTTP/1.1),
/// built on a background thread: `moat run` starts its sandbox while the
/// system store loads, and the first upstream connection waits for it only
/// if it is not done yet. `MOAT_UPSTREAM_CA` is checked right away.
#[derive(Clone)]
pub struct ClientConfigs(Arc<ConfigsInner>);

struct ConfigsInner {
    extra: Vec<CertificateDer<'static>>,
    built: std::sync::OnceLock<Result<Configs, String>>,
}

type Configs = (Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>);

impl ClientConfigs {
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, TlsError> {
        let me = Self(Arc::new(ConfigsInner {
            extra: extra_roots(extra_ca)?,
            built: std::sync::OnceLock::new(),
        }));
        let early = me.clone();
        // If the thread cannot start, the first use builds them instead.
        let _ = std::thread::Builder::new()
            .name("moat-roots".into())
            .spawn(move || {
                early.get().ok();
            });
        Ok(me)
    }

    /// The configs (HTTP/1.1, h2); blocks while the background build runs.
    pub fn get(&self) -> Result<&Configs, TlsError> {
        self.0
            .built
            .get_or_init(|| {
                let mut roots = system_roots();
                roots.add_parsable_certificates(self.0.extra.iter().cloned());
                let h1 = client_config(roots.clone(), &[b"http/1.1"]).map_err(|e| e.to_string())?;
                let h2 = client_config(roots, &[b"h2", b"http/1.1"]).map_err(|e| e.to_string())?;
                Ok((h1, h2))
            })
            .as_ref()
            .map_err(|e| TlsError::Build(e.clone()))
    }
}

/// A client config trusting `roots`, offering `alpn`.
pub fn client_config(
    roots: RootCertStore,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
