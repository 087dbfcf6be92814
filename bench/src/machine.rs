//! What the machine is and how busy it was: facts for the report header, and CPU time of the
//! server, of the load generator and of the whole machine over a measured period, from
//! `/proc` (Linux only, like the servers under test).

use std::path::Path;
use std::time::Duration;

/// Linux reports `/proc` CPU times in `USER_HZ` ticks, fixed at 100 per second for user space
/// on every architecture Kapsel targets.
const TICKS_PER_SECOND: u64 = 100;

fn ticks(count: u64) -> Duration {
    Duration::from_millis(count * (1000 / TICKS_PER_SECOND))
}

/// CPU counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    server_ticks: u64,
    /// Per thread of the server: id, name, ticks.
    server_threads: Vec<(u32, String, u64)>,
    client_ticks: u64,
    machine_busy_ticks: u64,
    machine_total_ticks: u64,
    server_peak_rss_bytes: u64,
}

/// CPU time spent between two samples.
#[derive(Clone, Debug, Default)]
pub struct CpuUsage {
    /// The server process, all threads, user and system.
    pub server: Duration,
    /// The server's threads by name (in thread-id order), each with its user and system time.
    pub server_threads: Vec<(String, Duration)>,
    /// This process: the load generator.
    pub client: Duration,
    /// Every core of the machine, everything that was not idle or waiting for I/O.
    pub machine_busy: Duration,
    /// Every core of the machine, idle or not.
    pub machine_total: Duration,
    /// The server's peak resident memory so far (`VmHWM`) when the later sample was taken.
    pub server_peak_rss_bytes: u64,
}

impl CpuUsage {
    /// Busy time of processes other than the server and the client: the noise from whatever
    /// else the machine ran.
    pub fn others(&self) -> Duration {
        self.machine_busy.saturating_sub(self.server + self.client)
    }
}

/// Samples the CPU counters of one server process, this process and the machine.
#[derive(Clone, Copy, Debug)]
pub struct CpuMeter {
    server_pid: u32,
}

impl CpuMeter {
    /// A meter for the server process `server_pid`.
    pub fn new(server_pid: u32) -> Self {
        Self { server_pid }
    }

    /// The counters now; a counter that cannot be read counts as zero (the report then shows
    /// no CPU figures rather than failing the run).
    pub fn sample(&self) -> CpuSample {
        let (machine_busy_ticks, machine_total_ticks) = machine_ticks().unwrap_or_default();
        CpuSample {
            server_ticks: process_ticks(&format!("/proc/{}/stat", self.server_pid)).unwrap_or(0),
            server_threads: thread_ticks(self.server_pid),
            client_ticks: process_ticks("/proc/self/stat").unwrap_or(0),
            machine_busy_ticks,
            machine_total_ticks,
            server_peak_rss_bytes: peak_rss_bytes(self.server_pid).unwrap_or(0),
        }
    }
}

impl CpuSample {
    /// The usage from `earlier` to this sample.
    pub fn since(&self, earlier: &CpuSample) -> CpuUsage {
        let server_threads = self
            .server_threads
            .iter()
            .map(|(id, name, now)| {
                let before =
                    earlier.server_threads.iter().find(|(earlier_id, _, _)| earlier_id == id).map_or(0, |t| t.2);
                (name.clone(), ticks(now.saturating_sub(before)))
            })
            .collect();
        CpuUsage {
            server: ticks(self.server_ticks.saturating_sub(earlier.server_ticks)),
            server_threads,
            client: ticks(self.client_ticks.saturating_sub(earlier.client_ticks)),
            machine_busy: ticks(self.machine_busy_ticks.saturating_sub(earlier.machine_busy_ticks)),
            machine_total: ticks(self.machine_total_ticks.saturating_sub(earlier.machine_total_ticks)),
            server_peak_rss_bytes: self.server_peak_rss_bytes,
        }
    }
}

/// `utime + stime` of a process (all its threads) from its `stat` file.
fn process_ticks(path: &str) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(path).ok()?).map(|(_, ticks)| ticks)
}

/// CPU time (user+system, all threads) process `pid` has used so far; `None` when its `stat`
/// file cannot be read (it exited, or was reaped).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    process_ticks(&format!("/proc/{pid}/stat")).map(ticks)
}

/// Name and `utime + stime` from the text of a `stat` file (of a process or a thread).
fn parse_stat(text: &str) -> Option<(String, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses.
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let name = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((name, user + system))
}

/// CPU time (user+system) so far of process `root` and its direct children: a PostgreSQL
/// postmaster with its backends and background workers. Children that already exited are not
/// counted; 0 when nothing can be read.
pub fn process_tree_cpu(root: u32) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Duration::ZERO };
    let total: u64 = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let parent: u32 = text.get(text.rfind(')')? + 1..)?.split_whitespace().nth(1)?.parse().ok()?;
            (pid == root || parent == root).then(|| parse_stat(&text).map(|(_, ticks)| ticks))?
        })
        .sum();
    ticks(total)
}

