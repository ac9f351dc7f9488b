//! The settings table against the example config, the README and the command line.

use clap::{Args as _, Command, FromArgMatches as _};

use super::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../chronik.example.toml");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");

fn command() -> Command {
    SettingArgs::augment_args(Command::new("serve"))
}

/// `args` as clap parses them (the environment's `CHRONIK_*` variables included).
fn parse(args: &[&str]) -> SettingArgs {
    let matches = command()
        .try_get_matches_from([&["serve"][..], args].concat())
        .unwrap();
    SettingArgs::from_arg_matches(&matches).unwrap()
}

/// A TOML value written the way the command line would take it.
fn as_command_line(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn the_example_config_holds_every_setting_at_its_default() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let missing: Vec<_> = SETTINGS
        .iter()
        .filter(|s| !table.contains_key(s.key))
        .map(|s| s.key)
        .collect();
    assert!(missing.is_empty(), "chronik.example.toml lacks {missing:?}");
    let unknown: Vec<_> = table
        .keys()
        .filter(|k| !SETTINGS.iter().any(|s| s.key == k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "chronik.example.toml has unknown keys {unknown:?}"
    );
    for setting in SETTINGS {
        assert_eq!(
            as_command_line(&table[setting.key]),
            setting.default,
            "chronik.example.toml's {} is not the default",
            setting.key
        );
    }

    let (from_file, logging_from_file) = resolve(SettingArgs::default(), Some(Path::new(EXAMPLE))).unwrap();
    let (defaults, default_logging) = resolve(SettingArgs::default(), None).unwrap();
    assert_eq!(from_file, defaults, "the example's values are the defaults");
    assert_eq!(logging_from_file.log_format, default_logging.log_format);
    // The log level's default is RUST_LOG when set, so only the file's own value is compared.
    assert_eq!(logging_from_file.log_level, "info,openraft=off");
}

#[test]
fn the_declared_defaults_are_valid() {
    let config = ServerConfig::with_data_dir("/somewhere");
    assert_eq!(config.data_dir, Path::new("/somewhere"));
    config.validate().unwrap();
    let (defaults, _) = resolve(SettingArgs::default(), None).unwrap();
    assert_eq!(
        ServerConfig {
            data_dir: defaults.data_dir.clone(),
            ..config
        },
        defaults
    );
    assert_eq!(defaults.data_dir, Path::new("./data"));
    assert_eq!(defaults.advertised, None);
    assert_eq!(
        defaults.preallocate_bytes,
        chronik_wal::WalConfig::default().preallocate_bytes,
        "the broker's default is the WAL's"
    );
}

#[test]
fn every_option_is_named_after_its_key_and_shows_its_default() {
    let command = command();
    let arguments: Vec<_> = command.get_arguments().collect();
    assert_eq!(arguments.len(), SETTINGS.len());
    for setting in SETTINGS {
        let flag = setting.flag();
        let argument = arguments
            .iter()
            .find(|a| a.get_long().map(|l| format!("--{l}")) == Some(flag.clone()))
            .unwrap_or_else(|| panic!("no option {flag} for {}", setting.key));
        assert_eq!(
            argument.get_env().and_then(|e| e.to_str()),
            Some(format!("CHRONIK_{}", setting.key.to_uppercase()).as_str())
        );
        assert_eq!(argument.get_env().and_then(|e| e.to_str()), Some(setting.env));
        assert_eq!(
            argument.get_value_names().map(|v| v[0].to_string()),
            Some(setting.key.to_uppercase()),
            "{flag}'s value name"
        );
        let help = argument.get_help().unwrap().to_string();
        assert!(
            help.starts_with(setting.help) && help.contains(" [default: "),
            "{flag}: {help}"
        );
    }
}

#[test]
fn every_default_is_what_its_option_would_say() {
    // Both sides through clap, so that `CHRONIK_*` variables of the shell running the tests apply to both;
    // a setting that one of them sets has no default to compare with.
    let (defaults, default_logging) = parse(&[]).merge(FileConfig::default()).unwrap();
    for setting in SETTINGS.iter().filter(|s| std::env::var_os(s.env).is_none()) {
        let given = parse(&[&setting.flag(), setting.default]);
        let (server, logging) = given.merge(FileConfig::default()).unwrap();
        assert_eq!(server, defaults, "{} {:?}", setting.flag(), setting.default);
        assert_eq!(logging.log_format, default_logging.log_format);
        if setting.key == "log_level" {
            assert_eq!(logging.log_level, setting.default);
        }
    }
}

#[test]
fn the_command_line_beats_the_file_which_beats_the_default() {
    let file: FileConfig =
        toml::from_str("default_partitions = 3\nretention_ms = 5\nlog_format = \"json\"\n").unwrap();
    let args = SettingArgs {
        default_partitions: Some(2),
        ..SettingArgs::default()
    };
    let (server, logging) = args.merge(file).unwrap();
    assert_eq!(server.default_partitions, 2);
    assert_eq!(server.retention_ms, 5);
    assert_eq!(server.max_connections, 10_000);
    assert_eq!(logging.log_format, LogFormat::Json);
}

#[test]
fn bad_values_are_named_in_the_error() {
    let error = |args: SettingArgs, file: &str| {
        let file: FileConfig = toml::from_str(file).unwrap();
        let (server, _) = args.merge(file)?;
        server.validate()
    };
    let message = |r: anyhow::Result<()>| format!("{:#}", r.unwrap_err());
    assert_eq!(
        message(error(SettingArgs::default(), "default_partitions = 0")),
        "default-partitions must be at least 1"
    );
    assert_eq!(
        message(error(SettingArgs::default(), "retention_bytes = -2")),
        "retention-bytes must be -1 (unlimited) or more"
    );
    assert_eq!(
        message(error(SettingArgs::default(), "log_format = \"xml\"")),
        "log_format must be text or json, not \"xml\""
    );
    assert!(
        message(error(SettingArgs::default(), "io_backend = \"uring\"")).contains("auto, io_uring or std")
    );
    assert!(message(error(SettingArgs::default(), "advertised_listener = \"nohost\"")).contains("HOST:PORT"));
    assert!(message(error(
        SettingArgs::default(),
        "fetch_max_bytes = 2000\nqueued_max_response_bytes = 1000"
    ))
    .contains("must be at least fetch-max-bytes"));
    // A file value that the command line overrides is not parsed.
    let args = SettingArgs {
        io_backend: Some(IoBackend::Std),
        ..SettingArgs::default()
    };
    error(args, "io_backend = \"uring\"").unwrap();
}

#[test]
fn the_readme_lists_every_option() {
    let readme = std::fs::read_to_string(README).unwrap();
    let (_, serve) = readme.split_once("## `chronik serve`").unwrap();
    let missing: Vec<_> = SETTINGS
        .iter()
        .map(Setting::flag)
        .filter(|flag| !serve.contains(&format!("[{flag} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's `chronik serve` synopsis lacks {missing:?}"
    );
}
