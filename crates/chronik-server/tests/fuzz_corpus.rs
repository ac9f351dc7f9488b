//! Inputs the fuzzers (fuzz/, `cargo fuzz`) found trouble with, replayed through the same code on every
//! test run. Each file under `fuzz/regressions/<target>/` must be refused with an error, not a panic or an
//! abort.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use bytes::Bytes;
use chronik_server::{alloc_guard::HugeAllocGuard, parse_request};

/// As in the broker: requests claiming absurd array lengths make the decoder reserve gigabytes.
#[global_allocator]
static ALLOCATOR: HugeAllocGuard = HugeAllocGuard;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no regression inputs in {}", dir.display());
    out
}

#[test]
fn kafka_request_regressions_are_refused() {
    for (path, bytes) in inputs("kafka_request") {
        let parsed = parse_request(Bytes::from(bytes));
        assert!(parsed.is_err(), "{} parsed: {parsed:?}", path.display());
    }
}
