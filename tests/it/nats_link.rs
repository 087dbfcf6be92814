//! The NATS link (`kapsel-nats`, ADR 17 step 4) against a real three-server JetStream cluster:
//! what cluster mode will stand on (publish acknowledgements, de-duplication, the empty-subject
//! check, ordered replay, the bucket, request/reply) must hold here before the engine uses it,
//! including across the death of a stream's leader.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use kapsel_nats::{Ensured, KvError, Link, LinkError, LinkOptions, Publish, PublishError, StreamSpec};

use crate::common::nats::NatsCluster;

/// The longest any one answer may take before the test calls it a stall: above a publish's retry
/// deadline (20 s).
const STALL: Duration = Duration::from_secs(60);

/// Awaits `future` on a small tokio runtime (the link needs none; this one only bounds the wait).
fn wait<T>(future: impl Future<Output = T>) -> T {
    wait_for("an answer", future)
}

/// [`wait`], naming what stalled.
fn wait_for<T>(what: &str, future: impl Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async { tokio::time::timeout(STALL, future).await }).unwrap_or_else(|_| panic!("stalled: {what}"))
}

/// A link to every server of `cluster`.
fn link(cluster: &NatsCluster, name: &str) -> Link {
    cluster.link(name)
}

/// A file stream of three replicas on `<prefix>.>`.
fn stream_r3(link: &Link, name: &str, prefix: &str) {
    let spec = StreamSpec {
        duplicate_window: Duration::from_secs(120),
        ..StreamSpec::new(name, vec![format!("{prefix}.>")], 3)
    };
    assert_eq!(wait(link.ensure_stream(spec.clone())).unwrap(), Ensured::Created);
    assert_eq!(wait(link.ensure_stream(spec)).unwrap(), Ensured::Unchanged, "ensure is idempotent");
}

fn keyed(subject: &str, payload: &[u8], msg_id: &str) -> Publish {
    Publish { msg_id: Some(msg_id.to_string()), ..Publish::new(subject, payload.to_vec()) }
}

// The shards run monoio, not tokio: the handle's calls and futures must work there, and a
// payload is read back by its sequence as the WAL reads by offset today.
#[test]
fn published_messages_are_read_back_by_sequence_from_a_monoio_runtime() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let link = link(&cluster, "monoio");
    stream_r3(&link, "READBACK", "rb");
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
    let sequences = runtime.block_on(async {
        let publishes: Vec<_> = (0..100)
            .map(|index| {
                let publish = Publish {
                    headers: vec![("Kapsel-Event-Id".into(), format!("evt_{index}"))],
                    ..Publish::new(format!("rb.{}", index % 2), format!("body {index}").into_bytes())
                };
                link.publish(publish)
            })
            .collect();
        let mut sequences = Vec::new();
        for publish in publishes {
            let ack = monoio::time::timeout(STALL, publish).await.unwrap().unwrap();
            assert_eq!(ack.stream, "READBACK");
            assert!(!ack.duplicate);
            sequences.push(ack.sequence);
        }
        let mut sorted = sequences.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=100).collect::<Vec<u64>>(), "each stored once, no gap");
        for (index, sequence) in sequences.iter().enumerate() {
            let message =
                monoio::time::timeout(STALL, link.get("READBACK", *sequence)).await.unwrap().unwrap().unwrap();
            assert_eq!(message.sequence, *sequence);
            assert_eq!(message.subject, format!("rb.{}", index % 2));
            assert_eq!(message.payload, format!("body {index}").into_bytes());
            assert_eq!(message.header("Kapsel-Event-Id"), Some(format!("evt_{index}").as_str()));
            assert!(message.time_ms > 1_600_000_000_000, "a wall-clock time: {}", message.time_ms);
        }
        assert_eq!(monoio::time::timeout(STALL, link.get("READBACK", 101)).await.unwrap().unwrap(), None);
        let last =
            monoio::time::timeout(STALL, link.last_on_subject("READBACK", "rb.0")).await.unwrap().unwrap().unwrap();
        let last_even = (0..100).step_by(2).map(|index| sequences[index]).max().unwrap();
        assert_eq!(last.sequence, last_even);
        let state = monoio::time::timeout(STALL, link.stream_state("READBACK")).await.unwrap().unwrap();
        assert_eq!((state.first_sequence, state.last_sequence, state.messages), (1, 100, 100));
        assert!(state.leader.is_some_and(|leader| cluster.index_of(&leader).is_some()), "led by one of ours");
        sequences
    });
    let counters = link.counters();
    assert_eq!((counters.publishes, counters.acks, counters.errors), (100, 100, 0));
    assert!(counters.direct_gets + counters.leader_gets >= 101);

    // Retention: everything below a sequence, then one subject.
    assert_eq!(wait(link.purge("READBACK", None, Some(51))).unwrap(), 50);
    assert_eq!(wait(link.get("READBACK", 50)).unwrap(), None);
    assert!(wait(link.get("READBACK", 51)).unwrap().is_some());
    let odd_left = (1..100).step_by(2).filter(|index| sequences[*index] >= 51).count() as u64;
    assert_eq!(wait(link.purge("READBACK", Some("rb.1".into()), None)).unwrap(), odd_left);
    let state = wait(link.stream_state("READBACK")).unwrap();
    assert_eq!((state.messages, state.last_sequence), (50 - odd_left, 100));
    assert_eq!(wait(link.last_on_subject("READBACK", "rb.1")).unwrap(), None);
    link.close();
    assert!(matches!(wait(link.publish(Publish::new("rb.0", vec![]))), Err(PublishError::Closed)));
}

