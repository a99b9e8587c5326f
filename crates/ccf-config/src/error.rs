//! Loading errors and warnings. Every message names where the value came from (a file path,
//! `<inline>`, `environment` or `command line`), the key path (`endpoints[2].url`) and what was
//! expected.

use std::fmt;

/// Why a configuration could not be loaded. The binary exits with status 2 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file does not exist.
    #[error("{file}: configuration file not found")]
    FileNotFound {
        /// The path as given.
        file: String,
    },
    /// The file exists but could not be read.
    #[error("{file}: cannot read configuration file")]
    Read {
        /// The path as given.
        file: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML, or its top level is not a mapping.
    #[error("{file}: invalid yaml: {message}")]
    Parse {
        /// The path as given, or `<inline>`.
        file: String,
        /// What is wrong and where (line and column when known).
        message: String,
    },
    /// One or more values are missing, of the wrong type or out of range. All problems found are
    /// listed, one per line.
    #[error("{}", ProblemList(problems))]
    Invalid {
        /// The main configuration source (the file path, or `<inline>`).
        file: String,
        /// Every problem found, in a stable order.
        problems: Vec<Problem>,
    },
    /// `-p <name>` named an endpoint the configuration does not have.
    #[error(
        "unknown endpoint `{name}` given as primary endpoint; known endpoints: {}",
        KnownList(known)
    )]
    UnknownPrimaryEndpoint {
        /// The name given.
        name: String,
        /// Every endpoint name in the configuration, in file order.
        known: Vec<String>,
    },
}

impl ConfigError {
    /// The individual problems of an [`ConfigError::Invalid`] error; empty for other variants.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// One invalid value: where it came from, its key path and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The source of the value: a file path, `<inline>`, `environment` or `command line`.
    pub file: String,
    /// The key path, e.g. `endpoints[2].url` or `server.port`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, problem) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

struct KnownList<'a>(&'a [String]);

impl fmt::Display for KnownList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (position, name) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{name}`")?;
        }
        Ok(())
    }
}

/// Something worth telling the user that does not stop loading, e.g. a misspelt key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The source of the key: a file path, `<inline>`, `environment` or `command line`.
    pub file: String,
    /// The key path, e.g. `servr.port`.
    pub key: String,
    /// The whole message, e.g. ``unknown key `servr.port` (ignored)``.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_problem_on_its_own_line() {
        let error = ConfigError::Invalid {
            file: "config.yaml".into(),
            problems: vec![
                Problem {
                    file: "config.yaml".into(),
                    key: "server.port".into(),
                    message: "expected u16".into(),
                },
                Problem {
                    file: "environment".into(),
                    key: "web.port".into(),
                    message: "expected u16".into(),
                },
            ],
        };
        assert_eq!(
            error.to_string(),
            "config.yaml: server.port: expected u16\nenvironment: web.port: expected u16"
        );
        assert_eq!(error.problems().len(), 2);
    }

    #[test]
    fn errors_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<ConfigError>();
        assert_send_sync::<ConfigWarning>();
    }

    #[test]
    fn unknown_primary_endpoint_lists_known_names() {
        let error = ConfigError::UnknownPrimaryEndpoint {
            name: "nope".into(),
            known: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            error.to_string(),
            "unknown endpoint `nope` given as primary endpoint; known endpoints: `a`, `b`"
        );
    }
}
