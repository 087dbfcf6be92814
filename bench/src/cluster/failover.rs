//! The fail-over: `kill -9` of a partition's owner while a trickle of ingests for that partition
//! goes through a surviving node, and the time until the new owner delivers an event ingested
//! after the kill.
//!
//! 1. Partition P: the first one `node-b` owns (node `VICTIM`); endpoint `failover-<k>`, the
//!    first such name in P, created through `node-a` with deliveries on to [`Arrivals`] (a
//!    receiver in this process).
//! 2. The trickle: one ingest every [`limits::FAILOVER_TRICKLE_MS`] through `node-a`, each body
//!    stamped with its send time, on a thread of its own; once
//!    [`limits::FAILOVER_DELIVERIES_BEFORE_KILL`] deliveries have arrived the owner is killed.
//! 3. After the kill, `GET /admin/cluster` on `node-a` every [`limits::CLUSTER_POLL_MS`]: the
//!    dead owner's last lease of P (its expiry, final once nobody renews it), its last
//!    heartbeat, and the first lease of a later epoch (the take: its expiry minus the lease
//!    length). The clock stops at the first arrival of an event sent after the kill.
//! 4. The trickle stops; every event answered 202 must then arrive (bounded wait), and events
//!    that arrived twice are counted.
//!
//! Every time is a Unix reading of this machine's one clock (Kapsel's leases are Unix ms too).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::arrivals::Arrivals;
use super::nodes::{partition_of, ClusterView, Nodes, NAMES};
use crate::limits;
use crate::payload::{ingest_request, stamped_json_body, unix_micros_now, SendTimeStamp};
use crate::setup;
use crate::sink::HOOK_PATH;

/// The node killed.
const VICTIM: usize = 1;

/// The node the trickle and the views go through.
const SURVIVOR: usize = 0;

/// Kapsel's clock-skew allowance: a taker waits this long after a lease lapsed by its own clock
/// (`cluster::SKEW_MS_DEFAULT`; not a setting, so not in `GET /admin/cluster`).
pub(crate) const SKEW_MS: u64 = 1_000;

/// Names tried for an endpoint in P, at most (16 partitions: found within a few dozen).
const NAME_SEARCH_MAX: u32 = 100_000;

/// The trickle's events' bodies (stamped, small).
const TRICKLE_BODY_BYTES: usize = 256;

/// What the fail-over measured; times in ms after the kill.
#[derive(Clone, Debug, Default)]
pub(crate) struct Failover {
    pub(crate) partition: u32,
    pub(crate) endpoint: String,
    pub(crate) victim: String,
    pub(crate) new_owner: String,
    pub(crate) lease_ms: u64,
    /// The dead owner's last lease lapses (its expiry).
    pub(crate) lease_lapse_ms: i64,
    /// Its last heartbeat lapses (heartbeat + lease length): it stops being live to the others.
    pub(crate) heartbeat_lapse_ms: i64,
    /// The new owner's take (its lease's first expiry minus the lease length).
    pub(crate) taken_ms: i64,
    /// The first ingest answered 202 among those sent after the kill (its send time).
    pub(crate) first_accepted_ms: i64,
    /// The first delivery of an event sent after the kill (its arrival): the fail-over time.
    pub(crate) first_delivery_ms: i64,
    /// All of the dead owner's partitions had a new owner (as `node-a` saw them).
    pub(crate) all_moved_ms: Option<i64>,
    /// Ingests sent after the kill and answered 503 before the first 202.
    pub(crate) refused_after_kill: u64,
    /// Ingests answered otherwise than 202 or 503, or failed.
    pub(crate) errors: u64,
    /// Events answered 202 over the whole trickle.
    pub(crate) accepted: usize,
    /// Of those, not delivered by the end of the wait.
    pub(crate) undelivered: usize,
    /// Events delivered more than once (attempts in flight at the kill).
    pub(crate) repeated: usize,
    /// Deliveries the sink could not read (answered 400).
    pub(crate) sink_refused: u64,
}

impl Failover {
    /// The lease's part of the fail-over: until the dead owner's lease has lapsed for the
    /// others (its expiry plus the skew allowance).
    pub(crate) fn lease_part_ms(&self) -> i64 {
        self.lease_lapse_ms + SKEW_MS as i64
    }
}

/// One trickle ingest: its send time and the answer (0: failed).
type Sent = (u64, u16);

