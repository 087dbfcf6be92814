//! The HTTP details clients and proxies rely on, against the real binary over real TCP under
//! both io drivers: a `Date` on every answer, a bearer challenge on every 401, `HEAD` wherever
//! `GET` is served (without a byte of body on the wire), `Cache-Control: no-store` on the live
//! status paths, and a `Content-Length` that is one value on one line or a 400.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Response, Server, DRIVERS, TOKEN};

/// How far a `Date` may be from the test's own clock reading around the request: the server
/// renders it once a second, and the two clocks are the same machine's.
const DATE_SLACK_SECONDS: u64 = 5;

/// How long one read may take before the test calls it a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A signing secret for the endpoint whose ingest must be signed.
const INGEST_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The Unix seconds of an IMF-fixdate (RFC 9110 §5.6.7: `Sun, 06 Nov 1994 08:49:37 GMT`), read
/// strictly: the obsolete RFC 850 and asctime forms a recipient must accept are not what a
/// server may send. `None` for anything else, a weekday that does not match the date included.
fn imf_fixdate_seconds(text: &str) -> Option<u64> {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let number = |digits: &str, width: usize| -> Option<i64> {
        if digits.len() != width || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    if text.len() != 29 {
        return None;
    }
    let parts: Vec<&str> = text.split(' ').collect();
    let [day_name, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let day_name = day_name.strip_suffix(',')?;
    let month = i64::try_from(MONTHS.iter().position(|name| name == month)? + 1).ok()?;
    let (day, year) = (number(day, 2)?, number(year, 4)?);
    let clock: Vec<&str> = time.split(':').collect();
    let [hour, minute, second] = clock.as_slice() else { return None };
    let (hour, minute, second) = (number(hour, 2)?, number(minute, 2)?, number(second, 2)?);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if DAYS.get(usize::try_from(days.rem_euclid(7)).ok()?).copied() != Some(day_name) {
        return None;
    }
    u64::try_from(days * 86_400 + hour * 3_600 + minute * 60 + second).ok()
}

/// Asserts that `response` has exactly one `Date`, an IMF-fixdate within the slack of the
/// window the request was made in.
fn assert_dated(response: &Response, sent_at: u64, context: &str) {
    let dates: Vec<&str> = response
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("date"))
        .map(|(_, value)| value.as_str())
        .collect();
    let [date] = dates.as_slice() else { panic!("{context}: expected one Date header, got {dates:?}: {response:?}") };
    let seconds = imf_fixdate_seconds(date).unwrap_or_else(|| panic!("{context}: Date {date:?} is no IMF-fixdate"));
    let received_at = unix_now();
    assert!(
        seconds + DATE_SLACK_SECONDS >= sent_at && seconds <= received_at + DATE_SLACK_SECONDS,
        "{context}: Date {date} ({seconds}) is not within {DATE_SLACK_SECONDS} s of {sent_at}..={received_at}"
    );
}

/// Sends `bytes` on a fresh connection whose last request says `Connection: close`, and returns
/// everything the server wrote until it closed.
fn exchange(address: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.write_all(bytes).expect("send");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        // The server lingers and closes; a reset after its last byte loses nothing already read.
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!("reading until the server closed: {error}; got {:?}", String::from_utf8_lossy(&received)),
    }
    received
}

/// Splits the head (through the empty line) off the front of `bytes`.
fn split_head(bytes: &[u8]) -> (Response, &[u8]) {
    let end = bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(bytes)))
        + 4;
    let (status_line, headers, _) = common::parse_head(&bytes[..end]);
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (Response { status, headers, body: Vec::new() }, &bytes[end..])
}

/// Reads one response with its `Content-Length` body off the front of `bytes`.
fn split_response(bytes: &[u8]) -> (Response, &[u8]) {
    let (mut response, rest) = split_head(bytes);
    let length: usize = response.header("Content-Length").map_or(0, |value| value.parse().unwrap());
    assert!(rest.len() >= length, "body cut short: {:?}", String::from_utf8_lossy(bytes));
    response.body = rest[..length].to_vec();
    (response, &rest[length..])
}

