//! Cluster mode (issue 16, ADR 17): three `nats-server` processes in one JetStream cluster and
//! three Kapsel nodes, all on loopback, started here. Every node takes ingest and admin requests
//! for every endpoint; each partition is delivered by one live node; a node's death loses
//! nothing acknowledged.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::nats::NatsCluster;
use crate::common::sink::{Reply, Sink};
use crate::common::{create, try_request, Server, TOKEN};

/// Partitions in these tests: enough for every node to own several.
const PARTITIONS: u32 = 8;

/// A Kapsel node of `cluster` named `node`.
fn node(directory: &Path, cluster: &NatsCluster, node: &str) -> Server {
    node_at(directory, cluster, node, "127.0.0.1:0")
}

/// A Kapsel node of `cluster` named `node`, listening on `address`.
fn node_at(directory: &Path, cluster: &NatsCluster, node: &str, address: &str) -> Server {
    node_with(directory, cluster, node, address, &[])
}

/// A Kapsel node of `cluster` with more settings.
fn node_with(directory: &Path, cluster: &NatsCluster, node: &str, address: &str, extra: &[(&str, &str)]) -> Server {
    let urls = cluster.urls();
    let partitions = PARTITIONS.to_string();
    let mut settings = vec![
        ("SERVER_ADDR", address),
        ("KAPSEL_NATS_URL", urls.as_str()),
        ("KAPSEL_NODE_ID", node),
        ("KAPSEL_PARTITIONS", partitions.as_str()),
        ("KAPSEL_REPLICAS", "3"),
        ("RUST_LOG", "info"),
    ];
    settings.extend_from_slice(extra);
    // Both monoio drivers in every cluster: node-b on epoll, the others on io_uring.
    let driver = if node.ends_with('b') { "legacy" } else { "uring" };
    Server::start(directory, driver, &settings)
}

