//! TLS for deliveries: the trust anchors (Mozilla's, compiled in, plus the operator's own from
//! `KAPSEL_EXTRA_CA_FILE`) and the rustls client configuration every shard shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;

use crate::tls_error::TlsError;

/// The client configuration for https destinations: TLS 1.2 and 1.3 with rustls's safe
/// defaults and the ring provider, the webpki (Mozilla) roots plus every certificate in
/// `extra_ca_pem` (`KAPSEL_EXTRA_CA_FILE`), and ALPN `http/1.1`. Server certificates are
/// verified as usual (chain to a root, name, validity); there is no option to skip that.
///
/// # Errors
///
/// [`TlsError::Certificate`] when the extra file cannot be read or is not valid PEM, and
/// [`TlsError::NoCertificate`] when it holds no certificate that can serve as a trust anchor.
pub fn tls_client_config(extra_ca_pem: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_pem {
        add_extra_roots(&mut roots, path)?;
    }
    // The provider is named rather than taken from the process default, as for the server.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().map_err(
        // Only a provider without a cipher suite for the default versions fails here, which
        // ring's default provider is not; the error still gets a path to name.
        |source| TlsError::Unusable {
            certificate_path: extra_ca_pem.map_or_else(|| PathBuf::from("(webpki roots)"), Path::to_owned),
            key_path: PathBuf::new(),
            source,
        },
    )?;
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn add_extra_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), TlsError> {
    let failed = |source| TlsError::Certificate { path: path.to_owned(), source };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|source| match source {
            pem::Error::NoItemsFound => TlsError::NoCertificate { path: path.to_owned() },
            source => failed(source),
        })?
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    let (added, ignored) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    if ignored > 0 {
        // A bundle with one damaged entry should not stop deliveries to the destinations the
        // others serve; the operator learns of it here.
        tracing::warn!(path = %path.display(), ignored, added, "some certificates of the extra CA file are unusable");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_webpki_roots_are_always_trusted() {
        // Public destinations must work without any configuration.
        let config = tls_client_config(None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_bad_extra_ca_file_names_itself() {
        // A wrong KAPSEL_EXTRA_CA_FILE must stop the server at start with the file to fix,
        // not surface later as failed deliveries.
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing.pem");
        let error = tls_client_config(Some(&missing)).unwrap_err();
        assert!(matches!(error, TlsError::Certificate { .. }), "{error:?}");
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let empty = directory.path().join("empty.pem");
        std::fs::write(&empty, b"no PEM here\n").unwrap();
        let error = tls_client_config(Some(&empty)).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        assert!(error.to_string().contains("empty.pem"), "{error}");

        let garbage = directory.path().join("garbage.pem");
        std::fs::write(&garbage, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let error = tls_client_config(Some(&garbage)).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");

        let good = directory.path().join("ca.pem");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&good, generated.cert.pem()).unwrap();
        assert!(tls_client_config(Some(&good)).is_ok());
    }
}