// A publish retried after a lost acknowledgement must not store the event twice: the same
// `Nats-Msg-Id` within the window is answered as a duplicate of the first, at its sequence.
#[test]
fn a_repeated_msg_id_is_acknowledged_as_a_duplicate_at_the_first_sequence() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let link = link(&cluster, "dedup");
    stream_r3(&link, "DEDUP", "dd");
    let first = wait(link.publish(keyed("dd.in", b"first", "evt_1"))).unwrap();
    let other = wait(link.publish(keyed("dd.in", b"other", "evt_2"))).unwrap();
    let repeat = wait(link.publish(keyed("dd.in", b"changed body", "evt_1"))).unwrap();
    assert!(!first.duplicate && !other.duplicate);
    assert!(repeat.duplicate);
    assert_eq!(repeat.sequence, first.sequence);
    assert_eq!(wait(link.stream_state("DEDUP")).unwrap().messages, 2);
    assert_eq!(wait(link.get("DEDUP", first.sequence)).unwrap().unwrap().payload, b"first");
    assert_eq!(link.counters().duplicates, 1);
}

// Idempotency keys across nodes (ADR 17): the first publish to an empty key subject wins, and a
// repeat learns the first event's sequence from the refusal, to answer `duplicate` with it.
#[test]
fn an_empty_subject_check_lets_the_first_win_and_tells_a_repeat_its_sequence() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let link = link(&cluster, "empty-subject");
    stream_r3(&link, "KEYS", "ks");
    wait(link.publish(Publish::new("ks.in", b"unkeyed".to_vec()))).unwrap();
    let empty = |payload: &[u8], id: &str| Publish {
        expected_last_subject_sequence: Some(0),
        ..keyed("ks.k.abc", payload, id)
    };
    let first = wait(link.publish(empty(b"first", "evt_1"))).unwrap();
    assert_eq!(first.sequence, 2);
    match wait(link.publish(empty(b"repeat", "evt_2"))) {
        Err(PublishError::WrongLastSequence(sequence)) => assert_eq!(sequence, first.sequence),
        other => panic!("expected WrongLastSequence({}), got {other:?}", first.sequence),
    }
    let stored = wait(link.get("KEYS", first.sequence)).unwrap().unwrap();
    assert_eq!((stored.payload.as_slice(), stored.header("Nats-Msg-Id")), (&b"first"[..], Some("evt_1")));
    // The stream-wide check as the configuration stream will use it.
    let last = wait(link.stream_state("KEYS")).unwrap().last_sequence;
    let stale = Publish { expected_last_sequence: Some(last - 1), ..Publish::new("ks.in", vec![]) };
    assert_eq!(wait(link.publish(stale)), Err(PublishError::WrongLastSequence(last)));
    let current = Publish { expected_last_sequence: Some(last), ..Publish::new("ks.in", vec![]) };
    assert_eq!(wait(link.publish(current)).unwrap().sequence, last + 1);
}

