//! Layered loading: defaults < YAML (file or inline) < `CCF_` environment < command-line overrides.
//!
//! The YAML is parsed with serde_yaml, `${VAR}` references in string values are expanded on the
//! parsed tree, and the result is fed to figment through a provider whose metadata is named after
//! the file, so that every error can say which file (or `environment`, or `command line`) a bad
//! value came from. Unknown keys are found with serde_ignored while figment deserializes, and
//! reported as warnings with their full key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer};

use crate::error::{ConfigError, ConfigWarning, Problem};
use crate::interpolate::yaml_to_dict;
use crate::path::KeyPath;
use crate::resolve::resolve;
use crate::schema::RawConfig;
use crate::Config;

/// Default prefix of environment overrides (`CCF_SERVER__PORT=9000`).
pub const DEFAULT_ENV_PREFIX: &str = "CCF_";
/// Separator of nested keys in environment override names.
pub const ENV_KEY_SEPARATOR: &str = "__";

/// Source name used in messages for values that came from inline YAML.
pub const INLINE_SOURCE: &str = "<inline>";
/// Source name used in messages for values that came from environment overrides.
pub const ENV_SOURCE: &str = "environment";
/// Source name used in messages for values that came from command-line overrides.
pub const CLI_SOURCE: &str = "command line";
/// Source name used in messages when no YAML was given at all.
const DEFAULTS_SOURCE: &str = "<defaults>";

/// Values given on the command line. Every field is optional; `None` leaves the configured value
/// alone, so a flag's default can never override the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `server.host`.
    pub server_host: Option<String>,
    /// `server.port`.
    pub server_port: Option<u16>,
    /// `web.enabled` (`--web` forces it on).
    pub web_enabled: Option<bool>,
    /// `web.port`.
    pub web_port: Option<u16>,
    /// `tui.enabled` (`--no-tui` forces it off).
    pub tui_enabled: Option<bool>,
}

impl CliOverrides {
    fn to_dict(&self) -> Dict {
        let mut dict = Dict::new();
        let mut set = |section: &str, key: &str, value: Value| {
            if let Value::Dict(_, inner) = dict
                .entry(section.to_string())
                .or_insert_with(|| Value::from(Dict::new()))
            {
                inner.insert(key.to_string(), value);
            }
        };
        if let Some(host) = &self.server_host {
            set("server", "host", Value::from(host.clone()));
        }
        if let Some(port) = self.server_port {
            set("server", "port", Value::from(port));
        }
        if let Some(enabled) = self.web_enabled {
            set("web", "enabled", Value::from(enabled));
        }
        if let Some(port) = self.web_port {
            set("web", "port", Value::from(port));
        }
        if let Some(enabled) = self.tui_enabled {
            set("tui", "enabled", Value::from(enabled));
        }
        dict
    }
}

/// A loaded, validated configuration and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The validated configuration.
    pub config: Config,
    /// Unknown keys and similar; loading succeeded anyway. Log each one.
    pub warnings: Vec<ConfigWarning>,
}

#[derive(Debug, Clone)]
enum YamlInput {
    File(PathBuf),
    Inline(String),
}

