//! Every bound the load test keeps. The timeouts are what make each loop finite: no wait in
//! the client, the orchestration or the reference servers is unbounded.

/// Body size of every ingest request: a 1 KiB JSON document.
pub const PAYLOAD_BYTES: usize = 1024;

/// Connection counts of the closed loops.
pub const CLOSED_LOOP_CONNECTIONS: [usize; 2] = [64, 256];

/// Requests per second the open loop schedules.
pub const OPEN_LOOP_RATE_PER_S: u64 = 10_000;

/// Connections the open loop spreads its schedule over.
pub const OPEN_LOOP_CONNECTIONS: usize = 256;

/// Default measured time of each loop (`KAPSEL_BENCH_SECONDS`).
pub const MEASURE_SECONDS_DEFAULT: usize = 10;

/// Longest measured time accepted from `KAPSEL_BENCH_SECONDS`.
pub const MEASURE_SECONDS_MAX: usize = 3_600;

/// Warm-up before each measured period, not recorded: connections open, the server's
/// allocators and page cache warm, its log's first segment created.
pub const WARM_UP_MS: u64 = 2_000;

/// Default shards (Kapsel) and threads (references) per server (`KAPSEL_BENCH_SHARDS`).
pub const SERVER_SHARDS_DEFAULT: usize = 2;

/// Most shards or threads per server (`KAPSEL_BENCH_SHARDS`): Kapsel's own bound.
pub const SERVER_SHARDS_MAX: usize = 256;

/// Most rounds of the whole suite (`KAPSEL_BENCH_ROUNDS`, default 1).
pub const ROUNDS_MAX: usize = 100;

/// Most endpoints the load may be spread over (`KAPSEL_BENCH_ENDPOINTS`, default 1): one per
/// connection at most is useful.
pub const ENDPOINTS_MAX: usize = 256;

/// Delivery bench: endpoints the ingest is spread over (`bench-0`…`bench-3`, connection *i*
/// → endpoint *i* mod 4). With the default 2 shards each owns two of them (FNV-1a puts
/// `bench-0` and `bench-2` on shard 0, `bench-1` and `bench-3` on shard 1).
pub const DELIVERY_ENDPOINTS: usize = 4;

/// Delivery bench: connections of its closed loop.
pub const DELIVERY_CLOSED_LOOP_CONNECTIONS: usize = 64;

/// Delivery bench: ingest rates of its open loops, requests per second.
pub const DELIVERY_OPEN_LOOP_RATES_PER_S: [u64; 2] = [10_000, 20_000];

/// Delivery bench: after the load stops, how long the sink may take to receive every event
/// Kapsel accepted; what is missing then is reported as undelivered.
pub const DELIVERY_DRAIN_MS_MAX: u64 = 60_000;

/// Delivery bench: how long the first events (one per endpoint, before the loop) may take to
/// arrive at the sink; past it the scenario fails, as delivery does not work at all.
pub const DELIVERY_FIRST_MS_MAX: u64 = 10_000;

/// Delivery bench: pause between two polls of the sink's `GET /stats` while draining.
pub const SINK_POLL_MS: u64 = 50;

/// Kapsel's own default of `KAPSEL_PAYLOAD_MEMORY_BYTES` (64 MiB), which the delivery bench
/// leaves unset: the payload bytes one shard keeps in memory; events beyond it wait in the log
/// and are read back when their turn comes. Only used to say how far beyond it a backlog goes.
pub const KAPSEL_PAYLOAD_MEMORY_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Delivery bench, backlog scenario: events ingested into the paused endpoint before it is
/// enabled (`KAPSEL_BENCH_BACKLOG_EVENTS`); 1 KiB each, a million is 15× the default payload
/// budget, so most of the backlog must come back from the log.
pub const DELIVERY_BACKLOG_EVENTS_DEFAULT: usize = 1_000_000;

/// Delivery bench, restart scenario: events delivered before the graceful restart
/// (`KAPSEL_BENCH_RESTART_EVENTS`).
pub const DELIVERY_RESTART_EVENTS_DEFAULT: usize = 1_000_000;

/// Delivery bench: most events accepted from `KAPSEL_BENCH_BACKLOG_EVENTS` and
/// `KAPSEL_BENCH_RESTART_EVENTS`. Each costs about 1.1 KiB of log on disk (about 22 GiB here).
pub const DELIVERY_EVENTS_MAX: usize = 20_000_000;

