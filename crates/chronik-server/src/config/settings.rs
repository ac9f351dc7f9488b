//! The machinery behind the `settings!` table of `config/mod.rs`: the macro that turns one row per
//! setting into the clap options, the TOML file's keys, the resolved structs and their merge; and what
//! its expansion calls.

use std::{fmt::Display, net::SocketAddr, path::PathBuf, str::FromStr};

use chronik_wal::IoBackend;
use serde::de::DeserializeOwned;

use super::LogFormat;

/// One setting as the table declares it, for checks of the documentation and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The TOML key.
    pub key: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The default, as it would be written on the command line (empty: none).
    pub default: &'static str,
    pub help: &'static str,
}

impl Setting {
    /// The command-line option, e.g. `--data-dir`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }
}

/// How a setting's value is written in the TOML file: numbers, booleans, strings, paths and addresses as
/// themselves; enums as the string the command line takes, parsed only if the file's value is used.
pub trait FileValue: Sized {
    type InFile: DeserializeOwned + std::fmt::Debug + Clone + PartialEq + Eq;
    fn from_file(value: Self::InFile) -> anyhow::Result<Self>;
}

macro_rules! file_value_as_itself {
    ($($t:ty),*) => {$(
        impl FileValue for $t {
            type InFile = Self;
            fn from_file(value: Self) -> anyhow::Result<Self> {
                Ok(value)
            }
        }
    )*};
}

file_value_as_itself!(PathBuf, SocketAddr, String, bool, i32, u32, i64, u64);

macro_rules! file_value_parsed {
    ($($t:ty),*) => {$(
        impl FileValue for $t {
            type InFile = String;
            fn from_file(value: String) -> anyhow::Result<Self> {
                value.parse().map_err(anyhow::Error::from)
            }
        }
    )*};
}

file_value_parsed!(IoBackend, LogFormat);

/// Parses a declared default the way a command-line value would be parsed.
pub(crate) fn parse_default<T: FromStr>(key: &str, default: &str) -> anyhow::Result<T>
where
    T::Err: Display,
{
    default
        .parse()
        .map_err(|e| anyhow::anyhow!("the default of {key} ({default:?}) does not parse: {e}"))
}

/// `--help` text of a setting: its help and the default shown.
pub(crate) fn help_with_default(help: &str, shown: &str) -> String {
    format!("{help} [default: {shown}]")
}

/// The first of an optional row item and a fallback.
macro_rules! either {
    ([$given:expr] $fallback:expr) => {
        $given
    };
    ([] $fallback:expr) => {
        $fallback
    };
}

/// The type a setting resolves to: its own, or the one its `convert` hook produces.
macro_rules! resolved_type {
    ($raw:ty) => {
        $raw
    };
    ($raw:ty => $resolved:ty) => {
        $resolved
    };
}

/// Generates, from the table of settings: [`SettingArgs`] (clap: one optional option per setting, with
/// its environment variable and its default in the help), [`FileConfig`] (serde: one optional key per
/// setting, unknown keys refused), one resolved struct per group with a `from_sources` merging the
/// sources, and [`SETTINGS`].
///
/// A row is `field: Type { env, default, help }` and may add, in this order: `=> Resolved` after the type
/// with `convert` (the value is converted after the merge); `key` (the TOML key when it is not the
/// field's name; `arg` then names the option too); `shown` (what the help says the default is, when not
/// the default itself); `arg` (more clap attributes); `fallback` (a source consulted after the file and
/// before the default); `convert`; `check` (a predicate on the resolved value and the error when it
/// fails, after the option's name).
macro_rules! settings {
    ($(
        $(#[doc = $struct_doc:literal])*
        pub struct $Struct:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $raw:ty $(=> $resolved:ty)? {
                    $(key: $key:literal,)?
                    env: $env:literal,
                    default: $default:literal,
                    $(shown: $shown:literal,)?
                    help: $help:literal,
                    $(arg: [$($arg:tt)*],)?
                    $(fallback: $fallback:expr,)?
                    $(convert: $convert:expr,)?
                    $(check: $check:expr, $check_error:literal,)?
                }
            )*
        }
    )*) => {
        /// The settings as options of `chronik serve`: given on the command line or in the environment
        /// (clap reads both, the command line first); `None` when neither has it.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct SettingArgs {
            $($(
                #[arg(
                    long,
                    env = $env,
                    help = $crate::config::settings::help_with_default(
                        $help,
                        $crate::config::settings::either!([$($shown)?] $default),
                    )
                    $(, $($arg)*)?
                )]
                pub $field: Option<$raw>,
            )*)*
        }

        /// Settings that a TOML file may hold; every key optional, unknown keys refused. The keys are the
        /// command-line options' names with `_` for `-`.
        #[derive(Debug, Default, serde::Deserialize, Clone, PartialEq, Eq)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $($(
                $(#[serde(rename = $key)])?
                pub $field: Option<<$raw as $crate::config::settings::FileValue>::InFile>,
            )*)*
        }

        /// Every setting, in the order `--help` lists them.
        pub const SETTINGS: &[$crate::config::settings::Setting] = &[
            $($(
                $crate::config::settings::Setting {
                    key: $crate::config::settings::either!([$($key)?] stringify!($field)),
                    env: $env,
                    default: $default,
                    help: $help,
                },
            )*)*
        ];

        $(
            $(#[doc = $struct_doc])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $Struct {
                $(
                    $(#[doc = $doc])*
                    pub $field: $crate::config::settings::resolved_type!($raw $(=> $resolved)?),
                )*
            }

            impl $Struct {
                /// Takes this struct's settings from `args`, else `file`, else the row's fallback, else the
                /// declared default; converts and checks each.
                fn from_sources(args: &mut SettingArgs, file: &mut FileConfig) -> anyhow::Result<Self> {
                    Ok(Self {
                        $($field: {
                            let key: &str =
                                $crate::config::settings::either!([$($key)?] stringify!($field));
                            let given: Option<$raw> = match args.$field.take() {
                                Some(value) => Some(value),
                                None => file
                                    .$field
                                    .take()
                                    .map(<$raw as $crate::config::settings::FileValue>::from_file)
                                    .transpose()?,
                            };
                            $(let given = given.or_else($fallback);)?
                            let value: $raw = match given {
                                Some(value) => value,
                                None => $crate::config::settings::parse_default(key, $default)?,
                            };
                            $(let value = ($convert)(value)?;)?
                            $(anyhow::ensure!(
                                ($check)(&value),
                                "{} {}",
                                key.replace('_', "-"),
                                $check_error
                            );)?
                            value
                        },)*
                    })
                }
            }
        )*

        impl SettingArgs {
            /// Merges these options over `file` and the defaults, one struct per group of settings.
            fn merge(mut self, mut file: FileConfig) -> anyhow::Result<($($Struct,)*)> {
                Ok(($($Struct::from_sources(&mut self, &mut file)?,)*))
            }
        }
    };
}

pub(crate) use {either, resolved_type, settings};