fn request_bytes(method: &str, path: &str, fields: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: kapsel\r\n{fields}\r\n")
}

/// `HEAD path` then `GET path` pipelined on one connection, then a closing `GET /healthz`. The
/// HEAD answer must end at its empty line: the very next bytes are the GET's status line.
/// Returns the HEAD answer (without body) and the GET answer.
fn head_then_get(address: SocketAddr, path: &str, fields: &str) -> (Response, Response) {
    let pipeline = [
        request_bytes("HEAD", path, fields),
        request_bytes("GET", path, fields),
        request_bytes("GET", "/healthz", "Connection: close\r\n"),
    ]
    .concat();
    let received = exchange(address, pipeline.as_bytes());
    let (head, rest) = split_head(&received);
    assert!(
        rest.starts_with(b"HTTP/1.1 "),
        "HEAD {path}: bytes after the head are not the next response: {:?}",
        String::from_utf8_lossy(rest)
    );
    let (get, rest) = split_response(rest);
    let (last, rest) = split_response(rest);
    assert_eq!(last.status, 200, "the closing GET /healthz after HEAD {path}: {last:?}");
    assert!(rest.is_empty(), "bytes after the last response: {:?}", String::from_utf8_lossy(rest));
    (head, get)
}

/// A server with the endpoint `ok`, and its data directory (dropped after the server).
fn start(driver: &str) -> (tempfile::TempDir, Server) {
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), driver, &[]);
    server.create_endpoint("ok");
    (directory, server)
}

