//! Requests and answers between cluster nodes (ADR 17): a request for a partition another
//! node owns travels to it over NATS request/reply as the HTTP/1.1 message it was (re-read
//! there with the same parser, so the owner sees exactly what this node saw), and comes back as
//! its status, E-code, content type, header fields and body.
//!
//! Publishing to channels (ADR 13 across partitions) adds requests of nodes' own, on the same
//! subjects ([`Internal`]): a channel's owner hands deliveries to the owners of their endpoints'
//! partitions, and gathers a published event's deliveries from every partition. They start with
//! a byte no HTTP method starts with, so the owner tells them from forwarded requests.

use kapsel_http::{Limits, Parsed, Request, Response};

use crate::model::records::{Published, Record, KIND_ADOPTED};

/// The start of an [`Internal`] request: a NUL, which no HTTP request starts with.
const INTERNAL: &[u8] = b"\0kapsel\n";

/// A request of one node's to a partition's owner that no client made.
#[derive(Debug, PartialEq)]
pub enum Internal {
    /// Adopt these deliveries (each the channel owner's publish record with the deliveries of
    /// the asked partition): [`crate::shard::Shard::adopt`], answered once they are durable.
    Adopt(Vec<Published>),
    /// The deliveries of a published event this partition makes, as the admin API shows them
    /// (a JSON array); with `retry`, redrive them and answer how many.
    Deliveries {
        /// The published event.
        event_id: u128,
        /// Redrive instead of show.
        retry: bool,
    },
}

const TAG_ADOPT: u8 = 1;
const TAG_DELIVERIES: u8 = 2;

/// An internal request as bytes.
pub fn encode_internal(internal: &Internal) -> Result<Vec<u8>, String> {
    let mut bytes = INTERNAL.to_vec();
    match internal {
        Internal::Adopt(records) => {
            bytes.push(TAG_ADOPT);
            for record in records {
                let (_, body) = Record::Adopted(record.clone()).encode().map_err(|error| error.to_string())?;
                let length = u32::try_from(body.len()).map_err(|_| "an adoption is too large")?;
                bytes.extend_from_slice(&length.to_le_bytes());
                bytes.extend_from_slice(&body);
            }
        }
        Internal::Deliveries { event_id, retry } => {
            bytes.push(TAG_DELIVERIES);
            bytes.extend_from_slice(&event_id.to_le_bytes());
            bytes.push(u8::from(*retry));
        }
    }
    Ok(bytes)
}

/// An internal request encoded by [`encode_internal`]; `None` when `bytes` is a forwarded
/// HTTP request instead.
pub fn decode_internal(bytes: &[u8]) -> Option<Result<Internal, String>> {
    let rest = bytes.strip_prefix(INTERNAL)?;
    let mut reader = Reader { bytes: rest };
    Some((|| match reader.byte()? {
        TAG_ADOPT => {
            let mut records = Vec::new();
            while !reader.bytes.is_empty() {
                let length = reader.take(4)?;
                let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
                match Record::decode(KIND_ADOPTED, reader.take(length)?) {
                    Ok(Record::Adopted(record)) => records.push(record),
                    Ok(_) => return Err("an adoption holds another record".to_string()),
                    Err(error) => return Err(format!("an adoption does not decode: {error}")),
                }
            }
            Ok(Internal::Adopt(records))
        }
        TAG_DELIVERIES => {
            let id = reader.take(16)?;
            let mut event_id = [0u8; 16];
            event_id.copy_from_slice(id);
            Ok(Internal::Deliveries { event_id: u128::from_le_bytes(event_id), retry: reader.byte()? != 0 })
        }
        other => Err(format!("an internal request of unknown kind {other}")),
    })())
}

/// The header fields an answer may carry; anything else is not sent back.
const HEADERS: [&str; 8] = [
    "Allow",
    "Cache-Control",
    "Content-Security-Policy",
    "Location",
    "Referrer-Policy",
    "Retry-After",
    "WWW-Authenticate",
    "X-Content-Type-Options",
];

/// The E-codes of the external contract.
const CODES: [&str; 14] = [
    "E1001", "E1002", "E1003", "E1004", "E1005", "E2001", "E2002", "E2003", "E2004", "E2005", "E3001", "E3002",
    "E3003", "E3004",
];

/// The content types an answer may have.
const CONTENT_TYPES: [&str; 2] = ["application/json", "text/plain; version=0.0.4; charset=utf-8"];

/// The request as bytes: its head as it could have been sent, the body after it.
pub fn encode_request(request: &Request) -> Vec<u8> {
    let head = &request.head;
    let mut bytes = Vec::with_capacity(256 + request.body.len());
    bytes.extend_from_slice(head.method.as_str().as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(head.path.as_bytes());
    if let Some(query) = &head.query {
        bytes.push(b'?');
        bytes.extend_from_slice(query.as_bytes());
    }
    bytes.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &str, value: &[u8]| {
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    };
    for (name, value) in head.headers.iter() {
        field(name.as_str(), value);
    }
    for (name, value) in head.headers.others() {
        field(name, value);
    }
    if head.headers.get_other("host").is_none() {
        field("host", b"kapsel");
    }
    field("content-length", request.body.len().to_string().as_bytes());
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&request.body);
    bytes
}

/// A request encoded by [`encode_request`], read with the server's own parser and `limits`.
pub fn decode_request(bytes: &[u8], limits: &Limits, peer: std::net::SocketAddr) -> Result<Request, String> {
    match kapsel_http::parse_head(bytes, limits) {
        Ok(Parsed::Complete { head, head_length }) => {
            let body = bytes.get(head_length..).unwrap_or_default().to_vec();
            Ok(Request { head, body, peer })
        }
        Ok(Parsed::Partial) => Err("a forwarded request's head is cut short".into()),
        Err(error) => Err(format!("a forwarded request does not parse: {error}")),
    }
}

