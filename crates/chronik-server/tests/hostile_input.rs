//! Hostile bytes on the Kafka port must never take the broker down. The real `chronik` binary is started
//! (so its allocator guard is in place) and fed garbage, an absurd length prefix, a truncated request, an
//! unknown API key, an unsupported version, and a 12-byte-body Metadata request claiming 2^31-1 topics,
//! the claim that makes `kafka-protocol` 0.18 ask for hundreds of GiB. After each, the process is alive and
//! a well-formed request on a new connection is answered.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

struct Broker {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chronik"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The startup line names the bound address; reading it is the readiness signal.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("broker exited before starting").unwrap();
            if line.contains("chronik started") {
                let at = line.find("\"listen\":\"").unwrap() + 10;
                break line[at..].split('"').next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the broker never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Broker {
            child,
            addr,
            _dir: dir,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    fn assert_alive(&mut self, after: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "broker died after {after}"
        );
        // ApiVersions v0 on a fresh connection is answered with our correlation id.
        let mut s = self.connect();
        s.write_all(&request(18, 0, 77, &[])).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        assert_eq!(&body[..4], &77i32.to_be_bytes(), "answered after {after}");
        assert_eq!(&body[4..6], &0i16.to_be_bytes(), "no error after {after}");
    }

    /// Sends bytes, then expects the broker to close this connection (or answer and keep it open: either
    /// way the process must survive, which `assert_alive` checks).
    fn send_and_wait_close(&self, bytes: &[u8]) {
        let mut s = self.connect();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut broker = Broker::start();
    broker.assert_alive("start");

    broker.send_and_wait_close(b"\x00\x00\x00\x20this is not a kafka request at all!!");
    broker.assert_alive("garbage");

    broker.send_and_wait_close(&0x7fff_ffffi32.to_be_bytes());
    broker.assert_alive("a 2 GiB length prefix");

    broker.send_and_wait_close(&(-5i32).to_be_bytes());
    broker.assert_alive("a negative length prefix");

    let full = request(3, 1, 1, &[0, 0, 0, 1, 0, 1, b'x']);
    broker.send_and_wait_close(&full[..full.len() - 3]);
    broker.assert_alive("a truncated request");

    broker.send_and_wait_close(&request(9999, 0, 1, &[]));
    broker.assert_alive("an unknown API key");

    broker.send_and_wait_close(&request(3, 99, 1, &[]));
    broker.assert_alive("an unsupported version");

    // Metadata v1: topics array claiming i32::MAX entries, then nothing.
    broker.send_and_wait_close(&request(3, 1, 1, &i32::MAX.to_be_bytes()));
    broker.assert_alive("a Metadata request claiming 2^31-1 topics");

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
    broker.send_and_wait_close(&frame);
    broker.assert_alive("a flexible Metadata request claiming 2^32-2 topics");
}
