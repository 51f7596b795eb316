//! What makes clients inside trust the Moat CA: a merged PEM bundle (the
//! system roots plus the Moat CA) for everything that reads PEM, and a
//! PKCS#12 truststore of the same certificates for Java, which reads neither
//! PEM bundles nor the variables other runtimes honour.
//!
//! Pure: bytes in, bytes out. Certificates are public, so the truststore's
//! password is Java's conventional `changeit`; it protects nothing.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Where distributions keep the system bundle (Debian/Ubuntu/Alpine first).
pub const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];
/// Password of the Java truststore (public certificates only).
pub const JAVA_PASSWORD: &str = "changeit";

/// The first system bundle that exists, or nothing (then only the Moat CA
/// is trusted inside).
pub fn system_bundle() -> Vec<u8> {
    SYSTEM_BUNDLES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_default()
}

/// System roots followed by the Moat CA.
pub fn merged_bundle(system: &[u8], moat_ca_pem: &str) -> Vec<u8> {
    let mut out = system.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(moat_ca_pem.as_bytes());
    out
}

#[derive(Debug, thiserror::Error)]
#[error("building the Java truststore: {0}")]
pub struct TrustError(String);

/// Every certificate of `bundle_pem` as a trusted entry of a PKCS#12 store.
pub fn java_truststore(bundle_pem: &[u8]) -> Result<Vec<u8>, TrustError> {
    let mut store = p12_keystore::KeyStore::new();
    for (i, der) in CertificateDer::pem_slice_iter(bundle_pem).enumerate() {
        let der = der.map_err(|e| TrustError(format!("certificate {i}: {e}")))?;
        // A malformed system certificate is skipped, not fatal.
        if let Ok(cert) = p12_keystore::Certificate::from_der(der.as_ref()) {
            store.add_entry(
                &format!("moat-{i}"),
                p12_keystore::KeyStoreEntry::Certificate(cert),
            );
        }
    }
    store
        .writer(JAVA_PASSWORD)
        .write()
        .map_err(|e| TrustError(e.to_string()))
}

/// `JAVA_TOOL_OPTIONS` pointing the JVM at the truststore at `path`.
pub fn java_tool_options(path: &str) -> String {
    format!(
        "-Djavax.net.ssl.trustStore={path} -Djavax.net.ssl.trustStorePassword={JAVA_PASSWORD} -Djavax.net.ssl.trustStoreType=PKCS12 -Djava.net.preferIPv4Stack=true"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_truststore_holds_every_certificate_of_the_bundle() {
        let bundle = merged_bundle(ca_pem("System Root").as_bytes(), &ca_pem("Moat CA (t)"));
        let p12 = java_truststore(&bundle).unwrap();
        let store = p12_keystore::KeyStore::from_pkcs12(
            &p12,
            JAVA_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::default(),
        )
        .unwrap();
        assert_eq!(store.entries_len(), 2);
        let subjects: Vec<String> = store
            .entries()
            .filter_map(|(_, e)| match e {
                p12_keystore::KeyStoreEntry::Certificate(c) => Some(c.subject().to_owned()),
                _ => None,
            })
            .collect();
        assert!(
            subjects.iter().any(|s| s.contains("Moat CA (t)")),
            "{subjects:?}"
        );
    }

    #[test]
    fn merged_bundle_ends_with_the_moat_ca() {
        let moat = ca_pem("Moat CA (t)");
        let merged = merged_bundle(
            b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----",
            &moat,
        );
        assert!(String::from_utf8(merged).unwrap().ends_with(&moat));
        assert_eq!(merged_bundle(b"", &moat), moat.as_bytes());
    }
}
