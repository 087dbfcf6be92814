//! Why TLS material could not be loaded: the one error of the server's certificate and key
//! (`server/tls.rs`, `KAPSEL_TLS_CERT`, `KAPSEL_TLS_KEY`) and of the client's extra trust anchors
//! (`client/tls.rs`, `KAPSEL_EXTRA_CA_FILE`). It sits beside `limits`, below both halves, so
//! that neither the server nor the client imports the other for it.

use std::path::PathBuf;

use rustls::pki_types::pem;

/// Why the TLS configuration could not be loaded. Each variant names the file at fault, so an
/// operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file cannot be read or is not valid PEM.
    #[error("cannot load the TLS certificate file {path}: {source}")]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What went wrong reading or decoding it.
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("the TLS certificate file {path} holds no PEM certificate")]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file cannot be read or is not valid PEM.
    #[error("cannot load the TLS private key file {path}: {source}")]
    PrivateKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong reading or decoding it.
        source: pem::Error,
    },
    /// The key file holds no PKCS #8, PKCS #1 or SEC1 private key.
    #[error("the TLS private key file {path} holds no PEM private key")]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// rustls refuses the pair: a key that does not match the certificate, or an unsupported
    /// key type.
    #[error("the TLS certificate {certificate_path} and private key {key_path} cannot be used: {source}")]
    Unusable {
        /// The certificate file.
        certificate_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}
