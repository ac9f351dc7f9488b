//! Where a new topic's partitions go: replicas spread over the live brokers, leaders balanced.
//!
//! Kafka's scheme, made deterministic: partition `p`'s preferred leader is broker `(start + p) mod n` of
//! the live brokers in id order, and its other replicas follow at distinct shifts that change each time
//! the leaders wrap around, so the followers of one broker's partitions spread over the others. `start`
//! is the broker leading the fewest partitions already (lowest id on a tie), so topics created one
//! after another even out. Every node computes the same placement from the same metadata, but only the
//! controller leader computes it: the result travels in the command.

use crate::state_machine::MetadataState;

/// Why a placement cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// More replicas asked than live brokers (Kafka's INVALID_REPLICATION_FACTOR).
    #[error("replication factor {asked} is more than the {live} live brokers")]
    TooFewBrokers { asked: usize, live: usize },
    #[error("replication factor must be at least 1, not {0}")]
    BadReplicationFactor(usize),
}

/// Replica lists, preferred leader first, for `partitions` new partitions with `replication_factor`
/// replicas each, on the brokers of `state` that are live.
pub fn place(
    state: &MetadataState,
    partitions: usize,
    replication_factor: usize,
) -> Result<Vec<Vec<u64>>, PlacementError> {
    if replication_factor == 0 {
        return Err(PlacementError::BadReplicationFactor(0));
    }
    let live: Vec<u64> = state
        .brokers
        .keys()
        .copied()
        .filter(|&b| state.is_live(b))
        .collect();
    let n = live.len();
    if replication_factor > n {
        return Err(PlacementError::TooFewBrokers {
            asked: replication_factor,
            live: n,
        });
    }
    let led = |b: u64| {
        state
            .topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.leader == Some(b))
            .count()
    };
    let start = (0..n).min_by_key(|&i| (led(live[i]), i)).unwrap_or(0);
    Ok((0..partitions)
        .map(|p| {
            let first = (start + p) % n;
            // Changes each time the leaders have gone round once.
            let wrap = p / n;
            let mut replicas = vec![live[first]];
            for i in 0..replication_factor - 1 {
                // 1..n-1: never the leader itself, and distinct for distinct i.
                let shift = 1 + (wrap + i) % (n - 1);
                replicas.push(live[(first + shift) % n]);
            }
            replicas
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::types::{BrokerInfo, Command};

    fn cluster(brokers: &[u64]) -> MetadataState {
        let mut state = MetadataState::default();
        for &id in brokers {
            state.apply(&Command::RegisterBroker(BrokerInfo {
                id,
                kafka_address: format!("h{id}:9092"),
                controller_address: format!("h{id}:9093"),
                incarnation: 0,
            }));
        }
        state
    }

    fn counts(placement: &[Vec<u64>], only_leaders: bool) -> BTreeMap<u64, usize> {
        let mut c = BTreeMap::new();
        for r in placement {
            let take = if only_leaders { 1 } else { r.len() };
            for b in &r[..take] {
                *c.entry(*b).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn replicas_are_distinct_and_leaders_and_replicas_spread_evenly() {
        for n in 1..=6u64 {
            let brokers: Vec<u64> = (0..n).map(|i| 10 + 3 * i).collect();
            let state = cluster(&brokers);
            for rf in 1..=n as usize {
                for partitions in [1, 2, n as usize, 7, 12, 60] {
                    let placement = place(&state, partitions, rf).unwrap();
                    assert_eq!(placement.len(), partitions);
                    for r in &placement {
                        let distinct: BTreeSet<u64> = r.iter().copied().collect();
                        assert_eq!(distinct.len(), rf, "n {n} rf {rf}: {r:?}");
                        assert!(r.iter().all(|b| brokers.contains(b)));
                    }
                    let leaders = counts(&placement, true);
                    let (lo, hi) = (leaders.values().min(), leaders.values().max());
                    if partitions >= n as usize {
                        assert_eq!(leaders.len(), n as usize, "every broker leads some");
                        assert!(
                            hi.unwrap() - lo.unwrap() <= 1,
                            "n {n} rf {rf} p {partitions}: {leaders:?}"
                        );
                    }
                    if partitions % n as usize == 0 {
                        let replicas = counts(&placement, false);
                        let each = partitions * rf / n as usize;
                        assert!(
                            replicas.values().all(|&c| c == each),
                            "n {n} rf {rf} p {partitions}: {replicas:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn topics_created_one_after_another_even_out_leadership() {
        let mut state = cluster(&[1, 2, 3]);
        for t in 0..6 {
            let replicas = place(&state, 2, 1).unwrap();
            state.apply(&Command::CreateTopic {
                name: format!("t{t}"),
                topic_id: [t; 16],
                replicas,
                configs: BTreeMap::new(),
            });
        }
        let mut led = BTreeMap::new();
        for p in state.topics.values().flat_map(|t| &t.partitions) {
            *led.entry(p.leader.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(led, BTreeMap::from([(1, 4), (2, 4), (3, 4)]));
    }

    #[test]
    fn fenced_brokers_get_nothing_and_too_many_replicas_are_refused() {
        let mut state = cluster(&[1, 2, 3]);
        state.apply(&Command::FenceBroker { id: 2 });
        let placement = place(&state, 10, 2).unwrap();
        assert!(placement.iter().flatten().all(|&b| b != 2), "{placement:?}");
        assert_eq!(
            place(&state, 1, 3),
            Err(PlacementError::TooFewBrokers { asked: 3, live: 2 })
        );
        assert_eq!(place(&state, 1, 0), Err(PlacementError::BadReplicationFactor(0)));
        assert!(matches!(
            place(&MetadataState::default(), 1, 1),
            Err(PlacementError::TooFewBrokers { asked: 1, live: 0 })
        ));
    }
}