// The empty-subject check is the one conditional write atomic on 2.9.10 under concurrency
// (ADR 17); six publishers on three connections to three servers race on fresh subjects.
#[test]
fn six_concurrent_creators_of_one_subject_have_exactly_one_winner() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let links: Vec<Link> = (0..3)
        .map(|index| {
            let options = LinkOptions {
                urls: vec![cluster.url(index)],
                name: format!("racer-{index}"),
                ..LinkOptions::default()
            };
            Link::connect(options).unwrap()
        })
        .collect();
    stream_r3(&links[0], "RACE", "race");
    for round in 0..20 {
        let subject = format!("race.k.{round}");
        let racers: Vec<_> = (0..6)
            .map(|racer| {
                let publish = Publish {
                    expected_last_subject_sequence: Some(0),
                    ..keyed(&subject, format!("racer {racer}").as_bytes(), &format!("r{round}-{racer}"))
                };
                links[racer % 3].publish(publish)
            })
            .collect();
        let outcomes: Vec<_> = racers.into_iter().map(wait).collect();
        let winners: Vec<u64> =
            outcomes.iter().filter_map(|outcome| outcome.as_ref().ok().map(|ack| ack.sequence)).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        for outcome in &outcomes {
            match outcome {
                Ok(_) => {}
                Err(PublishError::WrongLastSequence(sequence)) => assert_eq!(*sequence, winners[0], "round {round}"),
                Err(other) => panic!("round {round}: {other}"),
            }
        }
    }
    assert_eq!(wait(links[0].stream_state("RACE")).unwrap().messages, 20);
}

// A new owner replays a partition from its snapshot's sequence; the feed must give exactly the
// rest, in order, on the filtered subject, and a reader slower than the stream must slow the
// consumer down rather than lose or buffer without bound (capacity 4).
#[test]
fn a_consumer_from_a_middle_sequence_gets_exactly_the_rest_in_order_at_a_slow_readers_pace() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let link = link(&cluster, "replay");
    stream_r3(&link, "REPLAY", "rp");
    let total = 3000u64;
    // Many in flight at once: the link does not serialise them, so their order is the server's.
    let pending: Vec<_> = (0..total)
        .map(|index| link.publish(Publish::new(format!("rp.{}", index % 3), index.to_be_bytes().to_vec())))
        .collect();
    let mut published = std::collections::BTreeMap::new();
    for (index, publish) in pending.into_iter().enumerate() {
        published.insert(wait(publish).unwrap().sequence, index as u64);
    }
    assert_eq!(published.keys().copied().collect::<Vec<u64>>(), (1..=total).collect::<Vec<u64>>());
    let start = 1001;
    let mut feed = wait(link.consume("REPLAY", "rp.1", start, 4)).unwrap();
    let expected: Vec<(u64, u64)> = published
        .range(start..)
        .filter(|(_, index)| *index % 3 == 1)
        .map(|(sequence, index)| (*sequence, *index))
        .collect();
    assert!(expected.len() > 600);
    for (read, (sequence, index)) in expected.iter().enumerate() {
        let message = wait(feed.next()).unwrap().unwrap();
        assert_eq!(message.sequence, *sequence, "in stream order, none skipped");
        assert_eq!(message.subject, "rp.1");
        assert_eq!(message.payload, index.to_be_bytes());
        if read % 16 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // the slow reader
        }
    }
    // Nothing more than the rest: the next message is the one published now.
    let marker = wait(link.publish(Publish::new("rp.1", b"marker".to_vec()))).unwrap();
    let next = wait(feed.next()).unwrap().unwrap();
    assert_eq!((next.sequence, next.payload.as_slice()), (marker.sequence, &b"marker"[..]));
    drop(feed);
    assert_eq!(link.counters().consumer_errors, 0);
}