/// Delivery bench, burst scenario: seconds of the closed loop (`KAPSEL_BENCH_BURST_SECONDS`).
pub const DELIVERY_BURST_SECONDS_DEFAULT: usize = 10;

/// Delivery bench: longest burst accepted from `KAPSEL_BENCH_BURST_SECONDS`.
pub const DELIVERY_BURST_SECONDS_MAX: usize = 600;

/// Delivery bench, burst scenario: connections of the closed loop, all into one endpoint, each
/// with one ingest outstanding: far more than one endpoint's delivery slots, so a backlog forms.
pub const DELIVERY_BURST_CONNECTIONS: usize = 256;

/// Delivery bench, backlog and restart scenarios: connections of the count-bounded fill
/// ([`crate::fill`]), as many as the footprint bench's (enough to keep both group commits full).
pub const DELIVERY_FILL_CONNECTIONS: usize = FOOTPRINT_FILL_CONNECTIONS;

/// Delivery bench, backlog, burst and restart scenarios: how long the sink may take to receive
/// every accepted event once delivery can start (the endpoint enabled, the burst begun, the fill
/// begun). Generous: a million events at a tenth of the 20 000/s target still fit. Past it the
/// scenario reports what is missing as undelivered.
pub const DELIVERY_BACKLOG_DRAIN_MS_MAX: u64 = 600_000;

/// Delivery bench, restart scenario: after the sink has received every event, how long Kapsel
/// may take to record the last outcomes (`kapsel_events_waiting` 0 on every shard) before it is
/// stopped anyway; the report says if it did not.
pub const DELIVERY_SETTLED_MS_MAX: u64 = 10_000;

/// Delivery bench, restart scenario: how long after the restarted Kapsel is ready the sink is
/// watched for deliveries that should not come (the target is none).
pub const DELIVERY_RESTART_QUIET_MS: u64 = 5_000;

/// Delivery bench, backlog scenario: how long after the last delivery Kapsel's resident memory
/// is read again, so that the allocator has had a moment to return what the drain freed.
pub const DELIVERY_SETTLE_MS: u64 = 2_000;

/// Delivery bench, hostile scenario: rounds of (alone, beside), alternated so that drift on a
/// shared machine touches both phases.
pub const HOSTILE_ROUNDS: usize = 2;

/// Delivery bench, hostile scenario: the bar, the healthy endpoint's rate beside the
/// hostile ones over its rate alone ("within 20 %").
pub const HOSTILE_RATE_RATIO_MIN: f64 = 0.8;

/// Delivery bench, hostile scenario: events a second ingested into each hostile endpoint, from
/// before the loop to its end. With [`HOSTILE_ATTEMPTS_MAX`] attempts each, a destination that
/// fails at once sees about 30 attempts a second, so its breaker's failure-rate window (1000
/// outcomes, every one failed) stays short of full for the phase's length and never opens.
pub const HOSTILE_EVENTS_PER_S: u64 = 10;

/// Delivery bench, hostile scenario: body size of the hostile endpoints' events.
pub const HOSTILE_PAYLOAD_BYTES: usize = 256;

/// Delivery bench, hostile scenario: time the hostile endpoints are fed before the loop
/// starts, so that their attempts (timeouts included) are in their steady state.
pub const HOSTILE_SETTLE_MS: u64 = 3_000;

/// Delivery bench, hostile scenario: the hostile endpoints' `timeout_ms`: what a silent,
/// stalled, trickling or endless destination holds each attempt for.
pub const HOSTILE_TIMEOUT_MS: u64 = 2_000;

/// Delivery bench, hostile scenario: the hostile endpoints' retry delay (fixed, no jitter).
pub const HOSTILE_RETRY_DELAY_MS: u64 = 500;

/// Delivery bench, hostile scenario: the hostile endpoints' `retry.max_attempts`.
pub const HOSTILE_ATTEMPTS_MAX: u32 = 3;

/// Hostile destinations: how often a held connection checks whether its client has gone (and
/// the accept loop's pause when idle).
pub const HOSTILE_POLL_MS: u64 = 20;

/// Hostile destinations: longest a connection is held open (silence, stalls), well past
/// [`HOSTILE_TIMEOUT_MS`]; a client normally closes it first.
pub const HOSTILE_HOLD_MS_MAX: u64 = 30_000;

