//! Hostile bytes on the Kafka port must never take the broker down. The real `chronik` binary is started
//! (so its allocator guard is in place) and fed garbage, an absurd length prefix, a truncated request, an
//! unknown API key, an unsupported version, and a 12-byte-body Metadata request claiming 2^31-1 topics,
//! the claim that makes `kafka-protocol` 0.18 ask for hundreds of GiB. After each, the process is alive and
//! a well-formed request on a new connection is answered.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::Shutdown,
};

mod common;

use common::Broker;

fn assert_alive(broker: &mut Broker, after: &str) {
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "broker died after {after}"
    );
    // ApiVersions v0 on a fresh connection is answered with our correlation id.
    let mut s = broker.connect();
    s.write_all(&request(18, 0, 77, &[])).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body[..4], &77i32.to_be_bytes(), "answered after {after}");
    assert_eq!(&body[4..6], &0i16.to_be_bytes(), "no error after {after}");
}

/// Sends bytes and waits until the broker closes the connection (or answers and the peer hangs up): either
/// way the process must survive, which `assert_alive` checks.
fn send_and_wait_close(broker: &Broker, bytes: &[u8]) {
    let mut s = broker.connect();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// A request frame with a v1 header (client id null).
fn request(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&api_key.to_be_bytes());
    payload.extend_from_slice(&version.to_be_bytes());
    payload.extend_from_slice(&correlation_id.to_be_bytes());
    payload.extend_from_slice(&(-1i16).to_be_bytes());
    payload.extend_from_slice(body);
    let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
    frame.extend(payload);
    frame
}

#[test]
fn broker_survives_hostile_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[], &[]);
    assert_alive(&mut broker, "start");

    send_and_wait_close(&broker, b"\x00\x00\x00\x20this is not a kafka request at all!!");
    assert_alive(&mut broker, "garbage");

    send_and_wait_close(&broker, &0x7fff_ffffi32.to_be_bytes());
    assert_alive(&mut broker, "a 2 GiB length prefix");

    send_and_wait_close(&broker, &(-5i32).to_be_bytes());
    assert_alive(&mut broker, "a negative length prefix");

    let full = request(3, 1, 1, &[0, 0, 0, 1, 0, 1, b'x']);
    send_and_wait_close(&broker, &full[..full.len() - 3]);
    assert_alive(&mut broker, "a truncated request");

    send_and_wait_close(&broker, &request(9999, 0, 1, &[]));
    assert_alive(&mut broker, "an unknown API key");

    send_and_wait_close(&broker, &request(3, 99, 1, &[]));
    assert_alive(&mut broker, "an unsupported version");

    // Metadata v1: topics array claiming i32::MAX entries, then nothing.
    send_and_wait_close(&broker, &request(3, 1, 1, &i32::MAX.to_be_bytes()));
    assert_alive(&mut broker, "a Metadata request claiming 2^31-1 topics");

    // Metadata v9 (flexible): compact array claiming u32::MAX - 1 entries.
    let mut flexible = Vec::new();
    flexible.extend_from_slice(&3i16.to_be_bytes());
    flexible.extend_from_slice(&9i16.to_be_bytes());
    flexible.extend_from_slice(&1i32.to_be_bytes());
    flexible.extend_from_slice(&(-1i16).to_be_bytes());
    flexible.push(0); // header tagged fields
    flexible.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // varint u32::MAX
    let mut frame = (flexible.len() as i32).to_be_bytes().to_vec();
    frame.extend(flexible);
    send_and_wait_close(&broker, &frame);
    assert_alive(&mut broker, "a flexible Metadata request claiming 2^32-2 topics");
}