// The fail-over the ADR measured: a stream's leader is killed under load; every publish must
// still be acknowledged (retried under its message id through the election), the stream must
// hold each id exactly once, and a consumer running throughout must see every one, in order.
#[test]
fn publishes_under_load_survive_the_death_of_the_streams_leader() {
    let Some(mut cluster) = NatsCluster::start(3) else { return };
    let link = link(&cluster, "failover");
    stream_r3(&link, "FAILOVER", "fo");
    let leader = wait(link.stream_state("FAILOVER")).unwrap().leader.unwrap();
    let leader_index = cluster.index_of(&leader).unwrap();
    let mut feed = wait(link.consume("FAILOVER", "", 0, 64)).unwrap();

    let total = 4000usize;
    let window = 64;
    let (quarter_sender, quarter) = std::sync::mpsc::channel();
    let publisher = {
        let link = link.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut longest_wait = Duration::ZERO;
            for (round, batch) in (0..total).collect::<Vec<_>>().chunks(window).enumerate() {
                if round * window >= total / 4 {
                    let _ = quarter_sender.send(());
                }
                let sent = Instant::now();
                let pending: Vec<_> = batch
                    .iter()
                    .map(|index| link.publish(keyed("fo.in", &index.to_be_bytes(), &format!("evt_{index}"))))
                    .collect();
                for publish in pending {
                    if let Err(error) = wait_for("a publish's acknowledgement", publish) {
                        return Err(format!("a publish failed after {:?}: {error:?}", started.elapsed()));
                    }
                }
                longest_wait = longest_wait.max(sent.elapsed());
            }
            Ok((started.elapsed(), longest_wait))
        })
    };
    // Killed while publishes are in flight: a quarter are acknowledged, the rest are not sent.
    quarter.recv_timeout(STALL).unwrap();
    cluster.kill(leader_index);
    let mut seen = Vec::with_capacity(total);
    let mut longest_silence = Duration::ZERO;
    while seen.len() < total {
        let asked = Instant::now();
        let message = wait_for(&format!("message {} of the feed", seen.len() + 1), feed.next());
        longest_silence = longest_silence.max(asked.elapsed());
        let message = message.unwrap().unwrap();
        assert_eq!(message.sequence, seen.len() as u64 + 1, "in order, no gap, no repeat");
        seen.push(message.header("Nats-Msg-Id").unwrap().to_string());
    }
    let (elapsed, longest_wait) = publisher.join().unwrap().unwrap_or_else(|error| panic!("{error}"));
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), total, "each id exactly once");
    let state = wait(link.stream_state("FAILOVER")).unwrap();
    assert_eq!(state.messages, total as u64);
    assert!(state.leader.is_some_and(|new_leader| new_leader != leader), "another server leads");
    let counters = link.counters();
    assert_eq!(counters.acks, total as u64);
    eprintln!(
        "leader {leader} killed after a quarter of {total}: {elapsed:?} in all, longest wait for a window of \
         {window} {longest_wait:?}, longest silence of the feed {longest_silence:?}; counters {counters:?}"
    );
}

