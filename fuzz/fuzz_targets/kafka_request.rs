//! Arbitrary request frames through the broker's request parser (API key, header, version, body), and
//! the record batches of any Produce that parses through the batch validator. Bad input must come back as
//! an error, never a panic or an unbounded allocation.
#![no_main]

use bytes::Bytes;
use chronik_server::{parse_request, record_batch::split_batches};
use kafka_protocol::messages::RequestKind;
use libfuzzer_sys::fuzz_target;

/// The broker's own allocator: a body claiming 2^31 array elements makes the protocol decoder reserve
/// gigabytes, which the broker survives by reserving lazily (see `alloc_guard`). The target runs as the
/// broker does.
#[global_allocator]
static ALLOCATOR: chronik_server::alloc_guard::HugeAllocGuard = chronik_server::alloc_guard::HugeAllocGuard;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_request(Bytes::copy_from_slice(data)) else {
        return;
    };
    if let Some(RequestKind::Produce(produce)) = parsed.body {
        for topic in produce.topic_data {
            for partition in topic.partition_data {
                if let Some(records) = partition.records {
                    let _ = split_batches(records);
                }
            }
        }
    }
});