/// The answer as bytes: status, E-code, content type, header fields, body.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + response.body.len());
    bytes.extend_from_slice(&response.status.to_le_bytes());
    let short = |bytes: &mut Vec<u8>, text: &str| {
        let text = &text.as_bytes()[..text.len().min(255)];
        bytes.push(text.len() as u8);
        bytes.extend_from_slice(text);
    };
    short(&mut bytes, response.code.unwrap_or(""));
    short(&mut bytes, response.content_type.unwrap_or(""));
    let headers: Vec<&(&str, String)> =
        response.headers.iter().filter(|(name, value)| HEADERS.contains(name) && value.len() <= 0xFFFF).collect();
    bytes.push(headers.len().min(255) as u8);
    for (name, value) in headers.into_iter().take(255) {
        short(&mut bytes, name);
        bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
        bytes.extend_from_slice(value.as_bytes());
    }
    bytes.extend_from_slice(&response.body);
    bytes
}

/// An answer encoded by [`encode_response`]; names and codes outside the contract's are dropped.
pub fn decode_response(bytes: &[u8]) -> Result<Response, String> {
    let mut reader = Reader { bytes };
    let status = u16::from_le_bytes([reader.byte()?, reader.byte()?]);
    let code = reader.short()?;
    let content_type = reader.short()?;
    let mut response = Response::empty(status);
    response.code = CODES.iter().copied().find(|known| known.as_bytes() == code);
    response.content_type = match content_type {
        [] => None,
        given => {
            Some(CONTENT_TYPES.iter().copied().find(|known| known.as_bytes() == given).unwrap_or("application/json"))
        }
    };
    for _ in 0..reader.byte()? {
        let name = reader.short()?;
        let length = usize::from(u16::from_le_bytes([reader.byte()?, reader.byte()?]));
        let value = String::from_utf8_lossy(reader.take(length)?).into_owned();
        if let Some(name) = HEADERS.iter().copied().find(|known| known.as_bytes() == name) {
            response.headers.push((name, value));
        }
    }
    response.body = reader.bytes.to_vec();
    Ok(response)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        let (taken, rest) = self.bytes.split_at_checked(length).ok_or("a forwarded answer is cut short")?;
        self.bytes = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn short(&mut self) -> Result<&'a [u8], String> {
        let length = usize::from(self.byte()?);
        self.take(length)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Request {
        decode_request(text, &Limits::default(), "127.0.0.1:1".parse().unwrap()).unwrap()
    }

    // What the owner reads is what this node read: method, target, every header the engine
    // looks at (a provider's signature header among the others), the body byte for byte.
    #[test]
    fn a_request_survives_the_trip() {
        let original = parse(
            b"POST /ingest/orders?x=1 HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer t\r\nX-Idempotency-Key: k1\r\n\
              traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX-Shopify-Hmac-Sha256: c2ln\r\n\
              Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"\xff\"}\r\n",
        );
        let again = parse(&encode_request(&original));
        assert_eq!(again.head.method, original.head.method);
        assert_eq!((again.head.path.as_str(), again.head.query.as_deref()), ("/ingest/orders", Some("x=1")));
        assert_eq!(again.body, original.body);
        assert_eq!(again.head.headers.iter().collect::<Vec<_>>(), original.head.headers.iter().collect::<Vec<_>>());
        assert_eq!(again.head.headers.get_other("x-shopify-hmac-sha256"), Some(&b"c2ln"[..]));
    }

    // A node's own requests survive the trip and are told apart from forwarded ones.
    #[test]
    fn an_internal_request_survives_the_trip() {
        let asked = Internal::Deliveries { event_id: 7 << 70 | 5, retry: true };
        assert_eq!(decode_internal(&encode_internal(&asked).unwrap()), Some(Ok(asked)));
        let record = Published {
            event_id: 9,
            channel: "c".into(),
            tenant: "default".into(),
            event_type: "order.created".into(),
            received_at_ms: 1,
            idempotency_key: None,
            content_type: None,
            traceparent: None,
            tracestate: None,
            payload: b"{}".to_vec(),
            deliveries: vec![crate::model::records::Delivery { delivery_id: 10, endpoint_id: "a".into() }],
            handoffs: Vec::new(),
        };
        let adopt = Internal::Adopt(vec![record; 2]);
        assert_eq!(decode_internal(&encode_internal(&adopt).unwrap()), Some(Ok(adopt)));
        assert_eq!(decode_internal(b"POST /ingest/a HTTP/1.1\r\n\r\n"), None);
        assert!(matches!(decode_internal(b"\0kapsel\n\x01\x05\0\0\0ab"), Some(Err(_))));
    }

    #[test]
    fn an_answer_survives_the_trip() {
        let original = Response::error(503, "E3004", "partition 3 has no owner")
            .with_header("Retry-After", "1".to_string())
            .with_header("X-Not-Ours", "dropped".to_string());
        let again = decode_response(&encode_response(&original)).unwrap();
        assert_eq!((again.status, again.code, again.content_type), (503, Some("E3004"), Some("application/json")));
        assert_eq!(again.headers, vec![("Retry-After", "1".to_string())]);
        assert_eq!(again.body, original.body);
        assert!(decode_response(&[1]).is_err());
        let empty = decode_response(&encode_response(&Response::empty(204))).unwrap();
        assert_eq!((empty.status, empty.content_type, empty.body.len()), (204, None, 0));
    }
}
