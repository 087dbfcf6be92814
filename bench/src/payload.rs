//! The bytes the client sends: a 1 KiB JSON webhook and the HTTP/1.1 requests around it.
//! Every request is built once and written as is, again and again.

use std::net::SocketAddr;

/// A JSON object of exactly `bytes` bytes that looks like a webhook: a few typed fields, then
/// padding in a string field.
///
/// # Errors
///
/// `bytes` is too small to hold the fixed fields.
pub fn json_body(bytes: usize) -> Result<Vec<u8>, String> {
    let prefix = br#"{"type":"invoice.paid","id":"evt_bench","created":1700000000,"data":{"amount":4200,"currency":"eur","customer":"cus_bench"},"padding":""#;
    let suffix = br#""}"#;
    let fixed = prefix.len() + suffix.len();
    if bytes < fixed {
        return Err(format!("a JSON body needs at least {fixed} bytes, not {bytes}"));
    }
    let mut body = Vec::with_capacity(bytes);
    body.extend_from_slice(prefix);
    body.resize(bytes - suffix.len(), b'x');
    body.extend_from_slice(suffix);
    debug_assert_eq!(body.len(), bytes);
    Ok(body)
}

/// A request with a `Host` for `address` and, when `body` is `Some`, `Content-Length` and
/// `Content-Type: application/json`. Header values are the caller's own and hold no CR or LF.
pub fn request(
    method: &str,
    path: &str,
    address: SocketAddr,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n");
    for (name, value) in headers {
        debug_assert!(!value.contains(['\r', '\n']), "header value with CR or LF");
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        out.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// `POST /ingest/{endpoint}` with `body`: what every load-test request is.
pub fn ingest_request(address: SocketAddr, endpoint: &str, body: &[u8]) -> Vec<u8> {
    request("POST", &format!("/ingest/{endpoint}"), address, &[], Some(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The issue asks for 1 KiB JSON bodies: exactly that size, and JSON a parser accepts.
    #[test]
    fn json_body_is_exact_and_valid() {
        for bytes in [200, 1024, 4096] {
            let body = json_body(bytes).unwrap();
            assert_eq!(body.len(), bytes);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["type"], "invoice.paid");
        }
        assert!(json_body(10).is_err());
    }

    // The request must frame its body exactly, or every keep-alive request after it breaks.
    #[test]
    fn ingest_request_frames_its_body() {
        let address: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let body = json_body(1024).unwrap();
        let bytes = ingest_request(address, "bench", &body);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("POST /ingest/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("Content-Length: 1024\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(bytes.ends_with(&body));
        let head = text.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(bytes.len() - head, 1024);
    }
}