/// Hostile destinations: largest request head read (Kapsel's are a few hundred bytes).
pub const HOSTILE_REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;

/// Hostile destinations: largest request body read; a larger one ends the connection.
pub const HOSTILE_REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Delivery bench, fan-out scenario: endpoints subscribed to the published channel, one run
/// each (`fan-0`…): every publish is delivered this many times. Kapsel refuses a publish that
/// matches more than 10 000 (its `PUBLISH_ENDPOINTS_MAX`).
pub const DELIVERY_FANOUT_ENDPOINTS: [usize; 3] = [1, 10, 100];

/// Delivery bench, fan-out scenario: connections of each run's closed loop of publishes, in
/// the order of [`DELIVERY_FANOUT_ENDPOINTS`]. A publish costs Kapsel one record and one fsync
/// whatever the endpoints, its deliveries N times one delivery's work, so connections × N is
/// kept near the loops' 64 requests outstanding (64, 80, 200): enough to keep the deliveries
/// busy, while the publishes take little of the two cores and the backlog stays one the drain
/// can clear. Two rather than one at N = 100, so that the loop does not idle through each
/// fsync: one publish waits for it while the other is on its way.
pub const DELIVERY_FANOUT_CONNECTIONS: [usize; 3] = [64, 8, 2];

/// Delivery bench, fan-out scenario: after the loop stops, how long the sink may take to
/// receive N deliveries for every accepted publish; what is missing then is reported as
/// undelivered. Longer than the loops' bound: each 202 owes N deliveries, so a closed loop of
/// publishes can ask for them faster than they go out and leave a backlog when it stops; a
/// million owed deliveries take under a minute at the 20 000/s target, under five at a quarter
/// of it.
pub const DELIVERY_FANOUT_DRAIN_MS_MAX: u64 = 300_000;

/// Delivery bench, tenants scenario: rounds of (alone, beside), alternated so that drift on a
/// shared machine touches both phases.
pub const TENANTS_ROUNDS: usize = 2;

/// Delivery bench, tenants scenario: endpoints of each tenant, the i-th on shard i mod the
/// shards, so that each tenant's load reaches every shard.
pub const TENANTS_ENDPOINTS: usize = 2;

/// Delivery bench, tenants scenario: suffixes tried per endpoint id to find one on the wanted
/// shard; the owner hash spreads ids evenly, so a few times the shards are enough, and this
/// bound only keeps a broken hash from looping for ever.
pub const TENANTS_ID_SEARCH_MAX: usize = 100_000;

/// Delivery bench, tenants scenario: tenant B's open loop, ingests per second: a steady load
/// well inside what two shards deliver, so that a change beside the flood is the flood's doing.
pub const TENANTS_B_INGEST_RATE_PER_S: u64 = 5_000;

/// Delivery bench, tenants scenario: connections B's open loop is served over.
pub const TENANTS_B_CONNECTIONS: usize = 64;

/// Delivery bench, tenants scenario: connections of tenant A's closed-loop flood. Each sends
/// its next ingest as soon as the last is answered, so beyond A's rate limit the refusals come
/// back as fast as Kapsel can answer them: the worst a tenant's sender can do.
pub const TENANTS_FLOOD_CONNECTIONS: usize = 64;

/// Delivery bench, tenants scenario: tenant A's `rate_limit_per_s`.
pub const TENANTS_A_RATE_LIMIT_PER_S: u64 = 2_000;

/// Delivery bench, tenants scenario: tenant A's `events_waiting_max`. Its destination is dead,
/// so its accepted events wait; at [`TENANTS_A_RATE_LIMIT_PER_S`] the bound is reached after
/// 25 s of flood, so only longer runs see A's 503s as well as its 429s.
pub const TENANTS_A_EVENTS_WAITING_MAX: u64 = 50_000;

/// Delivery bench, tenants scenario: how long A floods before B's loop starts, so that B's
/// warm-up already runs beside a flood in its steady state.
pub const TENANTS_FLOOD_SETTLE_MS: u64 = 1_000;

/// Delivery bench: how often a long drain prints its progress.
pub const DELIVERY_PROGRESS_MS: u64 = 10_000;

/// Delivery bench: pause between two polls of Kapsel's `GET /metrics` while waiting for it to
/// record its last outcomes.
pub const METRICS_POLL_MS: u64 = 100;

