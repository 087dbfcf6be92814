//! W3C Trace Context (level 2) from the sender to the destination, through the real binary: the
//! delivery continues a valid trace with a fresh span, carries the sender's `tracestate` as one
//! combined list, and anything malformed or ambiguous starts a new trace instead of refusing the
//! event (a webhook is never lost over a tracing header).

use crate::common::sink::{Reply, Sink};
use crate::common::{self, create, Server};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Each case: the request's trace headers, whether the trace id is kept, the flags the child
/// carries (when kept), the tracestate the destination gets.
struct Case {
    what: &'static str,
    headers: &'static [(&'static str, &'static str)],
    keeps: Option<&'static str>,
    flags: Option<&'static str>,
    tracestate: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        what: "a valid parent and tracestate",
        headers: &[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7")],
        keeps: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        flags: Some("01"),
        tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    },
    Case {
        what: "tracestate on two lines is one list, in order",
        headers: &[("traceparent", PARENT), ("tracestate", "a=1"), ("tracestate", "b@vendor=2")],
        keeps: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        flags: Some("01"),
        tracestate: Some("a=1,b@vendor=2"),
    },
    Case {
        what: "the level-2 random flag is kept",
        headers: &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03")],
        keeps: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        flags: Some("03"),
        tracestate: None,
    },
    Case {
        what: "a higher version keeps its trace id",
        headers: &[
            ("traceparent", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"),
            ("tracestate", "a=1"),
        ],
        keeps: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        flags: Some("01"),
        tracestate: Some("a=1"),
    },
    Case {
        what: "an invalid tracestate is dropped, the trace kept",
        headers: &[("traceparent", PARENT), ("tracestate", "Upper=1")],
        keeps: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        flags: Some("01"),
        tracestate: None,
    },
    Case {
        what: "a repeated traceparent starts a new trace and drops tracestate",
        headers: &[("traceparent", PARENT), ("traceparent", PARENT), ("tracestate", "a=1")],
        keeps: None,
        flags: None,
        tracestate: None,
    },
    Case {
        what: "an invalid traceparent starts a new trace and drops tracestate",
        headers: &[("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), ("tracestate", "a=1")],
        keeps: None,
        flags: None,
        tracestate: None,
    },
    Case {
        what: "version ff is invalid",
        headers: &[("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        keeps: None,
        flags: None,
        tracestate: None,
    },
];

// Every case is accepted (202) and delivered with a valid version-00 traceparent; the trace,
// flags and tracestate are what the specification's processing model says.
#[test]
fn trace_context_reaches_the_destination_as_the_specification_says() {
    let sink = Sink::start(|_, _| Reply::status(200));
    let directory = tempfile::tempdir().unwrap();
    let server = Server::start(directory.path(), "legacy", &[]);
    create(&server, "traced", &format!(r#"{{"url":"{}","channels":["traces"]}}"#, sink.url("/t")));
    let mut expected = 0;
    for case in CASES {
        for path in ["/ingest/traced", "/publish/traces"] {
            let authorization = format!("Bearer {}", common::TOKEN);
            let mut headers = case.headers.to_vec();
            if path.starts_with("/publish/") {
                headers.push(("Authorization", &authorization));
            }
            let response = server.request("POST", path, &headers, b"{}");
            assert!(matches!(response.status, 202), "{}: {path}: {response:?}", case.what);
            expected += 1;
            let received = sink.wait_for(case.what, common::WAIT, |received| received.len() >= expected);
            let delivery = &received[expected - 1];
            let child = delivery.header("traceparent").unwrap_or_else(|| panic!("{}: no traceparent", case.what));
            let parts: Vec<&str> = child.split('-').collect();
            assert_eq!(parts.len(), 4, "{}: {child}", case.what);
            assert_eq!(parts[0], "00", "{}: children are version 00", case.what);
            assert!(parts[1].len() == 32 && parts[2].len() == 16, "{}: {child}", case.what);
            assert_ne!(parts[2], "00f067aa0ba902b7", "{}: a fresh span id", case.what);
            match case.keeps {
                Some(trace_id) => assert_eq!(parts[1], trace_id, "{}", case.what),
                None => assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "{}: a new trace", case.what),
            }
            if let Some(flags) = case.flags {
                assert_eq!(parts[3], flags, "{}", case.what);
            }
            assert_eq!(delivery.header("tracestate"), case.tracestate, "{}: {path}", case.what);
        }
    }
}
