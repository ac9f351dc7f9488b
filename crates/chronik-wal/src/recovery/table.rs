//! Recovery's decision tables: each classifies what recovery found into a small set of facts and maps
//! them to one decision in a single exhaustive `match`, with one test per row. Pure: `mod.rs` gathers the
//! facts (reading files only where a fact needs it) and carries the decisions out.

use std::cmp::Ordering;

/// What to do about a bad frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Preallocated zeros: the log ends here; nothing is cut or reported.
    EndOfData,
    /// Cut the file at the bad frame: it was never acknowledged.
    TruncateTail,
    /// Damage to data that was durable: stop serving at this point and report it.
    Refuse,
}

/// Where a bad frame was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrameSite {
    pub in_last_segment: bool,
    pub below_checkpoint: bool,
    /// Every byte from the bad frame to the end of the file is zero, and zeros there can be space
    /// preallocated ahead of the writer (see [`SegmentRole::zeros_are_torn`]).
    pub zero_tail: bool,
    pub proven_durable: bool,
}

/// The bad-frame table (see the module docs of `recovery`).
pub fn decide(site: BadFrameSite) -> Decision {
    match (
        site.in_last_segment,
        site.below_checkpoint,
        site.zero_tail,
        site.proven_durable,
    ) {
        (false, _, _, _) => Decision::Refuse,
        (true, true, _, _) => Decision::Refuse,
        (true, false, true, _) => Decision::EndOfData,
        (true, false, false, true) => Decision::Refuse,
        (true, false, false, false) => Decision::TruncateTail,
    }
}

/// Where the bytes a saved index covers end, against the bytes the checkpoint vouches for (the whole
/// file for a segment below the checkpoint's, up to the checkpoint's position in its own segment, none
/// past the segment header otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// From the segment header up to at most the vouched-for length.
    Vouched,
    /// Past the checkpoint's position in this same segment: the segment was sealed after the checkpoint.
    PastCheckpoint,
    /// Past what is vouched for with no checkpoint position in this segment, or short of the segment
    /// header (no index that decodes is).
    Unvouched,
}

/// What recovery found of a segment's saved index file, when there is one that decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedIndexFacts {
    /// Its next offset is past the next segment's base offset: it claims offsets of that segment, which
    /// contradicts the files (the segments are the truth).
    pub runs_into_next_segment: bool,
    /// The checkpoint points into this segment and the index contradicts it where both describe the
    /// same bytes: at the checkpoint's position it names another next offset, or it covers less and
    /// names a later one.
    pub contradicts_checkpoint: bool,
    pub coverage: Coverage,
}

/// Where recovery starts validating a segment's frames, and what becomes of its saved index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexDecision {
    /// Start from the saved index: the checkpoint vouches for all it covers.
    Trust,
    /// Start from the saved index rewound to its last entry at or below the checkpoint's position: that
    /// position is a frame boundary only if both files are right, an entry of the index always is.
    RewindToCheckpoint,
    /// Validate the whole segment: nothing vouches for what the index covers. The index file stays if
    /// the scan finds what it says.
    Rescan,
    /// Validate the whole segment and replace the index file: there is none that decodes, or it
    /// contradicts the segments or the checkpoint, and trusted it could make a later segment look like a
    /// failed rotation's leftover or hide an append the checkpoint vouches for.
    Rebuild,
}

/// The saved-index table. `None`: no index file, or one that does not decode.
pub fn decide_index(found: Option<SavedIndexFacts>) -> IndexDecision {
    let Some(found) = found else {
        return IndexDecision::Rebuild;
    };
    match (
        found.runs_into_next_segment,
        found.contradicts_checkpoint,
        found.coverage,
    ) {
        (true, _, _) => IndexDecision::Rebuild,
        (false, true, _) => IndexDecision::Rebuild,
        (false, false, Coverage::Vouched) => IndexDecision::Trust,
        (false, false, Coverage::PastCheckpoint) => IndexDecision::RewindToCheckpoint,
        (false, false, Coverage::Unvouched) => IndexDecision::Rescan,
    }
}

/// The segment after the one being recovered, as far as it decides how that one is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextSegment {
    /// It is the partition's last segment.
    pub is_last: bool,
    /// Its base offset against the offset after the valid frames of the segment being recovered.
    pub base: Ordering,
    /// The checkpoint points into it or past it: the rotation that created it was durable.
    pub vouched_by_checkpoint: bool,
    /// No valid frame starts where its first frame would. Read only where the other facts leave it a
    /// candidate leftover of a failed rotation (the last segment, not vouched for, starting at or below
    /// the end of the one before); false otherwise.
    pub holds_no_frame: bool,
}

