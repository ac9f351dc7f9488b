//! Where a follower's log stops agreeing with its leader's, found from both term maps the way Kafka's
//! Fetch does it from v12 (KIP-595's DivergingEpoch): the follower fetches naming the epoch of its
//! last batch; the leader answers with the end of that epoch in its own log if the follower's log runs
//! past it; the follower cuts there, or, if it has no such epoch, at the end of its own largest epoch
//! below it, and asks again.

use chronik_wal::TermMap;

/// The leader's check of a fetch: `Some((epoch, end))` when the fetcher's log diverges from this one,
/// naming the largest epoch of this log at or below `last_fetched_epoch` and where that epoch ends here.
/// `(-1, -1)` when this log cannot place the epoch at all (the fetcher claims an epoch newer than this
/// log knows: only a deposed leader's follower can, and it is refused on its leader epoch first).
pub fn diverging(
    terms: &TermMap,
    log_end: i64,
    last_fetched_epoch: i32,
    fetch_offset: i64,
) -> Option<(i32, i64)> {
    if last_fetched_epoch < 0 {
        // The fetcher has no batch of any epoch: nothing to compare.
        return None;
    }
    match terms.end_of(last_fetched_epoch, log_end) {
        Some((epoch, end)) if epoch == last_fetched_epoch && end >= fetch_offset => None,
        Some(found) => Some(found),
        None => Some((-1, -1)),
    }
}

/// Where the follower cuts its log after the leader answered `diverging` (see [`diverging`]), and
/// whether that settles it (`false`: the follower fetches again from the cut, naming its new last
/// epoch, and may be told to cut further).
pub fn truncation_point(
    terms: &TermMap,
    log_end: i64,
    high_watermark: i64,
    diverging: (i32, i64),
) -> (i64, bool) {
    let (epoch, end) = diverging;
    if epoch < 0 || end < 0 {
        // Nothing to compare: keep only what was acknowledged.
        return (high_watermark.min(log_end), true);
    }
    match terms.end_of(epoch, log_end) {
        // Both logs have the epoch: they agree up to where the shorter copy of it ends.
        Some((own, own_end)) if own == epoch => (end.min(own_end).min(log_end), true),
        // This log lacks the leader's epoch: everything after its own largest epoch below it goes.
        Some((_, own_end)) => (own_end.min(log_end), false),
        // No epoch at or before it here: the whole log is older than anything the leader can vouch for.
        None => (end.min(log_end), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(i32, i64)]) -> TermMap {
        let mut m = TermMap::default();
        for &(term, start) in entries {
            m.assign(term, start).unwrap();
        }
        m
    }

    #[test]
    fn a_follower_in_step_is_not_diverging() {
        let leader = map(&[(1, 0), (3, 10)]);
        assert_eq!(diverging(&leader, 20, 3, 15), None);
        assert_eq!(diverging(&leader, 20, 1, 10), None);
        assert_eq!(diverging(&leader, 20, -1, 0), None);
    }

    #[test]
    fn a_tail_the_leader_never_had_is_cut() {
        // The follower led epoch 2 and wrote 10..14 the new leader (epoch 3 from 10) never got.
        let leader = map(&[(1, 0), (3, 10)]);
        let follower = map(&[(1, 0), (2, 10)]);
        let d = diverging(&leader, 20, 2, 14).unwrap();
        assert_eq!(d, (1, 10));
        assert_eq!(truncation_point(&follower, 14, 8, d), (10, true));
        // After the cut its last epoch is 1, which the leader has up to 10: in step.
        let mut follower = follower;
        follower.truncate_from(10);
        assert_eq!(diverging(&leader, 20, 1, 10), None);
    }

    #[test]
    fn the_same_epoch_ending_earlier_at_the_leader() {
        // Both have epoch 2; the follower got more of it than the leader kept.
        let leader = map(&[(1, 0), (2, 5), (4, 9)]);
        let follower = map(&[(1, 0), (2, 5)]);
        let d = diverging(&leader, 30, 2, 12).unwrap();
        assert_eq!(d, (2, 9));
        assert_eq!(truncation_point(&follower, 12, 5, d), (9, true));
    }

    #[test]
    fn nothing_to_compare_keeps_what_was_acknowledged() {
        let follower = map(&[(5, 0)]);
        assert_eq!(truncation_point(&follower, 12, 7, (-1, -1)), (7, true));
        assert_eq!(diverging(&map(&[(1, 0)]), 3, 2, 3), Some((-1, -1)));
    }
}
