//! The Moat CA and the leaf certificates it mints per intercepted host.
//!
//! The CA (ECDSA P-256, "Moat CA (<hostname>)") is created on first use as
//! `$MOAT_HOME/ca/ca.crt` (0644) and `ca.key` (0600). Leaves share one key,
//! are minted once per host even under concurrent first requests, and live in
//! a bounded LRU of ready-made rustls server configs (so session resumption
//! works per host).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::OnceCell;

use crate::home::MoatHome;
use crate::store::fsio;

/// How many hosts' leaves are kept.
pub const LEAF_CACHE: usize = 1024;
/// Leaves are valid this long, and re-minted when a day or less is left.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_RENEW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the Moat CA in {path} is unusable ({reason}); move the ca/ directory aside to create a new one (clients must then trust the new CA)"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error("minting a certificate for '{host}': {reason}")]
    Mint { host: String, reason: String },
}

type Slot = Arc<OnceCell<(Arc<ServerConfig>, SystemTime)>>;

pub struct MoatCa {
    cert_path: PathBuf,
    cert_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    alpn: Vec<Vec<u8>>,
    cache: std::sync::Mutex<lru::LruCache<String, Slot>>,
    minted: AtomicUsize,
}

impl std::fmt::Debug for MoatCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoatCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

pub fn cert_path(home: &MoatHome) -> PathBuf {
    home.root().join("ca").join("ca.crt")
}

impl MoatCa {
    /// Load the CA from `$MOAT_HOME/ca/`, creating it on first use.
    pub fn load_or_create(home: &MoatHome) -> Result<Self, CaError> {
        let dir = home.root().join("ca");
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let io = |op, path: &PathBuf| {
            let path = path.clone();
            move |cause| CaError::Io { op, path, cause }
        };
        if !key.exists() {
            let _lock = fsio::lock(home).map_err(io("lock", &home.lock_file()))?;
            if !key.exists() {
                home.ensure_dir(&dir).map_err(io("create", &dir))?;
                let (cert_pem, key_pem) = generate_ca()?;
                // Key first: a crash in between leaves a key without a cert,
                // which the next run detects and reports.
                fsio::write_atomic(home, &key, key_pem.as_bytes(), 0o600)
                    .map_err(io("write", &key))?;
                fsio::write_atomic(home, &crt, cert_pem.as_bytes(), 0o644)
                    .map_err(io("write", &crt))?;
            }
        }
        let key_pem =
            zeroize::Zeroizing::new(std::fs::read_to_string(&key).map_err(io("read", &key))?);
        let cert_pem = std::fs::read_to_string(&crt).map_err(io("read", &crt))?;
        let invalid = |reason: String| CaError::Invalid {
            path: dir.clone(),
            reason,
        };
        let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(format!("ca.key: {e}")))?;
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("ca.crt: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, ca_key)
            .map_err(|e| invalid(format!("ca.crt: {e}")))?;
        Self::from_parts(crt, cert_pem, ca_der, issuer)
    }

    fn from_parts(
        cert_path: PathBuf,
        cert_pem: String,
        ca_der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    ) -> Result<Self, CaError> {
        let leaf_key = KeyPair::generate().map_err(|e| CaError::Mint {
            host: "(leaf key)".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            cert_path,
            cert_pem,
            ca_der,
            issuer,
            leaf_key,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            cache: std::sync::Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(LEAF_CACHE).expect("non-zero"),
            )),
            minted: AtomicUsize::new(0),
        })
    }

    pub fn cert_path(&self) -> &PathBuf {
        &self.cert_path
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// How many leaves were minted (for tests and stats).
    pub fn minted(&self) -> usize {
        self.minted.load(Ordering::Relaxed)
    }

    /// The TLS server config presenting a leaf for `host` (a name or an IP).
    pub async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        loop {
            let slot = {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache
                    .get_or_insert(host.clone(), || Arc::new(OnceCell::new()))
                    .clone()
            };
            let (config, minted_at) = slot
                .get_or_try_init(|| async { self.mint(&host).map(|c| (c, SystemTime::now())) })
                .await?;
            if minted_at.elapsed().unwrap_or_default() < LEAF_VALIDITY - LEAF_RENEW {
                return Ok(config.clone());
            }
            // Nearly expired: drop this slot (if still current) and mint anew.
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.peek(&host).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                cache.pop(&host);
            }
        }
    }

    fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let err = |reason: String| CaError::Mint {
            host: host.to_owned(),
            reason,
        };
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| err(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| err(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut provider = rustls::crypto::ring::default_provider();
        prefer_fast_suites(&mut provider.cipher_suites, aes_in_hardware());
        let provider = Arc::new(provider);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key)
            .map_err(|e| err(e.to_string()))?;
        config.alpn_protocols = self.alpn.clone();
        // The client runs on this machine: what is fast here is fast for it.
        config.ignore_client_order = true;
        self.minted.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(config))
    }
}