/// How recovery judges a segment, given what follows it.
///
/// A rotation whose new segment failed its directory sync removes that segment again, but the removal
/// may not be durable either: after a power cut the empty segment can be back although the segment before
/// it went on (perhaps only with unsynced, torn writes) from the empty one's base offset. So an empty
/// last segment that the checkpoint does not vouch for, and whose base offset the segment before it
/// reached, makes that one be judged as the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentRole {
    /// Other segments follow it: sealed, and any bad frame in it is damage.
    Sealed,
    /// The partition's last segment: the active one.
    Last,
    /// Only an empty segment follows, starting exactly where its frames end: judged as the last segment
    /// (what follows its frames holds no offset the log needs and is cut as a torn tail), but it stays
    /// sealed, and the empty one stays as the active segment.
    LastBeforeEmpty,
    /// Only an empty segment follows, starting below where its frames end: a failed rotation's leftover
    /// the log went past. Judged as the last segment, and the empty one is removed.
    LastBeforeLeftover,
}

impl SegmentRole {
    /// Judged as the active segment: a bad frame past the checkpoint may be a torn tail.
    pub fn judged_as_last(self) -> bool {
        match self {
            SegmentRole::Sealed => false,
            SegmentRole::Last | SegmentRole::LastBeforeEmpty | SegmentRole::LastBeforeLeftover => true,
        }
    }

    /// Stays sealed after recovery, so the index recovery found for it is written (see
    /// [`decide_index_file`]).
    pub fn stays_sealed(self) -> bool {
        match self {
            SegmentRole::Sealed | SegmentRole::LastBeforeEmpty => true,
            SegmentRole::Last | SegmentRole::LastBeforeLeftover => false,
        }
    }

    /// Zeros after its last frame are a torn tail even where the WAL preallocates: it is judged as the
    /// last segment but stays sealed, and a sealed segment ends at its last frame (kept, the zeros would
    /// be damage to the next recovery). In a sealed segment they are damage, in the active one space.
    pub fn zeros_are_torn(self) -> bool {
        match self {
            SegmentRole::LastBeforeEmpty => true,
            SegmentRole::Sealed | SegmentRole::Last | SegmentRole::LastBeforeLeftover => false,
        }
    }

    /// The segment after it is a failed rotation's leftover, removed by recovery.
    pub fn removes_next(self) -> bool {
        match self {
            SegmentRole::LastBeforeLeftover => true,
            SegmentRole::Sealed | SegmentRole::Last | SegmentRole::LastBeforeEmpty => false,
        }
    }
}

/// The leftover-segment table. `None`: no segment follows.
pub fn judge_segment(next: Option<NextSegment>) -> SegmentRole {
    let Some(next) = next else {
        return SegmentRole::Last;
    };
    match (
        next.is_last,
        next.base,
        next.vouched_by_checkpoint,
        next.holds_no_frame,
    ) {
        (false, _, _, _) => SegmentRole::Sealed,
        (true, Ordering::Greater, _, _) => SegmentRole::Sealed,
        (true, _, true, _) => SegmentRole::Sealed,
        (true, _, false, false) => SegmentRole::Sealed,
        (true, Ordering::Equal, false, true) => SegmentRole::LastBeforeEmpty,
        (true, Ordering::Less, false, true) => SegmentRole::LastBeforeLeftover,
    }
}

/// What recovery knows of a segment's index once it has validated the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredIndexFacts {
    /// It differs from the index file recovery kept as its baseline (none after [`IndexDecision::Rebuild`]).
    pub changed: bool,
    /// See [`SegmentRole::stays_sealed`].
    pub stays_sealed: bool,
    /// Recovery found damage in this segment: the partition serves only up to it.
    pub damaged: bool,
    /// Its next offset is past the next segment's base offset.
    pub runs_into_next_segment: bool,
}

/// Whether recovery writes a segment's index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexFileDecision {
    /// Leave the file as it is (or absent).
    Leave,
    /// Write the index recovery found, atomically (best effort: a failure costs the next recovery a scan).
    Rewrite,
}