// RFC 9110 §6.6.1: an origin server with a clock MUST send Date on its 2xx, 3xx and 4xx
// answers; caches compute ages from it and clients compare it with Retry-After. Every kind of
// answer is here: the handler's, a refusal from the head, and the HTTP layer's own errors.
#[test]
fn every_answer_carries_a_current_imf_fixdate() {
    for driver in DRIVERS {
        let (_directory, server) = start(driver);
        let bearer = format!("Bearer {TOKEN}");
        let requests: Vec<(&str, Vec<u8>)> = vec![
            ("healthz", request_bytes("GET", "/healthz", "Connection: close\r\n").into_bytes()),
            (
                "ingest 202",
                b"POST /ingest/ok HTTP/1.1\r\nHost: k\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            ),
            (
                "admin 200",
                request_bytes(
                    "GET",
                    "/admin/endpoints/ok",
                    &format!("Authorization: {bearer}\r\nConnection: close\r\n"),
                )
                .into_bytes(),
            ),
            ("admin 401", request_bytes("GET", "/admin/endpoints/ok", "Connection: close\r\n").into_bytes()),
            ("unknown path 404", request_bytes("GET", "/nowhere", "Connection: close\r\n").into_bytes()),
            ("wrong method 405", request_bytes("DELETE", "/healthz", "Connection: close\r\n").into_bytes()),
            ("malformed 400", b"hello there\r\n\r\n".to_vec()),
            (
                "Content-Length list 400",
                b"POST /ingest/ok HTTP/1.1\r\nHost: k\r\nContent-Length: 2, 2\r\n\r\n{}".to_vec(),
            ),
        ];
        for (name, bytes) in requests {
            let context = format!("{driver}: {name}");
            let sent_at = unix_now();
            let received = exchange(server.address, &bytes);
            let (response, _) = split_response(&received);
            assert_ne!(response.status, 0, "{context}: {:?}", String::from_utf8_lossy(&received));
            assert_dated(&response, sent_at, &context);
        }
    }
}

// RFC 9110 §9.3.2: HEAD is GET without the content: the same status and header fields,
// Content-Length included, and not one byte of body, or a keep-alive client reads the body as
// its next response. Every GET path of the contract is checked, each pipelined before a GET.
#[test]
fn head_answers_every_get_path_like_get_without_a_body() {
    for driver in DRIVERS {
        let (_directory, server) = start(driver);
        let authorized = format!("Authorization: Bearer {TOKEN}\r\n");
        let event_id = common::ingest(&server, "ok", b"{}");
        // Paths whose answer does not change between the HEAD and the GET compare lengths too.
        let stable: [(&str, &str); 5] = [
            ("/healthz", ""),
            ("/readyz", ""),
            ("/admin/audit/segments", &authorized),
            ("/admin/events/evt_00000000000000000000000000", &authorized),
            ("/admin/endpoints/ok", ""),
        ];
        for (path, fields) in stable {
            let (head, get) = head_then_get(server.address, path, fields);
            let context = format!("{driver}: HEAD {path}");
            assert_eq!(head.status, get.status, "{context}: {head:?} vs {get:?}");
            assert_eq!(head.header("Content-Length"), Some(get.body.len().to_string().as_str()), "{context}");
            assert_eq!(head.header("Content-Type"), get.header("Content-Type"), "{context}");
            assert_eq!(head.header("WWW-Authenticate"), get.header("WWW-Authenticate"), "{context}");
            assert_eq!(head.header("Connection"), Some("keep-alive"), "{context}");
        }
        // These change as the server works (counters, attempts): status and presence of a
        // length are what HEAD must match.
        let moving = [
            ("/metrics".to_string(), String::new()),
            ("/admin/endpoints/ok".to_string(), authorized.clone()),
            ("/admin/events?endpoint_id=ok".to_string(), authorized.clone()),
            (format!("/admin/events/{event_id}"), authorized.clone()),
            (format!("/admin/events/{event_id}/proof"), authorized.clone()),
        ];
        for (path, fields) in moving {
            let (head, get) = head_then_get(server.address, &path, &fields);
            let context = format!("{driver}: HEAD {path}");
            assert_eq!(head.status, get.status, "{context}: {head:?} vs {get:?}");
            let length: usize = head.header("Content-Length").expect("Content-Length").parse().unwrap();
            assert!(length > 0, "{context}: a GET here has a body, so HEAD announces its length");
            assert_eq!(head.header("Content-Type"), get.header("Content-Type"), "{context}");
        }
    }
}

// HEAD is a GET in disguise, not a way around a path's method or its token: a POST-only path
// answers 405 naming its method, and an admin path without the token 401, both without body.
#[test]
fn head_is_refused_where_get_is() {
    for driver in DRIVERS {
        let (_directory, server) = start(driver);
        let (refused, get) = head_then_get(server.address, "/ingest/ok", "");
        assert_eq!((refused.status, get.status), (405, 405), "{driver}: {refused:?}");
        assert_eq!(refused.header("Allow"), Some("POST"), "{driver}");
        let (unauthorized, _) = head_then_get(server.address, "/admin/events", "");
        assert_eq!(unauthorized.status, 401, "{driver}: {unauthorized:?}");
        let (not_found, _) = head_then_get(server.address, "/nowhere", "");
        assert_eq!(not_found.status, 404, "{driver}: {not_found:?}");
        // A 405 from a GET-only path now lists HEAD beside GET.
        let wrong_method = server.request("POST", "/healthz", &[], b"");
        assert_eq!((wrong_method.status, wrong_method.header("Allow")), (405, Some("GET, HEAD")), "{driver}");
    }
}

// RFC 9110 §11.6.1: a 401 MUST carry a challenge, or a client cannot tell how to authenticate;
// that holds for the admin token and for an ingest refused for its signature alike.
#[test]
fn unauthorized_answers_carry_a_bearer_challenge() {
    for driver in DRIVERS {
        let (_directory, server) = start(driver);
        let endpoint = format!(r#"{{"url":"http://127.0.0.1:9/hook","ingest_secret":"{INGEST_SECRET}"}}"#);
        common::create(&server, "signed", &endpoint);
        let wrong = [("Authorization", "Bearer not-the-token")];
        let answers = [
            ("admin without a token", server.request("GET", "/admin/endpoints/ok", &[], b"")),
            ("admin with a wrong token", server.request("GET", "/admin/endpoints/ok", &wrong, b"")),
            ("unknown admin path", server.request("DELETE", "/admin/secrets", &[], b"")),
            ("ingest without a signature", server.request("POST", "/ingest/signed", &[], b"{}")),
            (
                "ingest with a bad signature",
                server.request(
                    "POST",
                    "/ingest/signed",
                    &[
                        ("webhook-id", "msg_1"),
                        ("webhook-timestamp", &unix_now().to_string()),
                        ("webhook-signature", "v1,AAAA"),
                    ],
                    b"{}",
                ),
            ),
        ];
        for (name, response) in answers {
            assert_eq!((response.status, response.code().as_str()), (401, "E1001"), "{driver}: {name}: {response:?}");
            assert_eq!(response.header("WWW-Authenticate"), Some("Bearer"), "{driver}: {name}: {response:?}");
        }
        let accepted = server.request("POST", "/ingest/ok", &[], b"{}");
        assert_eq!(accepted.status, 202);
        assert_eq!(accepted.header("WWW-Authenticate"), None, "{driver}: only 401s challenge");
    }
}

// A cache between a prober or a scraper and Kapsel that kept one answer would report a stopped
// or recovering shard as ready and counters as frozen, and an admin answer holds signing
// secrets: these paths say no-store, for GET and HEAD alike.
#[test]
fn live_status_and_admin_paths_are_never_stored() {
    for driver in DRIVERS {
        let (_directory, server) = start(driver);
        let token = format!("Authorization: Bearer {}\r\n", crate::common::TOKEN);
        for (path, authorization) in
            [("/healthz", ""), ("/readyz", ""), ("/metrics", ""), ("/admin/events", token.as_str())]
        {
            let (head, get) = head_then_get(server.address, path, authorization);
            assert_eq!(get.status, 200, "{driver}: GET {path}");
            for (method, response) in [("GET", &get), ("HEAD", &head)] {
                assert_eq!(
                    response.header("Cache-Control"),
                    Some("no-store"),
                    "{driver}: {method} {path}: {response:?}"
                );
            }
        }
    }
}

// RFC 9112 §6.3 would let `Content-Length: 1000,1000` through as 1000, but a proxy in front
// that frames the request otherwise is how requests get smuggled. A list, even of identical
// values, and a repeated field line are 400 E1005; the connection is closed (the framing is
// lost) and nothing is recorded.
#[test]
fn content_length_lists_and_repeats_are_refused() {
    for driver in DRIVERS {
        let (_directory, server) = start(driver);
        let body = "x".repeat(1000);
        let head = "POST /ingest/ok HTTP/1.1\r\nHost: kapsel\r\nX-Idempotency-Key: smuggled\r\n";
        let cases = [
            ("identical list", format!("{head}Content-Length: 1000,1000\r\n\r\n{body}")),
            ("identical list with spaces", format!("{head}Content-Length: 1000 , 1000\r\n\r\n{body}")),
            ("repeated identical line", format!("{head}Content-Length: 1000\r\nContent-Length: 1000\r\n\r\n{body}")),
            ("repeated differing line", format!("{head}Content-Length: 1000\r\ncontent-length: 5\r\n\r\n{body}")),
            ("differing list", format!("{head}Content-Length: 1000, 5\r\n\r\n{body}")),
        ];
        for (name, request) in cases {
            let context = format!("{driver}: {name}");
            // Whatever follows the refused request on the connection must not be served.
            let pipelined = format!("{request}{}", request_bytes("GET", "/healthz", ""));
            let received = exchange(server.address, pipelined.as_bytes());
            let (response, rest) = split_response(&received);
            assert_eq!((response.status, response.code().as_str()), (400, "E1005"), "{context}: {response:?}");
            assert_eq!(response.header("Connection"), Some("close"), "{context}");
            assert!(rest.is_empty(), "{context}: served after the refusal: {:?}", String::from_utf8_lossy(rest));
        }
        // None of them was taken as an event: the idempotency key they all carried is unused.
        let fresh = server.request("POST", "/ingest/ok", &[("X-Idempotency-Key", "smuggled")], b"{}");
        assert_eq!(fresh.status, 202, "{driver}: a refused request took its key: {fresh:?}");
    }
}
