//! What the machine can hold: the open-file limit (raised at start) and the defaults derived from it
//! and from memory.
//!
//! Descriptors: segment files are opened on demand through the WAL's bounded file cache
//! (`WalConfig::max_open_files`), so idle partitions hold none. The cache gets what is left of the
//! process's limit after [`RESERVED_DESCRIPTORS`] and the connections ([`derived_max_open_segment_files`]);
//! past it the WAL closes the least recently used files, and nothing fails for want of a descriptor.
//!
//! Partitions: what bounds them now is memory. Every partition admitted is budgeted
//! [`MEMORY_PER_PARTITION`] ([`derived_max_partitions`]), far above what an idle one costs, so that a
//! broker never admits more partitions than it could write to. Creations past the limit are refused
//! before anything is made.

use std::path::Path;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for everything but segment files and connections: standard streams, listeners, the
/// runtime's epoll and wakers, the WAL's lock, directory syncs, checkpoint and index files in flight.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Segment files the cache may keep open at least, whatever the file limit says.
pub const MIN_OPEN_SEGMENT_FILES: u64 = 16;

/// Memory budgeted per partition when the partition limit is derived. Measured (README, "Many
/// partitions"): an idle partition costs under 2 KiB; one being written to holds its group-commit buffer,
/// its producers' state and the sparse index of its segments on top. 64 KiB leaves room for that on every
/// partition at once.
pub const MEMORY_PER_PARTITION: u64 = 64 * 1024;

/// The partition limit when the machine's memory cannot be read.
pub const FALLBACK_MAX_PARTITIONS: usize = 100_000;

/// The open-file limit before and after [`raise_to_hard_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: Rlimit,
    pub after: Rlimit,
}

/// Raises the soft open-file limit to the hard one. The limit is left as it was if the kernel refuses
/// (the error is returned with both limits for the log).
pub fn raise_to_hard_limit() -> Result<Raised, (Rlimit, std::io::Error)> {
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        return Ok(Raised {
            before,
            after: before,
        });
    }
    let wanted = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, wanted) {
        Ok(()) => Ok(Raised {
            before,
            after: getrlimit(Resource::Nofile),
        }),
        Err(e) => Err((before, e.into())),
    }
}

/// The soft open-file limit now (`None`: unlimited).
pub fn soft_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Shows a limit as the log and the help say it.
pub fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

/// Segment files the WAL keeps open at most, for a process with `open_files` descriptors (`None`:
/// unlimited) and up to `max_connections` connections: what is left after [`RESERVED_DESCRIPTORS`] and
/// the connections. Connections are given at most half of what is left after the reserve, so that a
/// small file limit with the default `max_connections` still leaves room for files (the connection limit
/// then is not reachable anyway). At least [`MIN_OPEN_SEGMENT_FILES`]; without a file limit, 1,048,576.
pub fn derived_max_open_segment_files(open_files: Option<u64>, max_connections: u32) -> usize {
    let open_files = open_files.unwrap_or(1 << 20);
    let budget = open_files.saturating_sub(RESERVED_DESCRIPTORS);
    let connections = u64::from(max_connections).min(budget / 2);
    let files = (budget - connections).max(MIN_OPEN_SEGMENT_FILES);
    usize::try_from(files).unwrap_or(usize::MAX)
}

/// The partitions a broker with `memory` bytes (`None`: unknown) admits: [`MEMORY_PER_PARTITION`] each,
/// at least 1; [`FALLBACK_MAX_PARTITIONS`] when the memory is unknown.
pub fn derived_max_partitions(memory: Option<u64>) -> usize {
    match memory {
        Some(bytes) => usize::try_from(bytes / MEMORY_PER_PARTITION)
            .unwrap_or(usize::MAX)
            .max(1),
        None => FALLBACK_MAX_PARTITIONS,
    }
}

/// The memory this process may use: the machine's (`MemTotal`), or its control group's limit if lower
/// (a container). `None` where neither can be read.
pub fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total(&s));
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| read_cgroup_limit(Path::new(p)));
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A control group's memory limit; `None` for "max" (cgroup v2) or an unreadable file.
fn read_cgroup_limit(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_files_get_what_connections_and_the_reserve_leave() {
        // The machine: 20,000 descriptors, 10,000 connections allowed.
        assert_eq!(derived_max_open_segment_files(Some(20_000), 10_000), 9_968);
        // A common hard limit: the connections take their full share.
        assert_eq!(derived_max_open_segment_files(Some(1 << 20), 10_000), 1_038_512);
        // A small limit: connections get half of what is left.
        assert_eq!(derived_max_open_segment_files(Some(256), 10_000), 96);
        assert_eq!(derived_max_open_segment_files(Some(10), 10_000), 16);
        assert_eq!(derived_max_open_segment_files(None, 10_000), 1_038_512);
    }

    #[test]
    fn partitions_are_budgeted_from_memory() {
        assert_eq!(derived_max_partitions(Some(24 << 30)), 393_216);
        assert_eq!(derived_max_partitions(Some(1 << 30)), 16_384);
        assert_eq!(derived_max_partitions(Some(1000)), 1);
        assert_eq!(derived_max_partitions(None), FALLBACK_MAX_PARTITIONS);
    }

    #[test]
    fn memory_is_read_from_meminfo_and_cgroup_limits() {
        let meminfo = "MemTotal:       24683784 kB\nMemFree:        22262916 kB\n";
        assert_eq!(parse_meminfo_total(meminfo), Some(24_683_784 * 1024));
        assert_eq!(parse_meminfo_total("nothing"), None);
        let dir = tempfile::tempdir().unwrap();
        let limited = dir.path().join("memory.max");
        std::fs::write(&limited, "1073741824\n").unwrap();
        assert_eq!(read_cgroup_limit(&limited), Some(1 << 30));
        std::fs::write(&limited, "max\n").unwrap();
        assert_eq!(read_cgroup_limit(&limited), None);
        assert!(memory_limit().is_some_and(|m| m > 0), "readable on Linux");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let raised = raise_to_hard_limit().expect("raising within the hard limit is allowed");
        assert_eq!(raised.after.current, raised.before.maximum);
        assert_eq!(soft_limit(), raised.after.current);
    }
}