/// Builds a [`Config`] from layered sources: defaults < YAML < environment < CLI overrides.
///
/// ```
/// use ccf_config::{CliOverrides, ConfigLoader};
///
/// let loaded = ConfigLoader::new()
///     .yaml_str("endpoints:\n  - name: a\n    url: https://api.anthropic.com\n")
///     .env_vars([("CCF_SERVER__PORT", "9000")])
///     .overrides(CliOverrides { web_port: Some(9001), ..CliOverrides::default() })
///     .load()?;
/// assert_eq!(loaded.config.server.port, 9000);
/// assert_eq!(loaded.config.web.port, 9001);
/// # Ok::<(), ccf_config::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    yaml: Option<YamlInput>,
    env_prefix: Option<String>,
    env_vars: Option<Vec<(String, String)>>,
    overrides: CliOverrides,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    /// A loader with no YAML, `CCF_` environment overrides on, the process environment and no
    /// command-line overrides.
    pub fn new() -> Self {
        Self {
            yaml: None,
            env_prefix: Some(DEFAULT_ENV_PREFIX.to_string()),
            env_vars: None,
            overrides: CliOverrides::default(),
        }
    }

    /// Reads the YAML from this file; a missing file is an error. Replaces any earlier
    /// [`file`](Self::file) or [`yaml_str`](Self::yaml_str).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.yaml = Some(YamlInput::File(path.into()));
        self
    }

    /// Uses this YAML text (named `<inline>` in messages). Replaces any earlier
    /// [`file`](Self::file) or [`yaml_str`](Self::yaml_str).
    pub fn yaml_str(mut self, yaml: impl Into<String>) -> Self {
        self.yaml = Some(YamlInput::Inline(yaml.into()));
        self
    }

    /// Reads environment overrides from variables starting with `prefix` (case-insensitive);
    /// the rest of the name, lowercased and split on `__`, is the key path:
    /// `CCF_SERVER__PORT=9000` sets `server.port`. The default prefix is `CCF_`; an empty prefix
    /// turns overrides off (it would make every variable a key).
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.env_prefix = (!prefix.is_empty()).then_some(prefix);
        self
    }

    /// Turns environment overrides off. `${VAR}` references in the YAML are still expanded.
    pub fn without_env_overrides(mut self) -> Self {
        self.env_prefix = None;
        self
    }

    /// Uses these variables instead of the process environment, both for `${VAR}` expansion and
    /// for overrides. For tests and embedders.
    pub fn env_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env_vars = Some(
            vars.into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        );
        self
    }

    /// Command-line values; they win over every other source.
    pub fn overrides(mut self, overrides: CliOverrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// Loads, merges, resolves and validates.
    pub fn load(&self) -> Result<LoadedConfig, ConfigError> {
        let env = self.environment();
        let lookup = |name: &str| env.get(name).cloned();

        let (main_source, source_path, yaml_dict) = match &self.yaml {
            None => (DEFAULTS_SOURCE.to_string(), None, Dict::new()),
            Some(YamlInput::Inline(text)) => {
                let dict = parse_yaml(text, INLINE_SOURCE, &lookup)?;
                (INLINE_SOURCE.to_string(), None, dict)
            }
            Some(YamlInput::File(path)) => {
                let name = path.display().to_string();
                let text = read_file(path, &name)?;
                let dict = parse_yaml(&text, &name, &lookup)?;
                (name, Some(path.clone()), dict)
            }
        };

        let yaml_metadata = match &source_path {
            Some(path) => Metadata::from(main_source.clone(), path.as_path()),
            None => Metadata::named(main_source.clone()),
        };
        let mut figment = Figment::new().merge(DictProvider {
            metadata: yaml_metadata,
            profile: Profile::Default,
            dict: yaml_dict,
        });
        if let Some(prefix) = &self.env_prefix {
            figment = figment.merge(env_provider(prefix, &env));
        }
        figment = figment.merge(DictProvider {
            metadata: Metadata::named(CLI_SOURCE),
            profile: Profile::Global,
            dict: self.overrides.to_dict(),
        });

        let attribution = Attribution::new(&figment, &main_source)?;

        let tracked: Tracked = figment
            .extract_lossy()
            .map_err(|error| attribution.figment_error(error))?;

        let warnings = tracked
            .ignored
            .iter()
            .flat_map(|path| attribution.leaves(path))
            .map(|path| {
                let key = path.to_string();
                ConfigWarning {
                    file: attribution.source_of(&path),
                    message: format!("unknown key `{key}` (ignored)"),
                    key,
                }
            })
            .collect();

        let config = resolve(tracked.raw, source_path).map_err(|problems| {
            attribution.invalid(
                problems
                    .into_iter()
                    .map(|(path, message)| Problem {
                        file: attribution.source_of(&path),
                        key: path.to_string(),
                        message,
                    })
                    .collect(),
            )
        })?;

        Ok(LoadedConfig { config, warnings })
    }

    fn environment(&self) -> BTreeMap<String, String> {
        match &self.env_vars {
            Some(vars) => vars.iter().cloned().collect(),
            None => std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()?))
                })
                .collect(),
        }
    }
}

fn read_file(path: &Path, name: &str) -> Result<String, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ConfigError::FileNotFound {
                file: name.to_string(),
            })
        }
        Err(source) => Err(ConfigError::Read {
            file: name.to_string(),
            source,
        }),
    }
}

fn parse_yaml(
    text: &str,
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Dict, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse {
        file: name.to_string(),
        message,
    };
    let mut document: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|error| parse_error(error.to_string()))?;
    document
        .apply_merge()
        .map_err(|error| parse_error(error.to_string()))?;
    let mut problems = Vec::new();
    let dict = yaml_to_dict(document, lookup, &mut problems).map_err(parse_error)?;
    if problems.is_empty() {
        Ok(dict)
    } else {
        Err(ConfigError::Invalid {
            file: name.to_string(),
            problems: problems
                .into_iter()
                .map(|(path, message)| Problem {
                    file: name.to_string(),
                    key: path.to_string(),
                    message,
                })
                .collect(),
        })
    }
}

/// Environment overrides: `<prefix>A__B=v` becomes `a.b = "v"`. Values stay strings; the lossy
/// extraction turns them into numbers or booleans where the schema wants one.
fn env_provider(prefix: &str, env: &BTreeMap<String, String>) -> DictProvider {
    let mut dict = Dict::new();
    for (name, value) in env {
        let Some(rest) = strip_prefix_ignore_case(name, prefix) else {
            continue;
        };
        let keys: Vec<String> = rest
            .split(ENV_KEY_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            continue;
        }
        insert_nested(&mut dict, &keys, Value::from(value.clone()));
    }
    let upper_prefix = prefix.to_ascii_uppercase();
    let metadata = Metadata::named(ENV_SOURCE).interpolater(move |_: &Profile, keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|key| key.to_ascii_uppercase()).collect();
        format!("{upper_prefix}{}", keys.join(ENV_KEY_SEPARATOR))
    });
    DictProvider {
        metadata,
        profile: Profile::Default,
        dict,
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

fn insert_nested(dict: &mut Dict, keys: &[String], value: Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut current = dict;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, inner) = entry else {
            return;
        };
        current = inner;
    }
    current.insert(last.clone(), value);
}

