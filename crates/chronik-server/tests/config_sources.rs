//! Settings come from the command line, `CHRONIK_*` environment variables and a TOML file, in that order
//! of precedence, and reach the broker's behaviour (seen through Metadata auto-creation).
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, Broker};
use kafka_protocol::{
    messages::{metadata_request::MetadataRequestTopic, MetadataRequest, TopicName},
    protocol::StrBytes,
};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// Asks for `topic`'s metadata (auto-creation allowed by the request); returns (error, partitions).
fn metadata(broker: &Broker, topic: &str) -> (i16, usize) {
    let mut s = broker.connect();
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(topic.into()))))
        ]));
    let response = call(&mut s, &request, 9);
    (response.topics[0].error_code, response.topics[0].partitions.len())
}

#[test]
fn command_line_beats_environment_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chronik.toml");
    std::fs::write(&file, "default_partitions = 3\nauto_create_topics = true\n").unwrap();
    let config = file.to_str().unwrap();
    let data = dir.path().join("data");

    let broker = Broker::start(&data, &["--config", config], &[]);
    assert_eq!(
        metadata(&broker, "from-file"),
        (0, 3),
        "the file's default partition count applies"
    );
    broker.stop();

    let env = [("CHRONIK_AUTO_CREATE_TOPICS", "false")];
    let broker = Broker::start(&data, &["--config", config], &env);
    assert_eq!(
        metadata(&broker, "env-off").0,
        UNKNOWN_TOPIC_OR_PARTITION,
        "the environment beats the file"
    );
    broker.stop();

    let broker = Broker::start(&data, &["--config", config, "--auto-create-topics", "true"], &env);
    assert_eq!(
        metadata(&broker, "cli-on"),
        (0, 3),
        "the command line beats the environment"
    );
    broker.stop();
}

#[test]
fn a_bad_config_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "no_such_option = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("no_such_option"),
        "{stderr}"
    );
}

/// The `io_backend` field of the startup line.
fn startup_io_backend(broker: &Broker) -> String {
    let line = broker.startup_lines.last().unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["fields"]["io_backend"].as_str().unwrap().to_owned()
}

#[test]
fn io_backend_comes_from_every_source_and_the_startup_line_names_the_one_running() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chronik.toml");
    std::fs::write(&file, "io_backend = \"io_uring\"\n").unwrap();
    let config = file.to_str().unwrap();
    let data = dir.path().join("data");

    // Each higher source says std over a lower one saying io_uring, so this holds where io_uring is refused.
    let broker = Broker::start(&data, &["--config", config], &[("CHRONIK_IO_BACKEND", "std")]);
    assert_eq!(
        startup_io_backend(&broker),
        "std",
        "the environment beats the file"
    );
    broker.stop();
    let env = [("CHRONIK_IO_BACKEND", "io_uring")];
    let broker = Broker::start(&data, &["--io-backend", "std"], &env);
    assert_eq!(
        startup_io_backend(&broker),
        "std",
        "the command line beats the environment"
    );
    broker.stop();

    // `auto` runs whatever this kernel allows, and the startup line says which.
    let expected = chronik_wal::io::select(chronik_wal::IoBackend::Auto)
        .unwrap()
        .name();
    let broker = Broker::start(&data, &["--io-backend", "auto"], &[]);
    assert_eq!(startup_io_backend(&broker), expected);
    broker.stop();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chronik"))
        .args(["serve", "--io-backend", "uring"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auto, io_uring or std"), "{stderr}");
}