/// The index-file table.
pub fn decide_index_file(found: RecoveredIndexFacts) -> IndexFileDecision {
    match (
        found.changed,
        found.stays_sealed,
        found.damaged,
        found.runs_into_next_segment,
    ) {
        // The file says what recovery found.
        (false, _, _, _) => IndexFileDecision::Leave,
        // The active segment's index is written by checkpoints and when it is sealed.
        (true, false, _, _) => IndexFileDecision::Leave,
        // The partition stops at the damage; the next recovery validates the segment again.
        (true, true, true, _) => IndexFileDecision::Leave,
        // The next recovery would refuse such an index and read the segment whole, disagreeing with what
        // this one trusted; the damage is reported at the next segment anyway.
        (true, true, false, true) => IndexFileDecision::Leave,
        // Sealed, it keeps this index, also when an empty segment after it was judged with it but stays:
        // the old one would be trusted by the next recovery.
        (true, true, false, false) => IndexFileDecision::Rewrite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- bad frames

    #[test]
    fn bad_frame_table_rows() {
        let site = |in_last_segment, below_checkpoint, proven_durable| BadFrameSite {
            in_last_segment,
            below_checkpoint,
            zero_tail: false,
            proven_durable,
        };
        let zeros = |in_last_segment, below_checkpoint| BadFrameSite {
            in_last_segment,
            below_checkpoint,
            zero_tail: true,
            proven_durable: false,
        };
        for below in [false, true] {
            for proven in [false, true] {
                assert_eq!(
                    decide(site(false, below, proven)),
                    Decision::Refuse,
                    "sealed segment"
                );
            }
            assert_eq!(
                decide(zeros(false, below)),
                Decision::Refuse,
                "zeros at the end of a sealed segment"
            );
        }
        assert_eq!(
            decide(zeros(true, true)),
            Decision::Refuse,
            "zeros below the checkpoint: acknowledged data lost"
        );
        assert_eq!(
            decide(zeros(true, false)),
            Decision::EndOfData,
            "preallocated zeros past the last frame"
        );
        assert_eq!(
            decide(site(true, true, false)),
            Decision::Refuse,
            "below checkpoint"
        );
        assert_eq!(
            decide(site(true, true, true)),
            Decision::Refuse,
            "below checkpoint, proven"
        );
        assert_eq!(
            decide(site(true, false, true)),
            Decision::Refuse,
            "later frame proves it was synced"
        );
        assert_eq!(
            decide(site(true, false, false)),
            Decision::TruncateTail,
            "torn tail"
        );
    }

    // ---- saved index (`decide_index`)

    fn saved(
        runs_into_next_segment: bool,
        contradicts_checkpoint: bool,
        coverage: Coverage,
    ) -> SavedIndexFacts {
        SavedIndexFacts {
            runs_into_next_segment,
            contradicts_checkpoint,
            coverage,
        }
    }

    const COVERAGES: [Coverage; 3] = [Coverage::Vouched, Coverage::PastCheckpoint, Coverage::Unvouched];

    #[test]
    fn index_file_missing_or_undecodable_is_rebuilt() {
        assert_eq!(decide_index(None), IndexDecision::Rebuild);
    }

    #[test]
    fn index_claiming_offsets_of_the_next_segment_is_rebuilt() {
        for coverage in COVERAGES {
            for contradicts in [false, true] {
                assert_eq!(
                    decide_index(Some(saved(true, contradicts, coverage))),
                    IndexDecision::Rebuild,
                    "{coverage:?}, contradicts checkpoint: {contradicts}"
                );
            }
        }
    }

    #[test]
    fn index_contradicting_the_checkpoint_is_rebuilt_not_trusted_over_it() {
        for coverage in COVERAGES {
            assert_eq!(
                decide_index(Some(saved(false, true, coverage))),
                IndexDecision::Rebuild,
                "{coverage:?}"
            );
        }
    }

    #[test]
    fn index_within_what_the_checkpoint_vouches_for_is_trusted() {
        assert_eq!(
            decide_index(Some(saved(false, false, Coverage::Vouched))),
            IndexDecision::Trust
        );
    }

    #[test]
    fn index_of_a_segment_sealed_after_the_checkpoint_is_rewound_to_it() {
        assert_eq!(
            decide_index(Some(saved(false, false, Coverage::PastCheckpoint))),
            IndexDecision::RewindToCheckpoint
        );
    }

    #[test]
    fn index_nothing_vouches_for_is_verified_by_a_scan() {
        assert_eq!(
            decide_index(Some(saved(false, false, Coverage::Unvouched))),
            IndexDecision::Rescan
        );
    }

    // ---- what follows a segment (`judge_segment`)

    fn next(is_last: bool, base: Ordering, vouched: bool, holds_no_frame: bool) -> Option<NextSegment> {
        Some(NextSegment {
            is_last,
            base,
            vouched_by_checkpoint: vouched,
            holds_no_frame,
        })
    }

    const BASES: [Ordering; 3] = [Ordering::Less, Ordering::Equal, Ordering::Greater];

    #[test]
    fn segment_with_none_after_it_is_the_last() {
        assert_eq!(judge_segment(None), SegmentRole::Last);
    }

    #[test]
    fn segment_followed_by_two_or_more_is_sealed() {
        for base in BASES {
            for vouched in [false, true] {
                for empty in [false, true] {
                    assert_eq!(
                        judge_segment(next(false, base, vouched, empty)),
                        SegmentRole::Sealed,
                        "{base:?}, vouched {vouched}, empty {empty}"
                    );
                }
            }
        }
    }

    #[test]
    fn segment_that_did_not_reach_the_next_ones_base_is_sealed() {
        for vouched in [false, true] {
            for empty in [false, true] {
                assert_eq!(
                    judge_segment(next(true, Ordering::Greater, vouched, empty)),
                    SegmentRole::Sealed,
                    "vouched {vouched}, empty {empty}"
                );
            }
        }
    }

    #[test]
    fn segment_the_checkpoint_vouches_for_is_never_a_leftover_even_with_a_forged_index() {
        for base in [Ordering::Less, Ordering::Equal] {
            for empty in [false, true] {
                assert_eq!(
                    judge_segment(next(true, base, true, empty)),
                    SegmentRole::Sealed,
                    "{base:?}, empty {empty}"
                );
            }
        }
    }

    #[test]
    fn next_segment_holding_a_frame_is_not_a_leftover() {
        for base in [Ordering::Less, Ordering::Equal] {
            assert_eq!(
                judge_segment(next(true, base, false, false)),
                SegmentRole::Sealed,
                "{base:?}"
            );
        }
    }

    #[test]
    fn empty_last_segment_where_the_frames_end_is_judged_with_the_one_before_and_stays() {
        assert_eq!(
            judge_segment(next(true, Ordering::Equal, false, true)),
            SegmentRole::LastBeforeEmpty
        );
    }

    #[test]
    fn empty_last_segment_the_log_went_past_is_a_leftover_and_removed() {
        assert_eq!(
            judge_segment(next(true, Ordering::Less, false, true)),
            SegmentRole::LastBeforeLeftover
        );
    }

    #[test]
    fn what_each_segment_role_implies() {
        // (role, judged as last, stays sealed, zeros are torn, removes the next segment)
        let rows = [
            (SegmentRole::Sealed, false, true, false, false),
            (SegmentRole::Last, true, false, false, false),
            // Sealed segments end at their last frame: kept, zeros after it would be damage to the next
            // recovery.
            (SegmentRole::LastBeforeEmpty, true, true, true, false),
            (SegmentRole::LastBeforeLeftover, true, false, false, true),
        ];
        for (role, last, sealed, torn, removes) in rows {
            assert_eq!(role.judged_as_last(), last, "{role:?}");
            assert_eq!(role.stays_sealed(), sealed, "{role:?}");
            assert_eq!(role.zeros_are_torn(), torn, "{role:?}");
            assert_eq!(role.removes_next(), removes, "{role:?}");
        }
    }

    // ---- index file after recovery (`decide_index_file`)

    fn recovered(changed: bool, stays_sealed: bool, damaged: bool, runs_into: bool) -> RecoveredIndexFacts {
        RecoveredIndexFacts {
            changed,
            stays_sealed,
            damaged,
            runs_into_next_segment: runs_into,
        }
    }

    #[test]
    fn index_file_saying_what_recovery_found_is_left() {
        for sealed in [false, true] {
            for damaged in [false, true] {
                for runs_into in [false, true] {
                    assert_eq!(
                        decide_index_file(recovered(false, sealed, damaged, runs_into)),
                        IndexFileDecision::Leave,
                        "sealed {sealed}, damaged {damaged}, runs into next {runs_into}"
                    );
                }
            }
        }
    }

    #[test]
    fn active_segments_index_is_not_written_by_recovery() {
        for damaged in [false, true] {
            for runs_into in [false, true] {
                assert_eq!(
                    decide_index_file(recovered(true, false, damaged, runs_into)),
                    IndexFileDecision::Leave,
                    "damaged {damaged}, runs into next {runs_into}"
                );
            }
        }
    }

    #[test]
    fn index_of_a_damaged_segment_is_not_written() {
        for runs_into in [false, true] {
            assert_eq!(
                decide_index_file(recovered(true, true, true, runs_into)),
                IndexFileDecision::Leave,
                "runs into next {runs_into}"
            );
        }
    }

    #[test]
    fn index_running_into_the_next_segment_is_not_written_for_the_next_recovery_to_refuse() {
        assert_eq!(
            decide_index_file(recovered(true, true, false, true)),
            IndexFileDecision::Leave
        );
    }

    #[test]
    fn changed_index_of_a_segment_that_stays_sealed_is_rewritten_so_the_old_one_is_not_trusted() {
        assert_eq!(
            decide_index_file(recovered(true, true, false, false)),
            IndexFileDecision::Rewrite
        );
    }
}
