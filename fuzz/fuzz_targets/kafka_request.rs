//! Arbitrary request frames through the broker's whole request path (parse, prepare, handler, response
//! encoding) against one real broker per process. The harness is
//! `chronik_server::fuzzing::RequestHarness`, which `cargo test` also runs over the corpus and the
//! regressions (`crates/chronik-server/tests/fuzz_corpus.rs`). Errors are fine; a panic is a bug.
#![no_main]

use std::cell::RefCell;

use chronik_server::fuzzing::{RequestHarness, Unserved};
use libfuzzer_sys::fuzz_target;

/// The broker's own allocator: a body claiming 2^31 array elements makes the protocol decoder reserve
/// gigabytes, which the broker survives by reserving lazily (see `alloc_guard`). The target runs as the
/// broker does.
#[global_allocator]
static ALLOCATOR: chronik_server::alloc_guard::HugeAllocGuard = chronik_server::alloc_guard::HugeAllocGuard;

thread_local! {
    static HARNESS: RefCell<RequestHarness> =
        RefCell::new(RequestHarness::new().expect("building the harness's runtime"));
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with_borrow_mut(|harness| {
        if let Err(e @ Unserved::Harness(_)) = harness.serve(data) {
            panic!("{e}");
        }
    });
});
