//! The private NATS JetStream cluster the cluster-mode tests will use: it must form one cluster
//! with one meta leader, elect another when the leader is killed or paused, take a killed or
//! paused server back, and leave no server behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::nats::{meta_leader_of, meta_replica, meta_replica_current, NatsCluster};

// Cluster mode (issue 16) is tested against three real nats-server processes; this checks that
// harness on its own, so that a cluster-mode failure is never the harness's.
#[test]
fn three_servers_form_one_jetstream_cluster_with_one_meta_leader() {
    let Some(cluster) = NatsCluster::start(3) else { return };
    let leader = cluster.meta_leader().expect("one meta leader named by all three");
    for index in 0..3 {
        let jsz = cluster.jsz(index);
        assert_eq!(meta_leader_of(&jsz).as_deref(), Some(leader.as_str()), "{jsz}");
        assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");
        let store = cluster.directory(index).join("store").join("jetstream");
        assert_eq!(jsz["config"]["store_dir"], store.display().to_string(), "{jsz}");
        assert!(store.is_dir(), "JetStream keeps its files under the configured store_dir");
        assert_eq!(cluster.monitor(index, "/routez")["num_routes"], 2, "routed to both others");
    }
    let leader_jsz = cluster.jsz(cluster.index_of(&leader).unwrap());
    for index in (0..3).filter(|index| cluster.name(*index) != leader) {
        assert!(meta_replica_current(&leader_jsz, cluster.name(index)), "{leader_jsz}");
    }

    let urls = cluster.urls();
    assert_eq!(urls.split(',').collect::<Vec<_>>(), (0..3).map(|index| cluster.url(index)).collect::<Vec<_>>());
    assert!(urls.split(',').all(|url| url.starts_with("nats://127.0.0.1:")), "{urls}");
    let pids: Vec<u32> = (0..3).map(|index| cluster.pid(index).unwrap()).collect();
    drop(cluster);
    assert!(pids.iter().all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()), "killed and reaped");
}

// The fail-over tests kill the meta leader with SIGKILL; the harness must show the remaining
// majority electing another and must bring the dead server back on its own store.
#[test]
fn a_killed_meta_leader_is_replaced_and_rejoins_after_a_restart() {
    let Some(mut cluster) = NatsCluster::start(3) else { return };
    let old_leader = cluster.meta_leader().unwrap();
    let killed = cluster.index_of(&old_leader).unwrap();
    cluster.kill(killed);
    assert_eq!(cluster.pid(killed), None);

    let (new_leader, leader_index) = elected_without(&mut cluster, &old_leader);

    cluster.restart(killed);
    let jsz = cluster.jsz(killed);
    assert_eq!(meta_leader_of(&jsz).as_deref(), Some(new_leader.as_str()), "{jsz}");
    assert!(meta_replica_current(&cluster.jsz(leader_index), &old_leader), "rejoined and current");
    assert_eq!(cluster.meta_leader().as_deref(), Some(new_leader.as_str()));
}

// A paused process (SIGSTOP: a stalled VM, a long GC) is the case fencing exists for: the others
// must see it fall behind and elect without it, and it must come back as a follower.
#[test]
fn a_paused_meta_leader_loses_leadership_and_rejoins_after_sigcont() {
    let Some(mut cluster) = NatsCluster::start(3) else { return };
    let old_leader = cluster.meta_leader().unwrap();
    let paused = cluster.index_of(&old_leader).unwrap();
    cluster.pause(paused);

    let (new_leader, leader_index) = elected_without(&mut cluster, &old_leader);

    cluster.resume(paused);
    let jsz = cluster.jsz(paused);
    assert_eq!(meta_leader_of(&jsz).as_deref(), Some(new_leader.as_str()), "a follower now: {jsz}");
    assert!(meta_replica_current(&cluster.jsz(leader_index), &old_leader), "rejoined and current");
}

// One-server tests run cluster mode with one replica; nats-server 2.9 refuses a cluster block
// without routes, so a lone server runs plain JetStream, with no meta group.
#[test]
fn a_lone_server_runs_jetstream_without_a_meta_group() {
    let Some(cluster) = NatsCluster::start(1) else { return };
    let jsz = cluster.jsz(0);
    assert!(jsz["config"]["store_dir"].is_string(), "JetStream is on: {jsz}");
    assert!(jsz.get("meta_cluster").is_none(), "{jsz}");
    assert_eq!(cluster.meta_leader(), None);
    assert_eq!(cluster.urls(), cluster.url(0));
}

// A failing test must not leave nats-server processes holding ports and disk for the rest of
// the run: the cluster is killed while the panic unwinds.
#[test]
fn a_panicking_test_leaves_no_server_behind() {
    let Some(cluster) = NatsCluster::start(1) else { return };
    let pid = cluster.pid(0).unwrap();
    let port = cluster.monitor_port(0);
    let outcome = std::thread::spawn(move || {
        let _cluster = cluster;
        panic!("a test fails while its cluster runs");
    })
    .join();
    assert!(outcome.is_err());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "its port is closed");
}

/// Waits until the other servers elect a meta leader other than `old_leader` and that leader
/// sees `old_leader` fall behind; the new leader's name and index.
fn elected_without(cluster: &mut NatsCluster, old_leader: &str) -> (String, usize) {
    common::wait_until("a meta leader among the others", || {
        cluster.meta_leader().is_some_and(|leader| leader != old_leader)
    });
    let new_leader = cluster.wait_settled();
    assert_ne!(new_leader, old_leader);
    let leader_index = cluster.index_of(&new_leader).unwrap();
    common::wait_until("the new leader to see the old one behind", || {
        let jsz = cluster.jsz(leader_index);
        meta_replica(&jsz, old_leader).is_some_and(|replica| replica["current"] == false)
    });
    (new_leader, leader_index)
}