// Leases are bucket keys (ADR 17): a create must refuse an existing key with its revision, an
// update must take only the latest revision, and a partition's keys must list by prefix.
#[test]
fn bucket_keys_are_created_once_updated_on_their_revision_and_listed_by_prefix() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let link = link(&cluster, "bucket");
    assert_eq!(wait(link.ensure_bucket("kapsel_cluster", 3)).unwrap(), Ensured::Created);
    assert_eq!(wait(link.ensure_bucket("kapsel_cluster", 3)).unwrap(), Ensured::Unchanged);
    let first = wait(link.kv_create("kapsel_cluster", "lease.p.3.e.1", b"node-a".to_vec())).unwrap();
    assert_eq!(
        wait(link.kv_create("kapsel_cluster", "lease.p.3.e.1", b"node-b".to_vec())),
        Err(KvError::Exists { revision: first })
    );
    let second = wait(link.kv_update("kapsel_cluster", "lease.p.3.e.1", b"node-a renewed".to_vec(), first)).unwrap();
    assert!(second > first);
    assert_eq!(
        wait(link.kv_update("kapsel_cluster", "lease.p.3.e.1", b"stale".to_vec(), first)),
        Err(KvError::WrongRevision { current: second })
    );
    let entry = wait(link.kv_get("kapsel_cluster", "lease.p.3.e.1")).unwrap().unwrap();
    assert_eq!((entry.value.as_slice(), entry.revision), (&b"node-a renewed"[..], second));
    for key in ["lease.p.3.e.2", "lease.p.30.e.1", "lease.p.4.e.1", "node.a"] {
        wait(link.kv_create("kapsel_cluster", key, key.as_bytes().to_vec())).unwrap();
    }
    let keys = |prefix: &str| -> Vec<String> {
        wait(link.kv_entries("kapsel_cluster", prefix)).unwrap().into_iter().map(|(key, _)| key).collect()
    };
    assert_eq!(keys("lease.p.3."), ["lease.p.3.e.1", "lease.p.3.e.2"]);
    assert_eq!(keys("lease.p.3"), ["lease.p.3.e.1", "lease.p.3.e.2", "lease.p.30.e.1"]);
    assert_eq!(keys("").len(), 5);
    let listed = wait(link.kv_entries("kapsel_cluster", "lease.p.3.")).unwrap();
    assert_eq!(listed[0].1, entry, "entries carry the latest value and revision");

    assert!(wait(link.kv_delete("kapsel_cluster", "lease.p.3.e.1")).unwrap());
    assert_eq!(wait(link.kv_get("kapsel_cluster", "lease.p.3.e.1")).unwrap(), None);
    assert!(!wait(link.kv_delete("kapsel_cluster", "lease.p.3.e.1")).unwrap());
    wait(link.kv_create("kapsel_cluster", "lease.p.3.e.1", b"again".to_vec())).unwrap();
    assert!(matches!(wait(link.kv_get("kapsel_cluster", "bad key")), Err(LinkError::Invalid { what: "key", .. })));
}

