//! TLS for the listener: loading the certificate and key (`KAPSEL_TLS_CERT`,
//! `KAPSEL_TLS_KEY`) into a rustls configuration, and the handshake of each accepted stream
//! with monoio-rustls, whose stream is then served like a plain one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio_rustls::{ServerTlsStream, TlsAcceptor};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::connection::Transport;
use crate::tls_error::TlsError;

/// Loads a server configuration from PEM files: the certificate chain (leaf first) and its
/// private key. TLS 1.2 and 1.3 with rustls's safe defaults and the ring provider; ALPN
/// announces `http/1.1`.
///
/// # Errors
///
/// A [`TlsError`] naming the file that cannot be read, holds nothing usable, or does not fit
/// the other.
pub fn load_tls_config(cert_pem_path: &Path, key_pem_path: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let certificates = load_certificates(cert_pem_path)?;
    let key = PrivateKeyDer::from_pem_file(key_pem_path).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: key_pem_path.to_owned() },
        source => TlsError::PrivateKey { path: key_pem_path.to_owned(), source },
    })?;
    // The provider is named rather than taken from the process default, which is ambiguous
    // (and rustls panics) when some other crate in the binary enables a second provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certificates, key))
        .map_err(|source| TlsError::Unusable {
            certificate_path: cert_pem_path.to_owned(),
            key_path: key_pem_path.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |source| TlsError::Certificate { path: path.to_owned(), source };
    let certificates: Vec<_> =
        CertificateDer::pem_file_iter(path).map_err(failed)?.collect::<Result<_, _>>().map_err(failed)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certificates)
}

impl Transport for ServerTlsStream<TcpStream> {
    fn into_tcp(self) -> TcpStream {
        self.into_parts().0
    }
}

/// Runs the server side of the TLS handshake within `timeout`, which bounds what a client that
/// opens connections and never finishes a handshake can hold. A failure is the client's
/// (a plain-HTTP client, an unknown CA, a protocol mismatch) and is only logged.
pub(super) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<ServerTlsStream<TcpStream>> {
    match monoio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_at_fault() {
        // An operator who misconfigured KAPSEL_TLS_CERT or KAPSEL_TLS_KEY must see which file
        // to fix from the message alone.
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing.pem");
        let empty = directory.path().join("empty.pem");
        std::fs::write(&empty, b"").unwrap();

        let error = load_tls_config(&missing, &empty).unwrap_err();
        assert!(matches!(error, TlsError::Certificate { .. }), "{error:?}");
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let error = load_tls_config(&empty, &missing).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
        assert!(error.to_string().contains("empty.pem"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_there_is_named() {
        // The certificate loads; the key file is the one to blame.
        let directory = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let certificate = directory.path().join("cert.pem");
        let key = directory.path().join("key.pem");
        std::fs::write(&certificate, generated.cert.pem()).unwrap();
        std::fs::write(&key, b"not a key\n").unwrap();
        let error = load_tls_config(&certificate, &key).unwrap_err();
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
        assert!(error.to_string().contains("key.pem"), "{error}");

        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        let config = load_tls_config(&certificate, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