/// Every thread of process `pid`: id, name, ticks.
fn thread_ticks(pid: u32) -> Vec<(u32, String, u64)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut threads: Vec<(u32, String, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let id: u32 = entry.file_name().to_str()?.parse().ok()?;
            let (name, ticks) = parse_stat(&std::fs::read_to_string(entry.path().join("stat")).ok()?)?;
            Some((id, name, ticks))
        })
        .collect();
    threads.sort_unstable_by_key(|(id, _, _)| *id);
    threads
}

/// The peak resident set size of process `pid` (`VmHWM` in its `status` file).
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    memory_of(pid).map(|memory| memory.peak_bytes)
}

/// A process's memory as its `/proc/<pid>/status` has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub resident_bytes: u64,
    /// `RssAnon`: the anonymous part of it (heap, stacks, anonymous mappings).
    pub anonymous_bytes: u64,
    /// `RssFile`: the file-backed part (the binary's and libraries' pages, mapped files).
    pub file_bytes: u64,
    /// `VmHWM`: the peak resident set size so far.
    pub peak_bytes: u64,
}

/// The memory of process `pid` now; `None` when its `status` file is unreadable (it exited).
pub fn memory_of(pid: u32) -> Option<Memory> {
    parse_memory(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// [`Memory`] from the text of a `status` file; `None` without `VmRSS` or `VmHWM` (a kernel
/// thread, a zombie). The kernel writes `kB` and means KiB.
fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        let line = status.lines().find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(':')))?;
        let value = line.get(name.len() + 1..)?.trim().trim_end_matches("kB").trim();
        value.parse::<u64>().ok().map(|kibibytes| kibibytes * 1024)
    };
    Some(Memory {
        resident_bytes: field("VmRSS")?,
        anonymous_bytes: field("RssAnon").unwrap_or(0),
        file_bytes: field("RssFile").unwrap_or(0),
        peak_bytes: field("VmHWM")?,
    })
}

/// (busy, total) ticks over all cores from the first line of `/proc/stat`; idle and iowait
/// count as not busy.
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line.split_whitespace().filter_map(|value| value.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Facts printed at the top of the report.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Cores this process may use.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// The first CPU's model name.
    pub cpu_model: String,
    /// The 1, 5 and 15 minute load averages.
    pub load_average: String,
    /// Whether io_uring is usable (monoio's detection).
    pub io_uring: bool,
}

impl Facts {
    /// Reads the facts now.
    pub fn read() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model,
            load_average: load_average(),
            io_uring: monoio::utils::detect_uring(),
        }
    }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
pub fn load_average() -> String {
    let text = read_trimmed("/proc/loadavg");
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|text| text.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The file system `path` lives on: its type and device, from the longest mount point in
/// `/proc/mounts` that contains it.
pub fn filesystem_of(path: &Path) -> (String, String) {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, mount_point, kind, ..] = fields[..] else { continue };
        if path.starts_with(mount_point) && best.as_ref().is_none_or(|(length, _, _)| mount_point.len() > *length) {
            best = Some((mount_point.len(), kind.to_string(), device.to_string()));
        }
    }
    best.map_or_else(|| ("unknown".into(), "unknown".into()), |(_, kind, device)| (kind, device))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // The footprint bench's verdicts rest on these figures: the right field each, in bytes,
    // and no confusion between `VmRSS` and a field that merely starts with it.
    #[test]
    fn memory_fields_parse_in_bytes() {
        let status = "Name:\tkapsel\nVmHWM:\t   30000 kB\nVmRSS:\t   24000 kB\nRssAnon:\t   10000 kB\n\
                      RssFile:\t   14000 kB\nRssShmem:\t       0 kB\n";
        let memory = parse_memory(status).unwrap();
        assert_eq!(memory.resident_bytes, 24_000 * 1024);
        assert_eq!(memory.anonymous_bytes, 10_000 * 1024);
        assert_eq!(memory.file_bytes, 14_000 * 1024);
        assert_eq!(memory.peak_bytes, 30_000 * 1024);
        assert_eq!(parse_memory("Name:\tkthreadd\nState:\tS (sleeping)\n"), None);
    }

    // The per-request CPU figures rest on these counters: they must parse on this kernel and
    // only ever grow.
    #[test]
    fn counters_parse_and_grow() {
        let meter = CpuMeter::new(std::process::id());
        let before = meter.sample();
        let mut spin = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        let usage = meter.sample().since(&before);
        assert!(spin > 0);
        assert!(usage.machine_total >= usage.machine_busy);
        assert!(process_ticks("/proc/self/stat").is_some());
        assert!(machine_ticks().is_some());
        assert!(!thread_ticks(std::process::id()).is_empty());
        assert!(peak_rss_bytes(std::process::id()).is_some_and(|bytes| bytes > 0));
        let memory = memory_of(std::process::id()).unwrap();
        assert!(memory.resident_bytes > 0 && memory.peak_bytes >= memory.resident_bytes);
        assert_eq!(parse_stat("1 (a (b) c) S 0 0 0 0 0 0 0 0 0 0 7 5 0"), Some(("a (b) c".into(), 12)));
        // A process's tree holds at least the process (read second: the counters only grow).
        let own = ticks(process_ticks("/proc/self/stat").unwrap_or(0));
        assert!(process_tree_cpu(std::process::id()) >= own);
    }
}