/// A figment provider for an already-built dictionary with a chosen name.
struct DictProvider {
    metadata: Metadata,
    profile: Profile,
    dict: Dict,
}

impl Provider for DictProvider {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut map = Map::new();
        map.insert(self.profile.clone(), self.dict.clone());
        Ok(map)
    }
}

/// `RawConfig` plus the keys serde ignored while figment deserialized it.
struct Tracked {
    raw: RawConfig,
    ignored: Vec<KeyPath>,
}

impl<'de> Deserialize<'de> for Tracked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut ignored = Vec::new();
        let raw = serde_ignored::deserialize(deserializer, |path| {
            ignored.push(KeyPath::from_ignored(&path));
        })?;
        Ok(Tracked { raw, ignored })
    }
}

/// Says where a key's value came from, using the merged value tree's tags.
struct Attribution<'a> {
    figment: &'a Figment,
    merged: Value,
    main_source: &'a str,
}

impl<'a> Attribution<'a> {
    fn new(figment: &'a Figment, main_source: &'a str) -> Result<Self, ConfigError> {
        let merged = figment
            .find_value("")
            .map_err(|error| ConfigError::Invalid {
                file: main_source.to_string(),
                problems: vec![Problem {
                    file: main_source.to_string(),
                    key: KeyPath::root().to_string(),
                    message: error.to_string(),
                }],
            })?;
        Ok(Self {
            figment,
            merged,
            main_source,
        })
    }

    fn source_of(&self, path: &KeyPath) -> String {
        path.find(&self.merged)
            .and_then(|value| self.figment.get_metadata(value.tag()))
            .map(|metadata| metadata.name.to_string())
            .unwrap_or_else(|| self.main_source.to_string())
    }

    /// The leaf keys under `path` (or `path` itself when it is not a non-empty mapping), so an
    /// unknown section is reported key by key, each with its own source.
    fn leaves(&self, path: &KeyPath) -> Vec<KeyPath> {
        fn walk(value: &Value, path: KeyPath, out: &mut Vec<KeyPath>) {
            match value {
                Value::Dict(_, dict) if !dict.is_empty() => {
                    for (key, child) in dict {
                        walk(child, path.key(key), out);
                    }
                }
                _ => out.push(path),
            }
        }
        let mut out = Vec::new();
        match path.find(&self.merged) {
            Some(value) => walk(value, path.clone(), &mut out),
            None => out.push(path.clone()),
        }
        out
    }

    fn invalid(&self, problems: Vec<Problem>) -> ConfigError {
        ConfigError::Invalid {
            file: self.main_source.to_string(),
            problems,
        }
    }

    fn figment_error(&self, error: figment::Error) -> ConfigError {
        let mut problems: Vec<Problem> = error
            .into_iter()
            .map(|error| {
                let path = KeyPath::from_figment(&self.merged, &error.path);
                let mut message = describe_kind(&error.kind);
                let file = match &error.metadata {
                    Some(metadata) => {
                        if metadata.name == ENV_SOURCE {
                            let variable =
                                metadata.interpolate(&Profile::Default, &path.raw_keys());
                            message = format!("{message} (from `{variable}`)");
                        }
                        metadata.name.to_string()
                    }
                    None => self.source_of(&path),
                };
                Problem {
                    file,
                    key: path.to_string(),
                    message,
                }
            })
            .collect();
        problems.reverse();
        self.invalid(problems)
    }
}

fn describe_kind(kind: &figment::error::Kind) -> String {
    use figment::error::{Actual, Kind};
    // serde names the Rust type (`struct ServerConfig`); users wrote YAML.
    let expected_text = |expected: &str| {
        if expected.starts_with("struct ") {
            "a mapping of keys to values".to_string()
        } else {
            expected.to_string()
        }
    };
    let actual_text = |actual: &Actual| match actual {
        Actual::Option | Actual::Unit => "null".to_string(),
        other => other.to_string(),
    };
    match kind {
        Kind::Message(message) => message.clone(),
        Kind::InvalidType(actual, expected) => {
            let scalar = matches!(
                actual,
                Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) | Actual::Bool(_)
            );
            let text = format!(
                "expected {}, found {}",
                expected_text(expected),
                actual_text(actual)
            );
            if scalar && expected == "a string" {
                format!("{text}: quote the value to use it as text")
            } else {
                text
            }
        }
        Kind::InvalidValue(actual, expected) => format!(
            "expected {}, found {}",
            expected_text(expected),
            actual_text(actual)
        ),
        Kind::UnknownVariant(found, expected) => {
            let options: Vec<String> = expected.iter().map(|name| format!("`{name}`")).collect();
            format!(
                "unknown value `{found}`: expected one of {}",
                options.join(", ")
            )
        }
        Kind::MissingField(field) => format!("missing required key `{field}`"),
        other => other.to_string(),
    }
}
