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

/// Digits of a send-time stamp: Unix microseconds, fixed width (16 digits from 2001 to 2286,
/// so the stamped body stays the same size and valid JSON).
pub const SENT_US_DIGITS: usize = 16;

/// The field a stamped body carries its send time in.
pub const SENT_US_FIELD: &str = "sent_us";

/// A JSON object of exactly `bytes` bytes whose first field is `"sent_us":` followed by
/// [`SENT_US_DIGITS`] digits (zeros until stamped), then padding; and the offset of those
/// digits in it. The delivery bench's sink reads the field back from the delivered body.
///
/// # Errors
///
/// `bytes` is too small to hold the fixed fields.
pub fn stamped_json_body(bytes: usize) -> Result<(Vec<u8>, usize), String> {
    let prefix = format!(r#"{{"{SENT_US_FIELD}":"#);
    let middle = br#","pad":""#;
    let suffix = br#""}"#;
    let fixed = prefix.len() + SENT_US_DIGITS + middle.len() + suffix.len();
    if bytes < fixed {
        return Err(format!("a stamped JSON body needs at least {fixed} bytes, not {bytes}"));
    }
    let mut body = Vec::with_capacity(bytes);
    body.extend_from_slice(prefix.as_bytes());
    body.resize(prefix.len() + SENT_US_DIGITS, b'0');
    body.extend_from_slice(middle);
    body.resize(bytes - suffix.len(), b'x');
    body.extend_from_slice(suffix);
    debug_assert_eq!(body.len(), bytes);
    Ok((body, prefix.len()))
}

/// Where a request carries its send time: the first of [`SENT_US_DIGITS`] digits, counted
/// back from the end of the request. The body comes last, so this is the same for every
/// request built around one body, whatever its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendTimeStamp {
    /// Bytes from the first digit to the end of the request.
    pub bytes_before_end: usize,
}

impl SendTimeStamp {
    /// The stamp of `body` (from [`stamped_json_body`], digits at `digits_at`).
    pub fn of_body(body: &[u8], digits_at: usize) -> Self {
        Self { bytes_before_end: body.len() - digits_at }
    }

    /// Writes `unix_us` into `request`, zero-padded to [`SENT_US_DIGITS`] digits; false (and
    /// nothing written) when the request is too short or the time does not fit.
    pub fn write(self, request: &mut [u8], unix_us: u64) -> bool {
        const LIMIT: u64 = 10_000_000_000_000_000;
        const _: () = assert!(LIMIT.ilog10() as usize == SENT_US_DIGITS);
        let Some(start) = request.len().checked_sub(self.bytes_before_end) else { return false };
        let Some(digits) = request.get_mut(start..start + SENT_US_DIGITS) else { return false };
        if unix_us >= LIMIT {
            return false;
        }
        let mut value = unix_us;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
        true
    }
}

/// Now, in microseconds since the Unix epoch: what a stamp holds. The sink on the same
/// machine subtracts it from its own reading of the same clock.
pub fn unix_micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
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

    // The sink reads the send time back from the delivered body: the stamp must land on the
    // placeholder's digits in every request built around the body, and keep it valid JSON.
    #[test]
    fn stamp_writes_the_send_time_into_the_body() {
        let (body, digits_at) = stamped_json_body(1024).unwrap();
        assert_eq!(body.len(), 1024);
        let stamp = SendTimeStamp::of_body(&body, digits_at);
        let address: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for endpoint in ["bench-0", "a-much-longer-endpoint-name"] {
            let mut bytes = ingest_request(address, endpoint, &body);
            assert!(stamp.write(&mut bytes, 1_732_860_000_123_456));
            let value: serde_json::Value = serde_json::from_slice(&bytes[bytes.len() - 1024..]).unwrap();
            assert_eq!(value[SENT_US_FIELD], 1_732_860_000_123_456u64);
        }
        let mut bytes = body.clone();
        assert!(stamp.write(&mut bytes, 42));
        assert!(bytes.starts_with(br#"{"sent_us":0000000000000042,"#));
        assert!(!stamp.write(&mut bytes, 10u64.pow(16)), "17 digits do not fit");
        assert!(!stamp.write(&mut [0u8; 10], 1), "too short a request");
        assert!(unix_micros_now() > 1_700_000_000_000_000);
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
