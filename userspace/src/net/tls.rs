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
}

/// The root store: bundled webpki roots + system roots + extra PEM roots.
pub fn root_store(extra_ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system store is a bonus; an unreadable one is not fatal.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
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
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| err(format!("unusable certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// A client config trusting [`root_store`], offering `alpn`.
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