/// Index bench: connections of its closed loops (with and without the index): the ingest
/// bench's first closed loop, so the baseline is comparable with it.
pub const INDEX_CLOSED_LOOP_CONNECTIONS: usize = 64;

/// Index bench: pause between two samples of Kapsel's `GET /readyz` (the index's progress).
pub const INDEX_SAMPLE_MS: u64 = 100;

/// Index bench: one sample's connect, write and read time; a slower answer is a failed sample
/// (counted, not fatal).
pub const INDEX_SAMPLE_TIMEOUT_MS: u64 = 1_000;

/// Index bench: after the load stops, how long the index may take to catch up (lag 0); past
/// it the scenario is reported as not caught up and its count check fails.
pub const INDEX_CATCH_UP_MS_MAX: u64 = 60_000;

/// Index bench: rounds of the open-loop comparison of ingest with the index healthy, with
/// PostgreSQL down for the measured period, and with it back halfway through (interleaved, so
/// that noise spreads over all three). The healthy rounds' spread is the noise the outage's p99
/// is judged against.
pub const INDEX_OUTAGE_ROUNDS: usize = 3;

/// Index bench: time one `psql` or `pg_ctl` command may take (connect, statement, shutdown).
pub const POSTGRES_COMMAND_TIMEOUT_MS: u64 = 60_000;

/// Cluster bench: NATS servers and Kapsel nodes (one Kapsel node per NATS server, as on a
/// real three-machine cluster).
pub const CLUSTER_NODES: usize = 3;

/// Cluster bench: `KAPSEL_PARTITIONS`: enough for every node to own several, few enough that
/// three NATS servers on two cores create and elect their streams in seconds.
pub const CLUSTER_PARTITIONS: u32 = 16;

/// Cluster bench: endpoints the load spreads over (connection `i` → endpoint `i` mod this),
/// `bench-0`…: enough to hit most partitions, so partitions of all three nodes.
pub const CLUSTER_ENDPOINTS: usize = 64;

/// Cluster bench: connections of the closed loop, in single-node mode and against one node.
pub const CLUSTER_CLOSED_LOOP_CONNECTIONS: usize = 64;

/// Cluster bench: the open loop's rate: well under what one cluster node sustains here, so
/// its p99 is latency, not queueing.
pub const CLUSTER_OPEN_LOOP_RATE_PER_S: u64 = 2_000;

/// Cluster bench: connections the open loop's schedule is served over (one per endpoint).
pub const CLUSTER_OPEN_LOOP_CONNECTIONS: usize = CLUSTER_ENDPOINTS;

/// Cluster bench: `KAPSEL_SHARDS` of each cluster node by default (`KAPSEL_BENCH_CLUSTER_SHARDS`):
/// six processes share two cores.
pub const CLUSTER_SHARDS_DEFAULT: usize = 1;

/// Cluster bench: how long the NATS cluster may take to settle (healthy, routed, one meta
/// leader) and the Kapsel nodes to own every partition between them.
pub const CLUSTER_SETTLE_MS_MAX: u64 = 60_000;

/// Cluster bench: pause between two looks at the NATS monitors or `GET /admin/cluster` while
/// waiting for a cluster to settle, and the fail-over's resolution.
pub const CLUSTER_POLL_MS: u64 = 20;

/// Cluster bench: one monitoring or admin request's connect, write and read time.
pub const CLUSTER_POLL_TIMEOUT_MS: u64 = 1_000;

/// Cluster bench: how long an ingest answered 503 (its partition between owners) is retried
/// before the set-up gives up.
pub const CLUSTER_INGEST_RETRY_MS_MAX: u64 = 30_000;

/// Cluster bench, fail-over: the trickle's pause between two ingests through a surviving node
/// (50/s): the resolution of "the first event ingested after the kill".
pub const FAILOVER_TRICKLE_MS: u64 = 20;

/// Cluster bench, fail-over: deliveries the sink must have received before the kill (the
/// trickle is flowing end to end).
pub const FAILOVER_DELIVERIES_BEFORE_KILL: usize = 25;

/// Cluster bench, fail-over: how long after the kill the first delivery of an event ingested
/// after it may take: the 10 s lease, the 1 s skew allowance, a lease round, the takeover.
pub const FAILOVER_MS_MAX: u64 = 60_000;

