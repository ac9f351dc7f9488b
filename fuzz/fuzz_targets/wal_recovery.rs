//! WAL recovery of a partition directory described by the input (segments, indexes, a checkpoint,
//! leftovers; see `chronik_wal::fuzzing::Layout`), on the simulated disk. The harness is
//! `chronik_wal::fuzzing::recovery`, which `cargo test` also runs over the corpus and the regressions
//! (`crates/chronik-wal/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chronik_wal::fuzzing::recovery(data).expect("writing the layout to the simulated disk");
});