// Admin operations are asked of a partition's owner over request/reply (ADR 17): the answer must
// come back, a request nobody serves must fail at once rather than wait, and a serving node
// whose queue is full must refuse rather than buffer.
#[test]
fn requests_are_answered_refused_when_the_queue_is_full_and_fail_fast_without_a_server() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let owner = link(&cluster, "owner");
    let asker = {
        let options = LinkOptions { urls: vec![cluster.url(2)], name: "asker".into(), ..LinkOptions::default() };
        Link::connect(options).unwrap()
    };
    let mut requests = wait(owner.serve("kapsel.rpc.p.7", 1)).unwrap();
    // The owner's server has the subscription once `serve` answers; the asker's server learns it
    // over the route a moment later and says "no responders" until then. A probe that gets
    // through is queued unanswered; it is taken out before the test proper.
    crate::common::wait_until("the subscription to reach the asker's server", || {
        let probe = asker.request("kapsel.rpc.p.7", b"probe".to_vec(), Duration::from_millis(100));
        !matches!(wait(probe), Err(LinkError::NoResponders { .. }))
    });
    assert_eq!(wait(requests.next()).unwrap().payload, b"probe");
    let first = asker.request("kapsel.rpc.p.7", b"status?".to_vec(), Duration::from_secs(10));
    let request = wait(requests.next()).unwrap();
    assert_eq!((request.subject.as_str(), request.payload.as_slice()), ("kapsel.rpc.p.7", &b"status?"[..]));
    // The queue holds one; with the request above taken, fill it and overflow it.
    let queued = asker.request("kapsel.rpc.p.7", b"queued".to_vec(), Duration::from_secs(10));
    let queued_request = wait(requests.next()).unwrap();
    let waiting = asker.request("kapsel.rpc.p.7", b"waits".to_vec(), Duration::from_secs(10));
    // `waiting` sits in the queue (capacity 1): the next one finds it full.
    std::thread::sleep(Duration::from_millis(200)); // no event tells the test `waiting` is queued
    let overflow = asker.request("kapsel.rpc.p.7", b"overflow".to_vec(), Duration::from_secs(10));
    assert_eq!(wait(overflow), Err(LinkError::RemoteBusy { subject: "kapsel.rpc.p.7".into() }));
    request.respond(b"all well".to_vec());
    assert_eq!(wait(first).unwrap(), b"all well");
    queued_request.reject("not the owner");
    assert_eq!(
        wait(queued),
        Err(LinkError::Remote { subject: "kapsel.rpc.p.7".into(), reason: "not the owner".into() })
    );
    drop(wait(requests.next()).unwrap());
    assert!(matches!(wait(waiting), Err(LinkError::Remote { reason, .. }) if reason == "dropped unanswered"));
    assert_eq!(owner.counters().requests_refused, 1);

    let asked = Instant::now();
    let nobody = wait(asker.request("kapsel.rpc.p.8", b"anyone?".to_vec(), Duration::from_secs(20)));
    assert_eq!(nobody, Err(LinkError::NoResponders { subject: "kapsel.rpc.p.8".into() }));
    assert!(asked.elapsed() < Duration::from_secs(20), "answered before the request's timeout");
    drop(requests);
}

// A shard must never block on the link: when the thread is behind, a call is refused with Busy
// (E3002 upstream) at once, and what was accepted still completes.
#[test]
fn a_full_command_queue_refuses_with_busy_and_completes_what_it_took() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let options = LinkOptions {
        urls: vec![cluster.url(0)],
        name: "tiny".into(),
        command_capacity: 1,
        in_flight_max: 1,
        ..LinkOptions::default()
    };
    let link = Link::connect(options).unwrap();
    stream_r3(&link, "BUSY", "busy");
    let calls: Vec<_> = (0..200).map(|index| link.publish(keyed("busy.in", b"x", &format!("b{index}")))).collect();
    let outcomes: Vec<_> = calls.into_iter().map(wait).collect();
    let busy = outcomes.iter().filter(|outcome| matches!(outcome, Err(PublishError::Busy))).count();
    let acked = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert!(busy > 0, "200 calls at once into a queue of one");
    assert_eq!(busy + acked, 200, "{outcomes:?}");
    assert_eq!(link.counters().busy, busy as u64);
    assert_eq!(wait(link.stream_state("BUSY")).unwrap().messages, acked as u64);
}

// A node started with a wrong NATS address must say so and stop within its timeout, not hang.
#[test]
fn connecting_to_a_dead_port_fails_within_the_timeout_with_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nats://127.0.0.1:{port}");
    let options =
        LinkOptions { urls: vec![url.clone()], connect_timeout: Duration::from_secs(2), ..LinkOptions::default() };
    let started = Instant::now();
    let error = Link::connect(options).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the timeout: {:?}", started.elapsed());
    match &error {
        LinkError::Connect { urls, .. } => assert_eq!(urls, &url),
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(error.to_string().contains(&url), "{error}");
}