/// Cluster bench, fail-over: after the trickle stops, how long every event it got a 202 for
/// may take to arrive (those accepted just before the kill wait for the new owner).
pub const FAILOVER_DRAIN_MS_MAX: u64 = 15_000;

/// Cluster bench, fail-over: the sink's largest request head and body; bigger is refused.
pub const FAILOVER_SINK_REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Footprint bench: endpoints configured for the idle-memory target and spread over by the
/// log it fills (the "1,000 endpoints configured").
pub const FOOTPRINT_ENDPOINTS: usize = 1_000;

/// Footprint bench: events ingested into the log whose replay is timed
/// (`KAPSEL_BENCH_FOOTPRINT_RECORDS`); the "WAL of 1M records".
pub const FOOTPRINT_RECORDS_DEFAULT: usize = 1_000_000;

/// Footprint bench: most events accepted from `KAPSEL_BENCH_FOOTPRINT_RECORDS`. Each costs
/// about 1.1 KiB of log on disk, so this is about 22 GiB.
pub const FOOTPRINT_RECORDS_MAX: usize = 20_000_000;

/// Footprint bench: connections of the closed loop that fills the log, each with one ingest
/// outstanding (enough to keep both shards' group commits full).
pub const FOOTPRINT_FILL_CONNECTIONS: usize = 128;

/// Footprint bench: the fill gives up after this many non-202 answers or transport failures;
/// a failed ingest is sent again, so without a bound a broken server would loop forever.
pub const FOOTPRINT_FILL_FAILURES_MAX: u64 = 1_000;

/// Footprint bench: how often the fill checks whether its connections are done.
pub const FOOTPRINT_FILL_POLL_MS: u64 = 50;

/// Footprint bench: how often the fill prints its progress.
pub const FOOTPRINT_FILL_PROGRESS_MS: u64 = 10_000;

/// Footprint bench: how long Kapsel is left idle before its resident memory is read, so that
/// start-up or set-up work and the allocator's returns have settled.
pub const FOOTPRINT_SETTLE_MS: u64 = 2_000;

/// Footprint bench: pause between two `GET /readyz` probes while timing a start-up; the
/// resolution of the time to ready.
pub const FOOTPRINT_READY_POLL_MS: u64 = 10;

/// Footprint bench: one readiness probe's connect, write and read time. A shard still
/// replaying has not started accepting, so a probe that reached it waits in the listen
/// backlog and is answered as soon as it serves; past this bound it is sent again.
pub const FOOTPRINT_READY_PROBE_TIMEOUT_MS: u64 = 1_000;

/// Footprint bench: time a tool run (`kapsel wal inspect`, `dd`) may take.
pub const FOOTPRINT_TOOL_TIMEOUT_MS: u64 = 300_000;

/// Time a server has to exit after SIGTERM (a graceful stop flushes its log first).
pub const SERVER_STOP_TIMEOUT_MS: u64 = 60_000;

/// Pause between two checks whether a server that was sent SIGTERM has exited.
pub const SERVER_STOP_POLL_MS: u64 = 10;

/// Time to open one TCP connection.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Time one request may take, first byte written to last byte read; past it the request
/// counts as timed out and its connection is replaced.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// After the measured period, time left for requests in flight and (open loop) for the backlog
/// still queued; what is left then is abandoned and counted as an error.
pub const DRAIN_GRACE_MS: u64 = 10_000;

/// Pause after a failed connect, so a dead server is not hammered.
pub const RECONNECT_BACKOFF_MS: u64 = 50;

/// Time a spawned server has to print its listening line, and then to answer its readiness
/// probe.
pub const SERVER_START_TIMEOUT_MS: u64 = 60_000;

/// Largest latency the histograms keep apart, in microseconds; longer ones are clamped to it.
/// Above the longest a request can be outstanding (warm-up, measure, grace).
pub const LATENCY_US_MAX: u64 = (WARM_UP_MS + MEASURE_SECONDS_MAX as u64 * 1000 + DRAIN_GRACE_MS) * 1000;

/// HdrHistogram precision: 3 significant digits (0.1 % error per value).
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// Largest response head the client accepts (status line and fields).
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Largest response body the client accepts.
pub const RESPONSE_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Header fields the client parses in one response.
pub const RESPONSE_HEADERS_MAX: usize = 32;

