//! Starting a broker for integration tests, as the real `chronik` binary (`Broker`) or inside the test
//! process (`InProcessBroker`), and speaking the protocol to it with `kafka-protocol` messages.
#![allow(dead_code, clippy::unwrap_used)]

pub mod in_process;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{ApiKey, RequestHeader, ResponseHeader},
    protocol::{Decodable, Encodable, Request, StrBytes},
};

/// The real `chronik` binary, for tests of what the process adds (command line, environment, logging,
/// allocator guard) or that kill it.
pub struct Broker {
    pub child: Child,
    pub addr: String,
    /// Every stderr line up to and including the startup line.
    pub startup_lines: Vec<String>,
}

impl Broker {
    /// Starts `chronik serve` on `data_dir` with an ephemeral port, plus `extra` arguments and environment.
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chronik"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // The startup line names the bound address; reading it is the readiness signal.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut startup_lines = Vec::new();
        let addr = loop {
            let line = lines.next().expect("broker exited before starting").unwrap();
            startup_lines.push(line.clone());
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
            startup_lines,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// SIGTERM, and the exit status must be success.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "broker exited with {status}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates topic `name` with `partitions` partitions and asserts it worked.
pub fn create_topic(stream: &mut TcpStream, name: &'static str, partitions: i32) {
    use kafka_protocol::messages::{create_topics_request::CreatableTopic, CreateTopicsRequest, TopicName};
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    assert_eq!(
        call(stream, &request, 5).topics[0].error_code,
        0,
        "creating {name}"
    );
}

/// Sends one request of type `R` at `version` and decodes its response.
pub fn call<R: Request>(stream: &mut TcpStream, request: &R, version: i16) -> R::Response {
    let key = ApiKey::try_from(R::KEY).unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("chronik-test")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 42);
    R::Response::decode(&mut body, version).unwrap()
}
