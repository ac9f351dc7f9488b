//! The process's open-file limit: raised at start, and the partition limit derived from it.
//!
//! Every open partition holds file descriptors today: one per segment (the active one and each sealed
//! one) and, near a rotation, the zero-filled file of its next segment; [`DESCRIPTORS_PER_PARTITION`] are
//! counted per partition. A broker that runs out of descriptors fails whatever it is doing half-way,
//! so the broker admits partitions only up to what its descriptors can hold (`max_partitions`, whose
//! default [`derived_max_partitions`] computes). Once idle partitions hold no descriptor (segment files
//! opened on demand through a bounded cache) the default will rise accordingly.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors counted per partition. Measured: a fresh partition holds one, its active segment (1,000
/// partitions created and written to: 1,001 more descriptors); near a rotation the preallocated next
/// segment (`next-segment.tmp`) adds one, and each sealed segment one more. Two covers a partition with
/// its next segment prepared, or with one sealed segment.
pub const DESCRIPTORS_PER_PARTITION: u64 = 2;

/// Descriptors kept for everything but partitions and connections: standard streams, listeners, the
/// runtime's epoll and wakers, the WAL's lock, directory syncs, checkpoint and rotation files in flight.
pub const RESERVED_DESCRIPTORS: u64 = 64;

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

/// The partitions a broker with `open_files` descriptors (`None`: unlimited) and up to `max_connections`
/// connections can hold: what is left after [`RESERVED_DESCRIPTORS`] and the connections, divided by
/// [`DESCRIPTORS_PER_PARTITION`]. Connections are given at most half of what is left after the reserve,
/// so that a small file limit with the default `max_connections` still leaves room for partitions (the
/// connection limit then is not reachable anyway). At least 1.
pub fn derived_max_partitions(open_files: Option<u64>, max_connections: u32) -> usize {
    let Some(open_files) = open_files else {
        return usize::MAX;
    };
    let budget = open_files.saturating_sub(RESERVED_DESCRIPTORS);
    let connections = u64::from(max_connections).min(budget / 2);
    let partitions = (budget - connections) / DESCRIPTORS_PER_PARTITION;
    usize::try_from(partitions).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_limit_leaves_room_for_connections_and_a_reserve() {
        // The machine: 20,000 descriptors, 10,000 connections allowed.
        assert_eq!(derived_max_partitions(Some(20_000), 10_000), 4_984);
        // A common hard limit: the connections take their full share.
        assert_eq!(derived_max_partitions(Some(1 << 20), 10_000), 519_256);
        // A small limit: connections get half of what is left.
        assert_eq!(derived_max_partitions(Some(256), 10_000), 48);
        assert_eq!(derived_max_partitions(Some(10), 10_000), 1);
        assert_eq!(derived_max_partitions(None, 10_000), usize::MAX);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let raised = raise_to_hard_limit().expect("raising within the hard limit is allowed");
        assert_eq!(raised.after.current, raised.before.maximum);
        assert_eq!(soft_limit(), raised.after.current);
    }
}
