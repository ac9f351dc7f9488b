//! Frame headers, segment headers, index files and checkpoint files decoded from arbitrary bytes. The
//! harness is `chronik_wal::fuzzing::decoders`, which `cargo test` also runs over the corpus and the
//! regressions (`crates/chronik-wal/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chronik_wal::fuzzing::decoders(data));
