//! A test PKI for TLS tests: shared by the root tests and kapsel-http's (included there by
//! path), so both trust the same kind of CA.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// A test PKI written to `directory`: (CA certificate, server certificate for localhost and
/// 127.0.0.1, server key), PEM files.
pub fn test_pki(directory: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Kapsel test CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_certificate = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_certificate = server_params.signed_by(&server_key, &issuer).unwrap();
    let paths = (directory.join("ca.pem"), directory.join("server.pem"), directory.join("server.key"));
    std::fs::write(&paths.0, ca_certificate.pem()).unwrap();
    std::fs::write(&paths.1, server_certificate.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}