/// The trickle's thread, stopped when dropped.
struct Trickle {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trickle {
    fn start(address: std::net::SocketAddr, endpoint: &str) -> Result<Self, String> {
        let (body, digits_at) = stamped_json_body(TRICKLE_BODY_BYTES)?;
        let stamp = SendTimeStamp::of_body(&body, digits_at);
        let template = ingest_request(address, endpoint, &body);
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (stopping, sending) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::Builder::new()
            .name("failover-trickle".into())
            .spawn(move || {
                let timeout = Duration::from_millis(limits::REQUEST_TIMEOUT_MS);
                while !stopping.load(Ordering::Acquire) {
                    let mut request = template.clone();
                    let sent_us = unix_micros_now();
                    let status = if stamp.write(&mut request, sent_us) {
                        setup::request_blocking(address, &request, timeout).map_or(0, |(status, _)| status)
                    } else {
                        0
                    };
                    sending.lock().unwrap_or_else(PoisonError::into_inner).push((sent_us, status));
                    std::thread::sleep(Duration::from_millis(limits::FAILOVER_TRICKLE_MS));
                }
            })
            .map_err(|error| format!("the trickle's thread: {error}"))?;
        Ok(Self { stop, sent, thread: Some(thread) })
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Milliseconds from `kill_us` to `at_us` (negative: before the kill).
fn after_ms(at_us: u64, kill_us: u64) -> i64 {
    let milliseconds = (i128::from(at_us) - i128::from(kill_us)) / 1000;
    // |u64 difference| / 1000 always fits.
    i64::try_from(milliseconds).unwrap_or(i64::MAX)
}

/// Runs the fail-over on settled `nodes` (which then have one node fewer).
///
/// # Errors
///
/// A step failed or took longer than its bound.
pub(crate) fn run(nodes: &mut Nodes) -> Result<Failover, String> {
    let before = nodes.view(SURVIVOR)?;
    let victim = NAMES[VICTIM];
    let victims_partitions = before.owned_by(victim);
    let partition = *victims_partitions.first().ok_or_else(|| format!("{victim} owns no partition: {before:?}"))?;
    let endpoint = (0..NAME_SEARCH_MAX)
        .map(|index| format!("failover-{index}"))
        .find(|name| partition_of(name, limits::CLUSTER_PARTITIONS) == partition)
        .ok_or_else(|| format!("no endpoint name in partition {partition}"))?;
    let sink = Arrivals::start()?;
    let body = format!(r#"{{"ingest_auth":{{"type":"none"}},"url":"http://{}{HOOK_PATH}"}}"#, sink.address());
    match nodes.admin(SURVIVOR, "PUT", &format!("/admin/endpoints/{endpoint}"), Some(&body))? {
        (200 | 201, _) => {}
        (status, answer) => return Err(format!("PUT /admin/endpoints/{endpoint} answered {status}: {answer}")),
    }
    let (address, _) = nodes.running(SURVIVOR).ok_or("node-a is not running")?;
    let mut trickle = Trickle::start(address, &endpoint)?;
    let enough = || sink.arrivals().len() >= limits::FAILOVER_DELIVERIES_BEFORE_KILL;
    let what = format!("{} deliveries before the kill", limits::FAILOVER_DELIVERIES_BEFORE_KILL);
    wait_for(&what, limits::FAILOVER_MS_MAX, enough)?;
    let view = nodes.view(SURVIVOR)?;
    let epochs: Vec<u64> = view.partitions.iter().map(|partition| partition.epoch).collect();
    if view.partitions.get(partition as usize).and_then(|p| p.owner.as_deref()) != Some(victim) {
        return Err(format!("partition {partition} moved away from {victim} before the kill: {view:?}"));
    }
    let kill_us = unix_micros_now();
    nodes.kill(VICTIM)?;
    let mut failover = Failover { partition, endpoint, victim: victim.to_string(), ..Failover::default() };
    watch(nodes, &sink, (kill_us, partition, &victims_partitions, &epochs), &mut failover)?;
    trickle.stop();
    nodes.check_running()?;
    settle_trickle(&sink, &trickle.sent(), kill_us, &mut failover);
    Ok(failover)
}

/// Polls `node-a`'s view and the sink after the kill until the partition has a new owner, an
/// event sent after the kill has arrived, and all the dead owner's partitions have moved; fills
/// in the lease times and the fail-over time.
fn watch(
    nodes: &Nodes,
    sink: &Arrivals,
    (kill_us, partition, victims_partitions, epochs): (u64, u32, &[u32], &[u64]),
    failover: &mut Failover,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(limits::FAILOVER_MS_MAX);
    let old_epoch = epochs.get(partition as usize).copied().unwrap_or(0);
    let (mut lease_expiry_ms, mut heartbeat_ms, mut taken) = (0u64, 0u64, None);
    loop {
        // A view that cannot be read (the survivor busy) is only a missed sample.
        if let Ok(view) = nodes.view(SURVIVOR) {
            let ClusterView { lease_ms, partitions, nodes: seen } = &view;
            failover.lease_ms = *lease_ms;
            if let Some(heartbeat) = seen.get(&failover.victim) {
                heartbeat_ms = heartbeat.0;
            }
            match partitions.get(partition as usize) {
                Some(lease) if lease.epoch == old_epoch => lease_expiry_ms = lease.lease_expires_at_ms,
                Some(lease) if lease.epoch > old_epoch && taken.is_none() && lease.owner.is_some() => {
                    taken = Some((lease.owner.clone().unwrap_or_default(), lease.lease_expires_at_ms));
                }
                _ => {}
            }
            let moved = victims_partitions.iter().all(|index| {
                let was = epochs.get(*index as usize).copied().unwrap_or(0);
                partitions.get(*index as usize).is_some_and(|lease| lease.epoch > was && lease.owner.is_some())
            });
            if moved && failover.all_moved_ms.is_none() {
                failover.all_moved_ms = Some(after_ms(unix_micros_now(), kill_us));
            }
        }
        let first = sink.arrivals().into_iter().find(|arrival| arrival.sent_us >= kill_us);
        // The dead owner's other partitions may move a round later than this one.
        let all_moved = failover.all_moved_ms.is_some();
        if let (Some(first), Some((owner, expiry_ms)), true) = (first, &taken, all_moved) {
            failover.new_owner.clone_from(owner);
            failover.first_delivery_ms = after_ms(first.arrived_us, kill_us);
            failover.taken_ms = after_ms(expiry_ms.saturating_sub(failover.lease_ms) * 1000, kill_us);
            failover.lease_lapse_ms = after_ms(lease_expiry_ms * 1000, kill_us);
            failover.heartbeat_lapse_ms = after_ms((heartbeat_ms + failover.lease_ms) * 1000, kill_us);
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} ms after the kill: new owner {taken:?}, delivery of an event sent after the kill {first:?}, \
                 all partitions moved {all_moved}",
                limits::FAILOVER_MS_MAX
            ));
        }
        std::thread::sleep(Duration::from_millis(limits::CLUSTER_POLL_MS));
    }
}

/// The trickle's answers after the kill, then the wait until every accepted event arrived, and
/// the repeats.
fn settle_trickle(sink: &Arrivals, sent: &[Sent], kill_us: u64, failover: &mut Failover) {
    let after_kill: Vec<&Sent> = sent.iter().filter(|(sent_us, _)| *sent_us >= kill_us).collect();
    if let Some((first_us, _)) = after_kill.iter().find(|(_, status)| *status == 202) {
        failover.first_accepted_ms = after_ms(*first_us, kill_us);
        failover.refused_after_kill =
            after_kill.iter().filter(|(sent_us, status)| *status == 503 && sent_us < first_us).count() as u64;
    }
    failover.errors = sent.iter().filter(|(_, status)| !matches!(status, 202 | 503)).count() as u64;
    let accepted: Vec<u64> = sent.iter().filter(|(_, status)| *status == 202).map(|(sent_us, _)| *sent_us).collect();
    failover.accepted = accepted.len();
    let delivered = |arrivals: &[super::arrivals::Arrival]| {
        let mut seen: Vec<u64> = arrivals.iter().map(|arrival| arrival.sent_us).collect();
        seen.sort_unstable();
        accepted.iter().filter(|sent_us| seen.binary_search(sent_us).is_err()).count()
    };
    // Not an error here: what is missing at the end is reported.
    let all = || delivered(&sink.arrivals()) == 0;
    let _ = wait_for("every accepted trickle event delivered", limits::FAILOVER_DRAIN_MS_MAX, all);
    let arrivals = sink.arrivals();
    failover.undelivered = delivered(&arrivals);
    let mut sent_times: Vec<u64> = arrivals.iter().map(|arrival| arrival.sent_us).collect();
    sent_times.sort_unstable();
    let total = sent_times.len();
    sent_times.dedup();
    failover.repeated = total - sent_times.len();
    failover.sink_refused = sink.refused();
}

/// Polls `done` every [`limits::CLUSTER_POLL_MS`] for at most `bound_ms`.
fn wait_for(what: &str, bound_ms: u64, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {bound_ms} ms"));
        }
        std::thread::sleep(Duration::from_millis(limits::CLUSTER_POLL_MS));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The fail-over's figures are differences of Unix microseconds reported in ms: signed (a
    // lease read may show an expiry before the kill) and truncated toward zero.
    #[test]
    fn times_after_the_kill_are_signed_milliseconds() {
        assert_eq!(after_ms(1_000_000 + 10_500, 1_000_000), 10);
        assert_eq!(after_ms(1_000_000 - 2_000, 1_000_000), -2);
        assert_eq!(after_ms(0, u64::MAX), -18_446_744_073_709_551);
        let failover = Failover { lease_lapse_ms: 8_900, ..Failover::default() };
        assert_eq!(failover.lease_part_ms(), 9_900);
    }
}