/// Moat's cipher-suite preference for intercepted connections (applied over
/// the client's): AES-128-GCM where the CPU has AES instructions, else
/// ChaCha20-Poly1305. Either keeps the TLS 1.3 key schedule on SHA-256;
/// clients' usual first choice, AES-256-GCM, runs it on SHA-384, whose
/// SHA-512 blocks were 13 % of Moat's CPU per new connection (−10 % CPU and
/// +13 % connections/s measured with `oha --disable-keepalive -c 64`).
fn prefer_fast_suites(suites: &mut [rustls::SupportedCipherSuite], aes_hardware: bool) {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256};
    let first = if aes_hardware {
        TLS13_AES_128_GCM_SHA256
    } else {
        TLS13_CHACHA20_POLY1305_SHA256
    };
    suites.sort_by_key(|s| s.suite() != first); // stable: the rest keep their order
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes");
    #[allow(unreachable_code)]
    false
}

fn generate_ca() -> Result<(String, zeroize::Zeroizing<String>), CaError> {
    let err = |e: rcgen::Error| CaError::Mint {
        host: "(CA)".into(),
        reason: e.to_string(),
    };
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Moat CA ({host})"));
    dn.push(DnType::OrganizationName, "Moat");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_its_reason_once() {
        let e = CaError::Io {
            op: "lock",
            path: "/h/.moat/.lock".into(),
            cause: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let text = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(text.matches("permission denied").count(), 1, "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn creates_once_caches_leaves_and_mints_once_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let home = MoatHome::new(dir.path().join("m"), None);
        let ca = Arc::new(MoatCa::load_or_create(&home).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join("m/ca").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.crt"), 0o644);
        assert_eq!(mode("ca.key"), 0o600);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let again = MoatCa::load_or_create(&home).unwrap();
        assert_eq!(
            again.cert_pem(),
            ca.cert_pem(),
            "second load must reuse the CA"
        );

        let tasks: Vec<_> = (0..100)
            .map(|_| {
                tokio::spawn({
                    let ca = ca.clone();
                    async move { ca.server_config("API.example.test.").await.unwrap() }
                })
            })
            .collect();
        let mut configs = Vec::new();
        for t in tasks {
            configs.push(t.await.unwrap());
        }
        assert_eq!(
            ca.minted(),
            1,
            "100 concurrent first requests must mint once"
        );
        assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
        ca.server_config("127.0.0.1").await.unwrap();
        assert_eq!(ca.minted(), 2);
    }

    #[test]
    fn fast_suites_come_first_and_the_rest_keep_their_order() {
        use rustls::CipherSuite::*;
        let names = |aes| {
            let mut suites = rustls::crypto::ring::default_provider().cipher_suites;
            prefer_fast_suites(&mut suites, aes);
            suites.iter().map(|s| s.suite()).collect::<Vec<_>>()
        };
        let default: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        for (aes, first) in [
            (true, TLS13_AES_128_GCM_SHA256),
            (false, TLS13_CHACHA20_POLY1305_SHA256),
        ] {
            let got = names(aes);
            assert_eq!(got[0], first);
            let rest: Vec<_> = default.iter().copied().filter(|s| *s != first).collect();
            assert_eq!(got[1..], rest[..]);
        }
    }

    /// A client that offers AES-256-GCM first still gets the server's choice.
    #[tokio::test]
    async fn intercepted_connections_use_the_fast_suite() {
        let dir = tempfile::tempdir().unwrap();
        let home = MoatHome::new(dir.path().join("m"), None);
        let ca = Arc::new(MoatCa::load_or_create(&home).unwrap());
        let config = ca.server_config("api.x.test").await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        assert_eq!(
            client.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            "the client's own first choice"
        );
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(tokio_rustls::TlsAcceptor::from(config).accept(a));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("api.x.test".try_into().unwrap(), b)
            .await
            .unwrap();
        server.await.unwrap().unwrap();
        let want = if aes_in_hardware() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().unwrap().suite(),
            want
        );
    }

    #[test]
    fn garbage_ca_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let home = MoatHome::new(dir.path().join("m"), None);
        std::fs::create_dir_all(dir.path().join("m/ca")).unwrap();
        std::fs::write(dir.path().join("m/ca/ca.key"), "nope").unwrap();
        std::fs::write(dir.path().join("m/ca/ca.crt"), "nope").unwrap();
        let err = MoatCa::load_or_create(&home).unwrap_err().to_string();
        assert!(err.contains("unusable") && err.contains("ca.key"), "{err}");
    }
}
