//! Response serialisation: HTTP/1.1 status line, headers and body into a caller-owned buffer,
//! so a connection reuses one write buffer and allocates nothing per response.

use super::date::ImfFixdate;
use super::error::ParseError;
use super::request::Method;

/// The interim response that tells a client sending `Expect: 100-continue` to go on with the
/// body (RFC 9110 §15.2.1).
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase of each status Kapsel sends, empty for any other (RFC 9112 §4 makes the
/// phrase optional and tells clients to ignore it).
#[must_use]
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Appends a complete HTTP/1.1 response to `out`: [`write_response_head`], then the body unless
/// the status carries none.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    date: Option<&ImfFixdate>,
    extra_headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
    keep_alive: bool,
) {
    let bodyless = is_bodyless(status);
    debug_assert!(!bodyless || body.is_empty(), "status {status} cannot carry a body");
    write_response_head(out, status, date, extra_headers, content_type, body.len(), keep_alive);
    if !bodyless {
        out.extend_from_slice(body);
    }
}

/// Appends the status line and header section of a response whose content is
/// `content_length` bytes, and nothing after the empty line that ends them. That is the whole
/// answer to a `HEAD` request: RFC 9110 §9.3.2 asks for the header fields a `GET` would get,
/// `Content-Length` included, and no content (RFC 9112 §6.3 item 1: the client knows none
/// follows).
///
/// Writes the status line, `Date` when given, `Content-Type` when given, `extra_headers` in
/// order, `Content-Length`, an explicit `Connection: keep-alive` or `Connection: close`, and
/// the empty line. The Connection header is always sent because the head does not know the
/// request's version and an HTTP/1.0 client keeps a connection only when told to (RFC 9112
/// §9.3). A 1xx or 204 response carries no Content-Length (RFC 9110 §8.6, §15.3.5). Header
/// names and values are the server's own; one holding CR or LF is dropped rather than let it
/// split the response. This module does not read the clock: the caller passes the `Date`
/// (RFC 9110 §6.6.1: an origin server with a clock MUST send it on 2xx, 3xx and 4xx answers).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    date: Option<&ImfFixdate>,
    extra_headers: &[(&str, &str)],
    content_type: Option<&str>,
    content_length: usize,
    keep_alive: bool,
) {
    debug_assert!((100..=999).contains(&status), "status {status} is not three digits");
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(date) = date {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(content_type) = content_type {
        push_header(out, "Content-Type", content_type);
    }
    for (name, value) in extra_headers {
        push_header(out, name, value);
    }
    if !is_bodyless(status) {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, u64::try_from(content_length).unwrap_or(u64::MAX));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n" } else { b"Connection: close\r\n" });
    out.extend_from_slice(b"\r\n");
}

/// Whether a response with `status` has no content by definition (RFC 9110 §15.2, §15.3.5).
fn is_bodyless(status: u16) -> bool {
    status < 200 || status == 204
}

/// Appends the error response for `error`: its status, the JSON error body with its code and
/// message, and `Connection: close` when the error loses the framing. A 405 lists the methods
/// the parser accepts in `Allow`, which RFC 9110 §15.5.6 requires. `date` as for
/// [`write_response_head`].
pub fn write_error_response(out: &mut Vec<u8>, error: &ParseError, date: Option<&ImfFixdate>) {
    let body = error_body(error.code(), &error.message());
    let allow;
    let extra_headers: &[(&str, &str)] = if error.status() == 405 {
        allow = Method::ALL.map(Method::as_str).join(", ");
        &[("Allow", allow.as_str())]
    } else {
        &[]
    };
    let keep_alive = !error.closes_connection();
    write_response(out, error.status(), date, extra_headers, Some("application/json"), &body, keep_alive);
}

/// The JSON error body of the external contract: `{"error":{"code":"E1002","message":"…"}}`,
/// with both strings escaped per RFC 8259 §7.
#[must_use]
pub fn error_body(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + code.len() + message.len());
    body.extend_from_slice(br#"{"error":{"code":""#);
    push_json_string_contents(&mut body, code);
    body.extend_from_slice(br#"","message":""#);
    push_json_string_contents(&mut body, message);
    body.extend_from_slice(br#""}}"#);
    body
}

/// Appends `text` escaped for the inside of a JSON string. RFC 8259 §7: quotation mark, reverse
/// solidus and the control characters U+0000 to U+001F must be escaped; everything else,
/// including non-ASCII UTF-8, may appear as is.
fn push_json_string_contents(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'"' => out.extend_from_slice(br#"\""#),
            b'\\' => out.extend_from_slice(br"\\"),
            b'\n' => out.extend_from_slice(br"\n"),
            b'\r' => out.extend_from_slice(br"\r"),
            b'\t' => out.extend_from_slice(br"\t"),
            0x00..=0x1f => {
                const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(br"\u00");
                out.push(HEX_DIGITS[usize::from(byte >> 4)]);
                out.push(HEX_DIGITS[usize::from(byte & 0x0f)]);
            }
            _ => out.push(byte),
        }
    }
}

/// Appends `name: value` CRLF, unless either holds CR or LF.
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let splits_lines = |text: &str| text.bytes().any(|byte| byte == b'\r' || byte == b'\n');
    debug_assert!(!splits_lines(name) && !splits_lines(value), "header {name:?} holds CR or LF");
    if splits_lines(name) || splits_lines(value) {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` in decimal without allocating.
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    // u64::MAX has 20 decimal digits.
    let mut digits = [0_u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn response(
        status: u16,
        extra_headers: &[(&str, &str)],
        content_type: Option<&str>,
        body: &[u8],
        keep_alive: bool,
    ) -> String {
        let mut out = Vec::new();
        write_response(&mut out, status, None, extra_headers, content_type, body, keep_alive);
        String::from_utf8(out).unwrap()
    }

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn date() -> ImfFixdate {
        ImfFixdate::from_unix_seconds(784_111_777)
    }

    #[test]
    fn date_follows_the_status_line() {
        // RFC 9110 §6.6.1: an origin server with a clock sends Date; caches and clients compute
        // ages from it, so it must be there and be exactly the IMF-fixdate given.
        let mut out = Vec::new();
        write_response(&mut out, 200, Some(&date()), &[("X-A", "1")], Some("text/plain"), b"hi", true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nContent-Type: text/plain\r\nX-A: 1\r\nContent-Length: 2\r\n\
Connection: keep-alive\r\n\r\nhi"
            )
        );
    }

    #[test]
    fn head_of_a_response_announces_the_length_and_stops_at_the_empty_line() {
        // The answer to HEAD: a client reads the header section, knows no content follows, and
        // reads the next response right after it; one stray byte would desynchronise it.
        let mut whole = Vec::new();
        write_response(&mut whole, 200, Some(&date()), &[], Some("application/json"), b"{\"a\":1}", true);
        let mut head = Vec::new();
        write_response_head(&mut head, 200, Some(&date()), &[], Some("application/json"), 7, true);
        assert!(head.ends_with(b"Content-Length: 7\r\nConnection: keep-alive\r\n\r\n"));
        assert_eq!([head.as_slice(), b"{\"a\":1}"].concat(), whole);
        let mut no_content = Vec::new();
        write_response_head(&mut no_content, 204, None, &[], None, 0, false);
        assert_eq!(no_content, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn accepted_response_is_exact() {
        // Load generators and HTTP clients read these bytes directly; a wrong length or a
        // missing CRLF hangs or corrupts the connection.
        let body = br#"{"event_id":"evt_1","status":"received"}"#;
        assert_eq!(
            response(202, &[("Retry-After", "1")], Some("application/json"), body, true),
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: 40\r\n\
Connection: keep-alive\r\n\r\n{\"event_id\":\"evt_1\",\"status\":\"received\"}"
        );
    }

    #[test]
    fn no_content_carries_neither_length_nor_body() {
        // RFC 9110 §8.6 forbids Content-Length on 204; a client that trusts it would wait for
        // bytes that never come.
        assert_eq!(response(204, &[], None, b"", false), "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn empty_bodies_still_announce_their_length() {
        // Without Content-Length: 0 a keep-alive client cannot tell where the response ends.
        assert_eq!(
            response(200, &[], None, b"", true),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn every_status_used_has_its_reason_phrase() {
        // The contract's statuses must read as themselves in logs and captures.
        for (status, phrase) in [
            (200, "OK"),
            (201, "Created"),
            (202, "Accepted"),
            (204, "No Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (417, "Expectation Failed"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
        ] {
            assert_eq!(reason_phrase(status), phrase);
            assert!(response(status, &[], None, b"", true).starts_with(&format!("HTTP/1.1 {status} {phrase}\r\n")));
        }
        assert_eq!(reason_phrase(299), "");
    }

    #[test]
    fn error_body_matches_the_contract_and_escapes_json() {
        // Clients parse this body by the contract; an unescaped quote in a message would make
        // it invalid JSON exactly when something already went wrong.
        assert_eq!(
            error_body("E1002", "payload is larger than 10 bytes"),
            br#"{"error":{"code":"E1002","message":"payload is larger than 10 bytes"}}"#
        );
        assert_eq!(
            error_body("E1005", "a \"b\" \\ c\nd\u{1}é"),
            r#"{"error":{"code":"E1005","message":"a \"b\" \\ c\nd\u0001é"}}"#.as_bytes()
        );
    }

    #[test]
    fn parse_errors_become_closing_json_responses() {
        // The connection loop answers every parse error through this one path.
        let mut out = Vec::new();
        write_error_response(&mut out, &ParseError::PayloadTooLarge { limit_bytes: 10 }, Some(&date()));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(&format!(
                "HTTP/1.1 413 Content Too Large\r\nDate: {DATE}\r\nContent-Type: application/json\r\n"
            )),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with(r#"{"error":{"code":"E1002","message":"payload is larger than 10 bytes"}}"#));
        let mut out = Vec::new();
        write_error_response(&mut out, &ParseError::UnsupportedMethod, None);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n"), "{text}");
    }

    #[test]
    fn continue_interim_response_is_exact() {
        // A client waiting on Expect: 100-continue matches this status line byte for byte.
        assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn decimal_formatting_covers_the_extremes() {
        // Content-Length is written without allocating; zero and the widest value are the
        // edges of that hand-written loop.
        for value in [0, 7, 10, 4096, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }
}