/// Waits until every partition has an owner among `live` nodes and each of them sees all
/// `live` nodes: the cluster has settled. The owners, by partition.
fn settled(nodes: &[&Server], live: &[&str]) -> BTreeMap<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<serde_json::Value> =
            nodes.iter().map(|node| node.admin("GET", "/admin/cluster", "").json()).collect();
        let owners: Vec<BTreeMap<u64, String>> = views
            .iter()
            .map(|view| {
                view["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|entry| Some((entry["partition"].as_u64()?, entry["owner"].as_str()?.to_string())))
                    .collect()
            })
            .collect();
        let complete = owners.iter().all(|owned| {
            owned.len() == PARTITIONS as usize && owned.values().all(|owner| live.contains(&owner.as_str()))
        });
        let agreed = owners.windows(2).all(|pair| pair[0] == pair[1]);
        let all_live = views.iter().all(|view| {
            let seen: HashSet<&str> = view["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|node| node["live"] == true)
                .filter_map(|node| node["node_id"].as_str())
                .collect();
            live.iter().all(|node| seen.contains(node))
        });
        let spread = live.iter().all(|node| owners[0].values().any(|owner| owner == node));
        if complete && agreed && all_live && spread {
            // Owned is not yet open: each owner serves a partition once it replayed it.
            return owners.into_iter().next().unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "the cluster did not settle: {views:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// Every node takes ingest and admin for every endpoint; each event is delivered once, by the
// owner of its partition, whichever node took it.
#[test]
fn every_node_takes_ingest_and_admin_for_every_endpoint() {
    let Some(nats) = NatsCluster::start(3) else { return };
    let directories: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["node-a", "node-b", "node-c"];
    let nodes: Vec<Server> = names.iter().zip(&directories).map(|(name, dir)| node(dir.path(), &nats, name)).collect();
    let owners = settled(&nodes.iter().collect::<Vec<_>>(), &names);
    let sink = Sink::start(|_, _| Reply::status(200));
    let endpoints: Vec<String> = (0..6).map(|index| format!("orders-{index}")).collect();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let via = &nodes[index % 3];
        let created = create(via, endpoint, &format!(r#"{{"url":"{}"}}"#, sink.url(&format!("/{endpoint}"))));
        assert_eq!(created["id"], endpoint.as_str());
    }
    // Every node sees every endpoint, whichever node created it and whichever owns it.
    for node in &nodes {
        for endpoint in &endpoints {
            let found = node.admin("GET", &format!("/admin/endpoints/{endpoint}"), "");
            assert_eq!(found.status, 200, "{endpoint} through {}: {found:?}", node.address);
        }
    }
    let mut accepted = Vec::new();
    for index in 0..300 {
        let via = &nodes[index % 3];
        let endpoint = &endpoints[index % endpoints.len()];
        let id = ingest_at(via.address, endpoint, format!("{{\"n\":{index}}}").as_bytes()).expect("a 202");
        accepted.push(id);
    }
    let wanted: HashSet<String> = accepted.iter().cloned().collect();
    assert_eq!(wanted.len(), accepted.len(), "event ids are unique");
    let received = sink.wait_for("every accepted event", Duration::from_secs(60), |received| {
        let ids: HashSet<&str> = received.iter().filter_map(|r| r.header("webhook-id")).collect();
        wanted.iter().all(|id| ids.contains(id.as_str()))
    });
    assert_eq!(received.len(), accepted.len(), "each event delivered once");
    // Any node answers for any event.
    for (index, id) in accepted.iter().enumerate().step_by(37) {
        let event = nodes[(index + 1) % 3].admin("GET", &format!("/admin/events/{id}"), "").json();
        assert_eq!(event["status"], "delivered", "{event}");
    }
    // Listings cover every partition, whichever node is asked, page by page.
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = nodes[1].admin("GET", &format!("/admin/endpoints?limit=4{cursor}"), "").json();
        listed.extend(page["endpoints"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(listed, endpoints, "every endpoint once, in id order");
    let mut seen = HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = nodes[2].admin("GET", &format!("/admin/events?limit=70{cursor}"), "").json();
        for event in page["events"].as_array().unwrap() {
            assert!(seen.insert(event["event_id"].as_str().unwrap().to_string()), "an event listed twice");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, wanted, "every event listed once");
    // Metrics per node and per partition: the nodes' deliveries add up to the events, and the
    // partitions they own to all of them.
    let sum = |name: &str| nodes.iter().map(|node| crate::common::metric(node, name)).sum::<f64>();
    crate::common::wait_until("deliveries counted per partition", || {
        sum("kapsel_deliveries_total") == accepted.len() as f64
    });
    assert_eq!(sum("kapsel_cluster_partitions_owned"), f64::from(PARTITIONS));
    assert_eq!(sum("kapsel_endpoints"), endpoints.len() as f64);
    let text = String::from_utf8(nodes[0].request("GET", "/metrics", &[], b"").body).unwrap();
    assert!(text.contains("kapsel_events_waiting{partition=\""), "{text}");
    assert!(text.contains("kapsel_nats_connected{node=\"node-a\"} 1"), "{text}");
    let view = nodes[0].admin("GET", "/admin/cluster", "").json();
    assert_eq!(view["partitions"].as_array().map(Vec::len), Some(PARTITIONS as usize));
    assert!(owners.values().all(|owner| names.contains(&owner.as_str())));
    // Each owner shows its partitions' lag: none once everything is delivered and recorded.
    for node in &nodes {
        crate::common::wait_until("every owned partition caught up", || {
            let view = node.admin("GET", "/admin/cluster", "").json();
            let owned: Vec<&serde_json::Value> =
                view["partitions"].as_array().unwrap().iter().filter(|entry| !entry["lag"].is_null()).collect();
            !owned.is_empty()
                && owned.iter().all(|entry| entry["lag"] == 0 && entry["last_sequence"].as_u64() > Some(0))
        });
    }
    // An event travels in one NATS message: a body above the servers' max_payload (1 MiB) is
    // refused up front, and one just under it goes through.
    let big = format!("\"{}\"", "x".repeat(1_100_000));
    let refused = nodes[1].request("POST", "/ingest/orders-0", &[("Content-Type", "application/json")], big.as_bytes());
    assert_eq!((refused.status, refused.code()), (413, "E1002".to_string()), "{refused:?}");
    let fits = format!("\"{}\"", "x".repeat(900_000));
    assert!(ingest_at(nodes[2].address, "orders-0", fits.as_bytes()).is_some());
    // A publish to a channel nobody subscribes to is recorded and goes nowhere.
    let published = nodes[0].admin("POST", "/publish/nobody", "{}");
    assert_eq!((published.status, &published.json()["endpoints"]), (202, &serde_json::json!(0)), "{published:?}");
    let unauthorized = try_request(nodes[1].address, "GET", "/admin/cluster", &[], b"").unwrap();
    assert_eq!(unauthorized.status, 401);
    let _ = TOKEN;
}

/// Three NATS servers, three nodes settled, a sink that answers after `delay`, and `count`
/// endpoints created through the nodes in turn, each delivering at most `max_in_flight` at once.
struct Rig {
    nats: NatsCluster,
    _directories: Vec<tempfile::TempDir>,
    nodes: Vec<Option<Server>>,
    sink: Sink,
    endpoints: Vec<String>,
}

const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

impl Rig {
    fn start(count: usize, max_in_flight: u32, delay: Duration) -> Option<Rig> {
        Self::start_with(count, max_in_flight, delay, &[])
    }

    /// [`Rig::start`] with more settings for every node.
    fn start_with(count: usize, max_in_flight: u32, delay: Duration, extra: &[(&str, &str)]) -> Option<Rig> {
        let nats = NatsCluster::start(3)?;
        let directories: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Server> = NAMES
            .iter()
            .zip(&directories)
            .map(|(name, dir)| node_with(dir.path(), &nats, name, "127.0.0.1:0", extra))
            .collect();
        settled(&nodes.iter().collect::<Vec<_>>(), &NAMES);
        let sink = Sink::start(move |_, _| Reply::status(200).after(delay));
        let endpoints: Vec<String> = (0..count).map(|index| format!("orders-{index}")).collect();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let url = sink.url(&format!("/{endpoint}"));
            create(&nodes[index % 3], endpoint, &format!(r#"{{"url":"{url}","max_in_flight":{max_in_flight}}}"#));
        }
        Some(Rig { nats, _directories: directories, nodes: nodes.into_iter().map(Some).collect(), sink, endpoints })
    }

    fn live(&self) -> Vec<&Server> {
        self.nodes.iter().flatten().collect()
    }

    /// Sends `count` events spread over the live nodes and endpoints, from `threads` clients at
    /// once, calling `midway` once half are sent; the ids of the 202s.
    fn load(&mut self, count: usize, threads: usize, midway: impl FnOnce(&mut Rig)) -> Vec<String> {
        let endpoints = self.endpoints.clone();
        let send = move |address, index: usize| {
            ingest_at(address, &endpoints[index % endpoints.len()], format!("{{\"n\":{index}}}").as_bytes())
        };
        self.load_with(count, threads, std::sync::Arc::new(send), midway)
    }

    /// [`Rig::load`] with `send(node, n)` sending the n-th request: the event id of its 202.
    fn load_with(
        &mut self,
        count: usize,
        threads: usize,
        send: std::sync::Arc<dyn Fn(std::net::SocketAddr, usize) -> Option<String> + Send + Sync>,
        midway: impl FnOnce(&mut Rig),
    ) -> Vec<String> {
        let addresses: Vec<std::net::SocketAddr> = self.live().iter().map(|node| node.address).collect();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let (addresses, send, sent) = (addresses.clone(), send.clone(), std::sync::Arc::clone(&sent));
                std::thread::spawn(move || {
                    let mut accepted = Vec::new();
                    let mut index = worker;
                    while index < count {
                        // A node that is gone refuses connections: the client tries the next one.
                        for attempt in 0..addresses.len() {
                            if let Some(id) = send(addresses[(index + attempt) % addresses.len()], index) {
                                accepted.push(id);
                                break;
                            }
                        }
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        index += threads;
                    }
                    accepted
                })
            })
            .collect();
        crate::common::wait_until("half the load sent", || {
            sent.load(std::sync::atomic::Ordering::Relaxed) >= count / 2
        });
        midway(self);
        workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
    }

    /// Waits until the sink has every accepted event; how many arrived more than once.
    fn all_delivered(&self, accepted: &[String]) -> usize {
        let wanted: HashSet<&str> = accepted.iter().map(String::as_str).collect();
        assert_eq!(wanted.len(), accepted.len(), "event ids are unique");
        let received = self.sink.wait_for("every accepted event", Duration::from_secs(120), |received| {
            let ids: HashSet<&str> = received.iter().filter_map(|r| r.header("webhook-id")).collect();
            wanted.iter().all(|id| ids.contains(id))
        });
        let mut seen = HashSet::new();
        received.iter().filter_map(|r| r.header("webhook-id")).filter(|id| !seen.insert(id.to_string())).count()
    }
}

/// Ingests through `address`, retrying while the partition is between owners (503); the id of
/// the 202, or `None` when the node is unreachable or the partition stays ownerless too long.
fn ingest_at(address: std::net::SocketAddr, endpoint: &str, body: &[u8]) -> Option<String> {
    ingest_with(address, endpoint, &[], body).map(|(_, id)| id)
}

/// [`ingest_at`] with more header fields: the status (202, or 200 for a repeated key) and the
/// event id.
fn ingest_with(
    address: std::net::SocketAddr,
    endpoint: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut fields = vec![("Content-Type", "application/json")];
    fields.extend_from_slice(headers);
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let response = try_request(address, "POST", &format!("/ingest/{endpoint}"), &fields, body).ok()?;
        match response.status {
            200 | 202 => return Some((response.status, response.json()["event_id"].as_str()?.to_string())),
            503 => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("ingest through {address}: {response:?}"),
        }
    }
    None
}

// `kill -9` of a Kapsel node under load: its partitions move to the others once its leases
// lapse, every event any node answered 202 for is delivered, and an event arrives twice only if
// its attempt was in flight at the dead node.
#[test]
fn a_killed_node_loses_nothing_and_its_partitions_move() {
    let (endpoints, max_in_flight) = (8, 4);
    let Some(mut rig) = Rig::start(endpoints, max_in_flight, Duration::from_millis(5)) else { return };
    let mut moved_in = Duration::ZERO;
    let accepted = rig.load(3000, 6, |rig| {
        if let Some(node) = rig.nodes[1].take() {
            node.kill();
        }
        let killed_at = Instant::now();
        // The survivors own every partition once the dead node's leases lapse.
        let owners = settled(&rig.live(), &["node-a", "node-c"]);
        moved_in = killed_at.elapsed();
        assert!(owners.values().all(|owner| owner != "node-b"));
    });
    let repeated = rig.all_delivered(&accepted);
    // At most every endpoint's attempts in flight at the dead node arrive again.
    assert!(repeated <= endpoints * max_in_flight as usize, "{repeated} events arrived twice");
    println!(
        "kill -9 of a node: {} events accepted, {repeated} delivered twice, partitions moved within {:.1} s",
        accepted.len(),
        moved_in.as_secs_f64()
    );
    drop(rig.nats);
}

/// Records an owner wrote under an epoch below the latest `Takeover` before them, over every
/// partition's stream: writes of a deposed owner that landed after its successor's takeover.
fn stale_owner_records(nats: &NatsCluster) -> usize {
    let link = nats.link("test");
    use kapsel_engine::cluster::nats::block_on as wait;
    let mut stale = 0;
    for partition in 0..PARTITIONS {
        let stream = kapsel_engine::cluster::nats::stream_name(partition);
        let last = wait(link.stream_state(stream.clone())).unwrap().last_sequence;
        let mut latest = 0;
        for sequence in 1..=last {
            let Some(message) = wait(link.get(stream.clone(), sequence)).unwrap() else { continue };
            let Some(epoch) = message.header("Kapsel-Epoch").and_then(|epoch| epoch.parse::<u64>().ok()) else {
                continue;
            };
            let takeover = message.header("Kapsel-Kind") == Some(&kapsel_engine::records::KIND_TAKEOVER.to_string());
            if takeover && epoch > latest {
                latest = epoch;
            } else if epoch < latest {
                stale += 1;
            }
        }
    }
    link.close();
    stale
}

// SIGSTOP of a node past its lease, then SIGCONT: the others take its partitions over; when it
// wakes it stops at once and writes nothing as their owner any more; nothing is lost or stuck,
// and its partitions come back to it.
#[test]
fn a_paused_node_is_fenced_and_loses_nothing() {
    let (endpoints, max_in_flight) = (8, 4);
    let Some(mut rig) = Rig::start(endpoints, max_in_flight, Duration::from_millis(5)) else { return };
    let accepted = rig.load(3000, 6, |rig| {
        let paused = rig.nodes[1].as_ref().unwrap();
        paused.pause();
        let others: Vec<&Server> = [&rig.nodes[0], &rig.nodes[2]].into_iter().flatten().collect();
        let owners = settled(&others, &["node-a", "node-c"]);
        assert!(owners.values().all(|owner| owner != "node-b"));
        paused.resume();
        settled(&rig.live(), &NAMES);
    });
    let repeated = rig.all_delivered(&accepted);
    assert!(repeated <= endpoints * max_in_flight as usize, "{repeated} events arrived twice");
    // A woken owner refuses to write (its lease lapsed by its clock); only a write already on
    // its way when it froze can still land after its successor's takeover, and the epoch fence
    // makes it change nothing (on 2.9.10 no conditional write can stop it landing: ADR 17).
    // Usually none lands; never more than the attempts that were in flight.
    let stale = stale_owner_records(&rig.nats);
    assert!(stale <= endpoints * max_in_flight as usize, "{stale} deposed owner's records after a takeover");
    // Nothing stuck: every endpoint's queue is empty, asked through any node.
    for (index, endpoint) in rig.endpoints.iter().enumerate() {
        let node = rig.live()[index % 3];
        let view = node.admin("GET", &format!("/admin/endpoints/{endpoint}"), "").json();
        assert_eq!(view["queue_depth"], 0, "{view}");
    }
    println!(
        "SIGSTOP of a node past its lease: {} events accepted, {repeated} delivered twice, {stale} stale owner records fenced",
        accepted.len()
    );
}

// `kill -9` of a NATS server under load: JetStream keeps a quorum of every stream, ingest goes on
// (stalling while a stream on the dead server elects a leader), nothing acknowledged is lost.
#[test]
fn a_killed_nats_server_loses_nothing() {
    let Some(mut rig) = Rig::start(8, 4, Duration::from_millis(5)) else { return };
    let accepted = rig.load(3000, 6, |rig| {
        rig.nats.kill(0);
    });
    let repeated = rig.all_delivered(&accepted);
    println!("kill -9 of a NATS server: {} events accepted, {repeated} delivered twice", accepted.len());
    assert!(repeated <= 32, "{repeated} events arrived twice");
}

/// Ingests with an idempotency key through `server`; the status (202 or 200) and the event id.
fn ingest_keyed_at(server: &Server, endpoint: &str, key: &str) -> (u16, String) {
    ingest_with(server.address, endpoint, &[("X-Idempotency-Key", key)], b"{}").expect("an answer")
}

// A repeated idempotency key answers the first event whichever node takes it, also after the
// partition moved to another node; an endpoint changed through one node is changed for all.
#[test]
fn idempotency_and_endpoint_changes_hold_across_nodes() {
    let Some(mut rig) = Rig::start(4, 4, Duration::ZERO) else { return };
    let (status, first) = ingest_keyed_at(rig.nodes[0].as_ref().unwrap(), "orders-1", "order-7");
    assert_eq!(status, 202);
    for node in rig.live() {
        assert_eq!(ingest_keyed_at(node, "orders-1", "order-7"), (200, first.clone()));
    }
    // Disabled through one node, disabled for every node.
    let disabled = rig.nodes[2].as_ref().unwrap().admin("POST", "/admin/endpoints/orders-2/disable", "");
    assert_eq!(disabled.status, 200, "{disabled:?}");
    for node in rig.live() {
        assert_eq!(node.admin("GET", "/admin/endpoints/orders-2", "").json()["enabled"], false);
    }
    // Kill the owner of orders-1's partition; its successor replays the key with the event.
    let view = rig.nodes[0].as_ref().unwrap().admin("GET", "/admin/cluster", "").json();
    let partition = kapsel_engine::ids::EventId::parse(&first).unwrap().shard() as usize;
    let owner = view["partitions"][partition]["owner"].as_str().unwrap().to_string();
    let index = NAMES.iter().position(|name| *name == owner).unwrap();
    rig.nodes[index].take().unwrap().kill();
    let survivors: Vec<&str> = NAMES.iter().copied().filter(|name| *name != owner).collect();
    settled(&rig.live(), &survivors);
    for node in rig.live() {
        assert_eq!(ingest_keyed_at(node, "orders-1", "order-7"), (200, first.clone()));
        let event = node.admin("GET", &format!("/admin/events/{first}"), "").json();
        assert_eq!(event["status"], "delivered", "{event}");
    }
}

// Every node restarted in turn (SIGTERM, start again) under load: nothing accepted is lost,
// and a node that stops gives its leases up, so its partitions move at once.
#[test]
fn a_rolling_restart_loses_nothing() {
    let (endpoints, max_in_flight) = (8, 4);
    let Some(mut rig) = Rig::start(endpoints, max_in_flight, Duration::from_millis(5)) else { return };
    let accepted = rig.load(4000, 6, |rig| {
        for (index, name) in NAMES.iter().enumerate() {
            let stopping = rig.nodes[index].take().unwrap();
            let address = stopping.address.to_string();
            let started = Instant::now();
            assert_eq!(stopping.stop(), 0);
            let stopped = Instant::now();
            let others: Vec<&str> = NAMES.iter().copied().filter(|other| other != name).collect();
            settled(&rig.live(), &others);
            println!("{name} stopped in {:?}; its partitions moved {:?} later", stopped - started, stopped.elapsed());
            // Released, not lapsed: the others need not wait out a 10 s lease.
            assert!(stopped.elapsed() < Duration::from_secs(8), "took {:?}", stopped.elapsed());
            // On the same port, so that clients find it again.
            rig.nodes[index] = Some(node_at(rig._directories[index].path(), &rig.nats, name, &address));
            settled(&rig.live(), &NAMES);
        }
    });
    let repeated = rig.all_delivered(&accepted);
    assert!(repeated <= 3 * endpoints * max_in_flight as usize, "{repeated} events arrived twice");
    println!("rolling restart of three nodes: {} events accepted, {repeated} delivered twice", accepted.len());
}

// Tenants and keys are the cluster's: a key made through one node works on every node, and a
// key revoked through another is refused by all of them within a second.
#[test]
fn tenants_and_keys_hold_on_every_node() {
    let Some(rig) = Rig::start(1, 4, Duration::ZERO) else { return };
    let nodes = rig.live();
    assert_eq!(nodes[0].admin("PUT", "/admin/tenants/acme", r#"{"name":"Acme"}"#).status, 201);
    let created = nodes[1].admin("POST", "/admin/tenants/acme/keys", r#"{"scopes":["read","write","ingest"]}"#);
    assert_eq!(created.status, 201, "{created:?}");
    let (key, key_id) =
        (created.json()["key"].as_str().unwrap().to_string(), created.json()["key_id"].as_str().unwrap().to_string());
    let bearer = format!("Bearer {key}");
    let with_key = |node: &Server, method: &str, path: &str, body: &str| {
        node.request(method, path, &[("Authorization", &bearer), ("Content-Type", "application/json")], body.as_bytes())
    };
    // Each node learns of the key by following the cluster's configuration: wait for it.
    for node in &nodes {
        crate::common::wait_until("the key known everywhere", || {
            with_key(node, "GET", "/admin/session", "").status == 200
        });
    }
    let url = rig.sink.url("/acme");
    let made = with_key(nodes[2], "PUT", "/admin/endpoints/acme-orders", &format!(r#"{{"url":"{url}"}}"#));
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(made.json()["tenant_id"], "acme");
    for node in &nodes {
        assert_eq!(with_key(node, "GET", "/admin/endpoints/acme-orders", "").status, 200);
        let ingested = with_key(node, "POST", "/ingest/acme-orders", "{}");
        assert_eq!(ingested.status, 202, "{ingested:?}");
    }
    assert_eq!(nodes[0].admin("DELETE", &format!("/admin/keys/{key_id}"), "").status, 204);
    let revoked_at = Instant::now();
    for node in &nodes {
        crate::common::wait_until("the key refused everywhere", || {
            with_key(node, "GET", "/admin/session", "").status == 401
        });
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1), "revoked everywhere in {:?}", revoked_at.elapsed());
    assert_eq!(with_key(nodes[1], "POST", "/ingest/acme-orders", "{}").status, 401);
    // A tenant's endpoints_max counts its endpoints in every partition, on every node.
    assert_eq!(nodes[0].admin("PUT", "/admin/tenants/small", r#"{"endpoints_max":2}"#).status, 201);
    // Three endpoints in three partitions: no owner counts another's from its own state.
    let mut ids: Vec<String> = Vec::new();
    for n in 0.. {
        let id = format!("small-{n}");
        let partition = crate::common::shard_of(&id, u64::from(PARTITIONS));
        if ids.iter().all(|other| crate::common::shard_of(other, u64::from(PARTITIONS)) != partition) {
            ids.push(id);
        }
        if ids.len() == 3 {
            break;
        }
    }
    for (index, id) in ids[..2].iter().enumerate() {
        let body = format!(r#"{{"url":"{url}","tenant_id":"small"}}"#);
        assert_eq!(nodes[index].admin("PUT", &format!("/admin/endpoints/{id}"), &body).status, 201);
    }
    for node in &nodes {
        crate::common::wait_until("both endpoints counted everywhere", || {
            node.admin("GET", "/admin/tenants/small", "").json()["endpoints"] == 2
        });
    }
    let body = format!(r#"{{"url":"{url}","tenant_id":"small"}}"#);
    let third = nodes[2].admin("PUT", &format!("/admin/endpoints/{}", ids[2]), &body);
    assert_eq!((third.status, third.code()), (503, "E3002".to_string()), "{third:?}");
}

/// Ingests `count` events to `endpoint`, spread over `nodes`, from eight clients at once.
fn fill(nodes: &[&Server], endpoint: &str, count: usize) -> Vec<String> {
    let addresses: Vec<std::net::SocketAddr> = nodes.iter().map(|node| node.address).collect();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (addresses, endpoint) = (addresses.clone(), endpoint.to_string());
            std::thread::spawn(move || {
                (worker..count)
                    .step_by(8)
                    .map(|index| ingest_at(addresses[index % addresses.len()], &endpoint, b"{}").expect("a 202"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
}

/// The nodes still running.
fn live(nodes: &[Option<Server>]) -> Vec<&Server> {
    nodes.iter().flatten().collect()
}

/// The first and last sequence of a partition's stream, read through a link of the test's own.
fn stream_extent(nats: &NatsCluster, partition: u32) -> (u64, u64) {
    let link = nats.link("test");
    let stream = kapsel_engine::cluster::nats::stream_name(partition);
    let state = kapsel_engine::cluster::nats::block_on(link.stream_state(stream)).unwrap();
    link.close();
    (state.first_sequence, state.last_sequence)
}

// Retention in a cluster: a partition's owner carries waiting events forward, writes a snapshot
// and purges its stream; a new owner starts from the snapshot and the tail, knows the endpoint,
// and delivers every event that was waiting.
#[test]
fn partitions_are_purged_and_a_new_owner_starts_from_the_snapshot() {
    let Some(nats) = NatsCluster::start(3) else { return };
    let directories: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let short = [("KAPSEL_RETENTION", "1s"), ("KAPSEL_IDEMPOTENCY_WINDOW", "1s")];
    let mut nodes: Vec<Option<Server>> = NAMES
        .iter()
        .zip(&directories)
        .map(|(name, dir)| Some(node_with(dir.path(), &nats, name, "127.0.0.1:0", &short)))
        .collect();
    settled(&live(&nodes), &NAMES);
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switch = std::sync::Arc::clone(&healthy);
    let sink = Sink::start(move |_, received| {
        let down = received.path.starts_with("/stuck") && !switch.load(std::sync::atomic::Ordering::SeqCst);
        Reply::status(if down { 503 } else { 200 })
    });
    let retry = r#""retry":{"max_attempts":100,"initial_delay_ms":200,"max_delay_ms":500}"#;
    // Both endpoints in partition 0, which holds the tenants and keys too, and which filling
    // past a sealed range lets retention purge (nothing leaves a stream before its range of
    // 4096 is sealed).
    let partition = 0;
    let in_partition = |prefix: &str| {
        (0..)
            .map(|n| format!("{prefix}-{n}"))
            .find(|id| crate::common::shard_of(id, u64::from(PARTITIONS)) as u32 == partition)
            .unwrap()
    };
    let (fine, stuck) = (in_partition("fine"), in_partition("stuck"));
    let created = live(&nodes)[2].admin("POST", "/admin/tenants/default/keys", r#"{"scopes":["read"]}"#);
    assert_eq!(created.status, 201, "{created:?}");
    let key = format!("Bearer {}", created.json()["key"].as_str().unwrap());
    create(live(&nodes)[0], &fine, &format!(r#"{{"url":"{}"}}"#, sink.url("/fine")));
    create(live(&nodes)[1], &stuck, &format!(r#"{{"url":"{}",{retry}}}"#, sink.url("/stuck")));
    let waiting: Vec<String> =
        (0..10).map(|index| ingest_at(live(&nodes)[index % 3].address, &stuck, b"{}").unwrap()).collect();
    fill(&live(&nodes), &fine, 4200);
    // The partition is purged while the stuck events still wait.
    crate::common::wait_until("the partition purged", || stream_extent(&nats, partition).0 > 4000);
    // A node that joins now reads the tenants and keys from the partition's snapshot: the key,
    // whose record was purged, is known there.
    let late = tempfile::tempdir().unwrap();
    let joined = node_with(late.path(), &nats, "node-d", "127.0.0.1:0", &short);
    let session = joined.request("GET", "/admin/session", &[("Authorization", key.as_str())], b"");
    assert_eq!((session.status, &session.json()["principal"]), (200, &serde_json::json!("key")), "{session:?}");
    assert_eq!(joined.stop(), 0);
    let stuck_partition = partition;
    // Kill the owner of "stuck"'s partition: its successor starts from the snapshot.
    let view = live(&nodes)[0].admin("GET", "/admin/cluster", "").json();
    let owner = view["partitions"][stuck_partition as usize]["owner"].as_str().unwrap().to_string();
    let index = NAMES.iter().position(|name| *name == owner).unwrap();
    nodes[index].take().unwrap().kill();
    let survivors: Vec<&str> = NAMES.iter().copied().filter(|name| *name != owner).collect();
    settled(&live(&nodes), &survivors);
    for node in live(&nodes) {
        let endpoint = node.admin("GET", &format!("/admin/endpoints/{stuck}"), "");
        assert_eq!(endpoint.status, 200, "{endpoint:?}");
    }
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let wanted: HashSet<&str> = waiting.iter().map(String::as_str).collect();
    sink.wait_for("every waiting event", Duration::from_secs(60), |received| {
        let delivered: HashSet<&str> =
            received.iter().filter(|r| r.path.starts_with("/stuck")).filter_map(|r| r.header("webhook-id")).collect();
        wanted.iter().all(|id| delivered.contains(id))
    });
    for id in &waiting {
        let event = live(&nodes)[0].admin("GET", &format!("/admin/events/{id}"), "").json();
        assert_eq!(event["status"], "delivered", "{event}");
    }
    let _ = directories;
}

// Audit: each owner seals its partitions' complete ranges of 4096 sequences into the cluster's
// bucket, chained; an event's record is proven in its range from any node, and
// `kapsel audit verify` checks the cluster.
#[test]
fn partitions_are_sealed_and_proven() {
    let Some(rig) = Rig::start(1, 16, Duration::ZERO) else { return };
    let nodes = rig.live();
    let accepted = fill(&nodes, "orders-0", 4200);
    let first = accepted.iter().min().unwrap().clone();
    let mut proof = serde_json::Value::Null;
    crate::common::wait_until("the first range sealed", || {
        let response = nodes[1].admin("GET", &format!("/admin/events/{first}/proof"), "");
        proof = response.json();
        response.status == 200
    });
    assert_eq!(proof["event_id"], first.as_str());
    let hash = |field: &str| kapsel_wal::merkle::from_hex(proof[field].as_str().unwrap()).unwrap();
    let path: Vec<_> = proof["audit_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| kapsel_wal::merkle::from_hex(h.as_str().unwrap()).unwrap())
        .collect();
    let (index, size) = (proof["leaf_index"].as_u64().unwrap(), proof["tree_size"].as_u64().unwrap());
    assert!(kapsel_wal::merkle::verify_inclusion(&hash("leaf_hash"), index, size, &path, &hash("root")));
    // Every node lists the partitions' seals, the proof's among them.
    let segments = nodes[2].admin("GET", "/admin/audit/segments", "").json();
    let partition = proof["partition"].as_u64().unwrap() as usize;
    let listed = &segments["partitions"][partition];
    let range = &listed["ranges"][proof["range"].as_u64().unwrap() as usize];
    assert_eq!((&range["root"], &range["chain"]), (&proof["root"], &proof["chain"]), "{segments}");
    assert!(listed["chain_head"].is_string(), "{segments}");
    // The newest events are in a range not sealed yet: 404 E1004, as before a local segment seals.
    let last = accepted.iter().max().unwrap();
    let unsealed = nodes[2].admin("GET", &format!("/admin/events/{last}/proof"), "");
    assert_eq!((unsealed.status, unsealed.code()), (404, "E1004".to_string()), "{unsealed:?}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kapsel"))
        .args(["audit", "verify"])
        .env_clear()
        .env("KAPSEL_NATS_URL", rig.nats.urls())
        .env("KAPSEL_PARTITIONS", PARTITIONS.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&output.stderr));
}

/// Each partition's index checkpoint: (sequence, fence epoch).
fn partition_checkpoints(postgres: &crate::common::postgres::Postgres, database: &str) -> BTreeMap<u32, (u64, u64)> {
    postgres
        .psql(database, "SELECT partition, sequence, fence_epoch FROM partition_checkpoints ORDER BY partition")
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<u64> = line.split('|').map(|field| field.parse().unwrap()).collect();
            (u32::try_from(fields[0]).unwrap(), (fields[1], fields[2]))
        })
        .collect()
}

// The Postgres index of a cluster is fed by the partitions' owners: every node writes the
// partitions it owns, each checkpoint a stream sequence; a node killed mid-load leaves its
// partitions' checkpoints where they were and the new owners go on from them. In the end the
// index holds every acknowledged event exactly once, delivered, with its attempts, and any node
// answers listings from it.
#[test]
fn the_index_is_fed_by_the_partitions_owners() {
    let Some(postgres) = crate::common::postgres::Postgres::start() else { return };
    let url = postgres.database("cluster");
    let settings = [("DATABASE_URL", url.as_str()), ("DATABASE_MAX_CONNECTIONS", "3")];
    let Some(mut rig) = Rig::start_with(6, 4, Duration::from_millis(2), &settings) else { return };
    let accepted = rig.load(1500, 4, |rig| {
        if let Some(node) = rig.nodes[1].take() {
            node.kill();
        }
        settled(&rig.live(), &["node-a", "node-c"]);
    });
    rig.all_delivered(&accepted);
    let extra = indexed_exactly(&rig, &postgres, &accepted);
    // Any node answers listings and history from the index.
    for node in rig.live() {
        let page = node.admin("GET", "/admin/events?status=delivered&limit=1000", "").json();
        let listed = page["events"].as_array().map_or(0, Vec::len);
        assert_eq!(listed, 1000.min(accepted.len()), "{page}");
        let event = node.admin("GET", &format!("/admin/events/{}", accepted[7]), "").json();
        assert_eq!(event["status"], "delivered", "{event}");
        let ready = node.request("GET", "/readyz", &[], b"").json();
        assert_eq!(ready["index"]["state"], "connected", "{ready}");
    }
    // The index dropped (as to rebuild it): the owners notice at their next batch and read
    // every partition back from its stream, through the fence.
    postgres.psql("cluster", "DELETE FROM attempts; DELETE FROM events; DELETE FROM partition_checkpoints");
    let mut all = accepted.clone();
    for (index, endpoint) in rig.endpoints.iter().enumerate() {
        let node = rig.live()[index % 2].address;
        all.push(ingest_at(node, endpoint, b"{\"after\":\"rebuild\"}").unwrap());
    }
    rig.all_delivered(&all);
    let rebuilt_extra = indexed_exactly(&rig, &postgres, &all);
    assert_eq!(rebuilt_extra, extra, "the rebuilt index holds the same events");
    println!(
        "cluster index: {} acknowledged events indexed once each over {PARTITIONS} partitions, a node killed \
         mid-load ({extra} more it had stored without answering)",
        accepted.len()
    );
    drop(rig.nats);
}

/// Waits until the index is caught up — every partition's checkpoint at its stream's last
/// sequence and its owner's epoch, and all events delivered — then checks that it holds every
/// event of `accepted` once, delivered with its attempts; returns how many more it holds
/// (ingests a killed node stored without answering: at most the load's clients).
fn indexed_exactly(rig: &Rig, postgres: &crate::common::postgres::Postgres, accepted: &[String]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let checkpoints = partition_checkpoints(postgres, "cluster");
        let view = rig.live()[0].admin("GET", "/admin/cluster", "").json();
        let epochs: BTreeMap<u32, u64> = view["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| (entry["partition"].as_u64().unwrap() as u32, entry["epoch"].as_u64().unwrap_or(0)))
            .collect();
        let caught_up = (0..PARTITIONS).all(|partition| {
            checkpoints.get(&partition) == Some(&(stream_extent(&rig.nats, partition).1, epochs[&partition]))
        });
        let delivered = postgres
            .psql("cluster", "SELECT count(*) FROM events WHERE endpoint_id IS NOT NULL AND status = 'delivered'");
        if caught_up && delivered.parse::<usize>().unwrap() >= accepted.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the index did not catch up: {checkpoints:?} {epochs:?} {delivered}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rows = postgres.psql(
        "cluster",
        "SELECT e.id, e.status, e.attempt_count, (SELECT count(*) FROM attempts a WHERE a.event_id = e.id)
           FROM events e WHERE e.endpoint_id IS NOT NULL ORDER BY e.id",
    );
    let mut indexed = Vec::new();
    for line in rows.lines().filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields[1], "delivered", "{line}");
        assert!(fields[2].parse::<u32>().unwrap() >= 1 && fields[2] == fields[3], "attempts and their rows: {line}");
        indexed.push(fields[0].to_string());
    }
    let indexed_set: HashSet<&String> = indexed.iter().collect();
    let missing: Vec<&String> = accepted.iter().filter(|id| !indexed_set.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged events missing from the index: {missing:?}");
    let extra = indexed.len() - accepted.len();
    assert!(extra <= 4, "{extra} events indexed that no client was told about");
    extra
}

/// Publishes to `channel` through `address`, retrying while the channel's partition is between
/// owners (503): the status (202, or 200 for a repeated key), the event id and how many
/// endpoints it goes to; `None` when the node is unreachable or the partition stays ownerless.
fn publish_at(
    address: std::net::SocketAddr,
    channel: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String, u64)> {
    let authorization = format!("Bearer {TOKEN}");
    let mut fields = vec![("Content-Type", "application/json"), ("Authorization", authorization.as_str())];
    fields.extend_from_slice(headers);
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let response = try_request(address, "POST", &format!("/publish/{channel}"), &fields, body).ok()?;
        match response.status {
            200 | 202 => {
                let json = response.json();
                return Some((response.status, json["event_id"].as_str()?.to_string(), json["endpoints"].as_u64()?));
            }
            503 => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("publish through {address}: {response:?}"),
        }
    }
    None
}

// Publishing to a channel in a cluster: whichever node receives it, the channel's partition
// owner takes it and hands each other partition's owner its deliveries, so every subscriber,
// whichever partition it lives in, gets the event once with the publish's id; a node killed
// mid-load loses none of them (its successors go on with the handoffs); a repeated key answers
// the first id through any node; any node shows every delivery of the event.
#[test]
fn publishes_reach_subscribers_in_every_partition() {
    let Some(mut rig) = Rig::start(0, 4, Duration::from_millis(2)) else { return };
    let subscribers: Vec<String> = (0..6).map(|index| format!("sub-{index}")).collect();
    for (index, id) in subscribers.iter().enumerate() {
        let url = rig.sink.url(&format!("/{id}"));
        let body = format!(r#"{{"url":"{url}","channels":["orders"],"max_in_flight":4}}"#);
        create(rig.nodes[index % 3].as_ref().unwrap(), id, &body);
    }
    let url = rig.sink.url("/elsewhere");
    create(rig.nodes[0].as_ref().unwrap(), "elsewhere", &format!(r#"{{"url":"{url}","channels":["other"]}}"#));
    // Every node follows every partition's endpoint changes within milliseconds: the channel's
    // owner matches all six once it has.
    let first = rig.nodes[1].as_ref().unwrap().address;
    crate::common::wait_until("the channel's owner knows every subscriber", || {
        publish_at(first, "orders", &[], b"{\"probe\":true}").is_some_and(|(_, _, endpoints)| endpoints == 6)
    });
    let send = |address, index: usize| {
        let published = publish_at(address, "orders", &[], format!("{{\"n\":{index}}}").as_bytes())?;
        assert_eq!(published.2, 6, "every subscriber matched: {published:?}");
        Some(published.1)
    };
    let accepted = rig.load_with(300, 3, std::sync::Arc::new(send), |rig| {
        if let Some(node) = rig.nodes[1].take() {
            node.kill();
        }
        settled(&rig.live(), &["node-a", "node-c"]);
    });
    let wanted: HashSet<(String, &str)> = subscribers
        .iter()
        .flat_map(|id| accepted.iter().map(move |event| (format!("/{id}"), event.as_str())))
        .collect();
    let received = rig.sink.wait_for("every publish at every subscriber", Duration::from_secs(120), |received| {
        let got: HashSet<(String, &str)> =
            received.iter().filter_map(|r| Some((r.path.clone(), r.header("webhook-id")?))).collect();
        wanted.iter().all(|pair| got.contains(&(pair.0.clone(), pair.1)))
    });
    let mut seen = HashSet::new();
    let repeated = received
        .iter()
        .filter(|r| accepted.iter().any(|id| Some(id.as_str()) == r.header("webhook-id")))
        .filter(|r| !seen.insert((r.path.clone(), r.header("webhook-id").map(str::to_string))))
        .count();
    // Only deliveries in flight at the killed node arrive twice.
    assert!(repeated <= subscribers.len() * 4, "{repeated} deliveries arrived twice");
    assert!(received.iter().all(|r| r.path != "/elsewhere"), "an endpoint of another channel got a publish");
    // A repeated key answers the first id through any node.
    let (a, c) = (rig.nodes[0].as_ref().unwrap().address, rig.nodes[2].as_ref().unwrap().address);
    let key = [("X-Idempotency-Key", "once")];
    let first = publish_at(a, "orders", &key, b"{}").unwrap();
    let again = publish_at(c, "orders", &key, b"{}").unwrap();
    assert_eq!((first.0, again.0, &again.1, again.2), (202, 200, &first.1, 6));
    // Any node shows the event with each partition's delivery.
    for node in rig.live() {
        let event = node.admin("GET", &format!("/admin/events/{}", accepted[5]), "").json();
        let deliveries = event["deliveries"].as_array().map_or(0, Vec::len);
        assert_eq!((deliveries, &event["status"]), (6, &serde_json::json!("delivered")), "{event}");
    }
    println!(
        "cluster publish: {} events to 6 subscribers over {PARTITIONS} partitions, a node killed mid-load, {repeated} \
         deliveries twice",
        accepted.len()
    );
    drop(rig.nats);
}