/// Bytes a client read asks for at a time.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Durable reference: bytes waiting for the next write+fdatasync on one thread. Past it an
/// append is refused with 503 E3002 (backpressure) instead of growing the buffer.
pub const GROUP_PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

const _: () = assert!(RESPONSE_HEAD_BYTES_MAX >= READ_CHUNK_BYTES / 4);
const _: () = assert!(REQUEST_TIMEOUT_MS <= DRAIN_GRACE_MS);
const _: () = assert!(SINK_POLL_MS < DELIVERY_FIRST_MS_MAX && DELIVERY_FIRST_MS_MAX <= DELIVERY_DRAIN_MS_MAX);
const _: () = assert!(INDEX_SAMPLE_MS <= INDEX_SAMPLE_TIMEOUT_MS && INDEX_SAMPLE_TIMEOUT_MS < INDEX_CATCH_UP_MS_MAX);
const _: () = assert!(GROUP_PENDING_BYTES_MAX > 4 * PAYLOAD_BYTES);
const _: () = assert!(FOOTPRINT_RECORDS_DEFAULT <= FOOTPRINT_RECORDS_MAX);
const _: () = assert!(FOOTPRINT_FILL_POLL_MS < FOOTPRINT_FILL_PROGRESS_MS);
const _: () = assert!(FOOTPRINT_READY_POLL_MS < FOOTPRINT_READY_PROBE_TIMEOUT_MS);
const _: () = assert!(FOOTPRINT_READY_PROBE_TIMEOUT_MS < SERVER_START_TIMEOUT_MS);
const _: () = assert!(SERVER_STOP_POLL_MS < SERVER_STOP_TIMEOUT_MS);
const _: () = assert!(DELIVERY_BACKLOG_EVENTS_DEFAULT <= DELIVERY_EVENTS_MAX);
const _: () = assert!(DELIVERY_RESTART_EVENTS_DEFAULT <= DELIVERY_EVENTS_MAX);
const _: () = assert!(DELIVERY_BURST_SECONDS_DEFAULT <= DELIVERY_BURST_SECONDS_MAX);
const _: () = assert!(SINK_POLL_MS < DELIVERY_PROGRESS_MS && DELIVERY_FIRST_MS_MAX <= DELIVERY_BACKLOG_DRAIN_MS_MAX);
const _: () = assert!(METRICS_POLL_MS < DELIVERY_SETTLED_MS_MAX);
// The burst's closed loop keeps its latencies in the histograms: its length must fit them.
const _: () = assert!(DELIVERY_BURST_SECONDS_MAX <= MEASURE_SECONDS_MAX);
// A held hostile connection outlives every attempt against it, and notices the client's close
// many times within one.
const _: () = assert!(HOSTILE_TIMEOUT_MS < HOSTILE_HOLD_MS_MAX && HOSTILE_POLL_MS * 10 <= HOSTILE_TIMEOUT_MS);
// The feeder's schedule is whole microseconds.
const _: () = assert!(HOSTILE_EVENTS_PER_S > 0 && HOSTILE_EVENTS_PER_S <= 1_000_000);
// Every fan-out run has endpoints and a loop; its drain is allowed at least the loops' bound and
// prints its progress within it.
const _: () = {
    let mut index = 0;
    while index < DELIVERY_FANOUT_ENDPOINTS.len() {
        assert!(DELIVERY_FANOUT_ENDPOINTS[index] > 0 && DELIVERY_FANOUT_CONNECTIONS[index] > 0);
        index += 1;
    }
};
const _: () = assert!(DELIVERY_DRAIN_MS_MAX <= DELIVERY_FANOUT_DRAIN_MS_MAX);
const _: () = assert!(DELIVERY_PROGRESS_MS < DELIVERY_FANOUT_DRAIN_MS_MAX);
// Every tenant has endpoints, and every endpoint at least one connection of its tenant's loop.
const _: () = assert!(TENANTS_ENDPOINTS > 0 && TENANTS_ROUNDS > 0 && TENANTS_ID_SEARCH_MAX > 0);
const _: () = assert!(TENANTS_B_CONNECTIONS >= TENANTS_ENDPOINTS && TENANTS_FLOOD_CONNECTIONS >= TENANTS_ENDPOINTS);
const _: () = assert!(TENANTS_B_INGEST_RATE_PER_S > 0 && TENANTS_A_RATE_LIMIT_PER_S > 0);
