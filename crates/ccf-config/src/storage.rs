//! The usage store selected by `usage_tracking`, with every default applied.

use std::path::PathBuf;
use std::time::Duration;

use ccf_types::Secret;

use crate::schema::{DatabaseType, UsageTrackingConfig};

/// Where usage rows are written: the resolved form of `usage_tracking.database` and
/// `usage_tracking.database_path`.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageTarget {
    /// An embedded SQLite file.
    Sqlite {
        /// `database.path`, else `usage_tracking.database_path` (default `data/usage.db`).
        path: PathBuf,
    },
    /// A MySQL or MariaDB server.
    Mysql(MysqlTarget),
}

/// A MySQL or MariaDB connection with its pool settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MysqlTarget {
    /// Server host (validated non-empty when usage tracking is enabled).
    pub host: String,
    /// Server port (default 3306).
    pub port: u16,
    /// Database name (validated non-empty when usage tracking is enabled).
    pub database: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Connection character set (default `utf8mb4`).
    pub charset: String,
    /// `database.timezone` if set; callers fall back to the global `timezone`.
    pub timezone: Option<String>,
    /// Most open connections (default 10).
    pub max_open_conns: u32,
    /// Most idle connections kept (default 5).
    pub max_idle_conns: u32,
    /// Longest life of a connection (default 1 h).
    pub conn_max_lifetime: Duration,
    /// Longest idle time of a connection (default 10 min).
    pub conn_max_idle_time: Duration,
}

/// MySQL port used when `database.port` is absent.
pub const DEFAULT_MYSQL_PORT: u16 = 3306;

impl UsageTrackingConfig {
    /// The storage back-end: `database.type` if set; otherwise MySQL when `database.host` or
    /// `database.database` is set, else SQLite at `database.path` or `database_path`.
    pub fn storage(&self) -> StorageTarget {
        let Some(database) = &self.database else {
            return StorageTarget::Sqlite {
                path: PathBuf::from(&self.database_path),
            };
        };
        let kind = database.kind.unwrap_or_else(|| {
            if non_empty(&database.host).is_some() || non_empty(&database.database).is_some() {
                DatabaseType::Mysql
            } else {
                DatabaseType::Sqlite
            }
        });
        match kind {
            DatabaseType::Sqlite => StorageTarget::Sqlite {
                path: PathBuf::from(
                    non_empty(&database.path).unwrap_or(self.database_path.as_str()),
                ),
            },
            DatabaseType::Mysql => StorageTarget::Mysql(MysqlTarget {
                host: database.host.clone().unwrap_or_default(),
                port: database.port.unwrap_or(DEFAULT_MYSQL_PORT),
                database: database.database.clone().unwrap_or_default(),
                username: non_empty(&database.username).map(str::to_string),
                password: database
                    .password
                    .clone()
                    .filter(|secret| !secret.is_empty()),
                charset: non_empty(&database.charset)
                    .unwrap_or("utf8mb4")
                    .to_string(),
                timezone: non_empty(&database.timezone).map(str::to_string),
                max_open_conns: database.max_open_conns.unwrap_or(10),
                max_idle_conns: database.max_idle_conns.unwrap_or(5),
                conn_max_lifetime: database
                    .conn_max_lifetime
                    .map(|d| d.get())
                    .unwrap_or(Duration::from_secs(3600)),
                conn_max_idle_time: database
                    .conn_max_idle_time
                    .map(|d| d.get())
                    .unwrap_or(Duration::from_secs(600)),
            }),
        }
    }
}

impl UsageTrackingConfig {
    /// The usage recorder's journal file: `<journal_dir>/<name>`, where `journal_dir` defaults
    /// to the SQLite file's folder (with MySQL: the folder of `database_path`) and the name is
    /// the SQLite file's name plus `.recorder-journal.jsonl` (with MySQL:
    /// `usage-<database>.recorder-journal.jsonl`). Not SQLite's own `-journal` name.
    pub fn journal_path(&self) -> PathBuf {
        let (folder, name) = match self.storage() {
            StorageTarget::Sqlite { path } => {
                let name = path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "usage.db".to_string());
                (folder_of(&path), name)
            }
            StorageTarget::Mysql(target) => {
                let database: String = target
                    .database
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                (
                    folder_of(std::path::Path::new(&self.database_path)),
                    format!("usage-{database}"),
                )
            }
        };
        let folder = non_empty(&self.journal_dir).map_or(folder, PathBuf::from);
        folder.join(format!("{name}.recorder-journal.jsonl"))
    }
}

/// The folder a file is in (`.` for a bare name).
fn folder_of(path: &std::path::Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::DatabaseConfig;

    fn tracking(database: Option<DatabaseConfig>) -> UsageTrackingConfig {
        UsageTrackingConfig {
            database,
            ..UsageTrackingConfig::default()
        }
    }

    #[test]
    fn the_journal_sits_beside_the_sqlite_file_or_in_the_data_folder() {
        let check = |tracking: UsageTrackingConfig, expected: &str| {
            assert_eq!(tracking.journal_path(), PathBuf::from(expected));
        };
        check(tracking(None), "data/usage.db.recorder-journal.jsonl");
        check(
            tracking(Some(DatabaseConfig {
                path: Some("/var/lib/ccf/u.sqlite".into()),
                ..DatabaseConfig::default()
            })),
            "/var/lib/ccf/u.sqlite.recorder-journal.jsonl",
        );
        check(
            tracking(Some(DatabaseConfig {
                host: Some("db".into()),
                database: Some("cc/fw".into()),
                ..DatabaseConfig::default()
            })),
            "data/usage-cc_fw.recorder-journal.jsonl",
        );
        check(
            UsageTrackingConfig {
                journal_dir: Some("/srv/journal".into()),
                ..tracking(None)
            },
            "/srv/journal/usage.db.recorder-journal.jsonl",
        );
    }

    #[test]
    fn picks_sqlite_or_mysql() {
        let check = |database: Option<DatabaseConfig>, expected: StorageTarget| {
            assert_eq!(tracking(database).storage(), expected);
        };
        check(
            None,
            StorageTarget::Sqlite {
                path: "data/usage.db".into(),
            },
        );
        check(
            Some(DatabaseConfig::default()),
            StorageTarget::Sqlite {
                path: "data/usage.db".into(),
            },
        );
        check(
            Some(DatabaseConfig {
                path: Some("x.db".into()),
                ..DatabaseConfig::default()
            }),
            StorageTarget::Sqlite {
                path: "x.db".into(),
            },
        );
        check(
            Some(DatabaseConfig {
                host: Some("db".into()),
                ..DatabaseConfig::default()
            }),
            StorageTarget::Mysql(MysqlTarget {
                host: "db".into(),
                port: 3306,
                database: String::new(),
                username: None,
                password: None,
                charset: "utf8mb4".into(),
                timezone: None,
                max_open_conns: 10,
                max_idle_conns: 5,
                conn_max_lifetime: Duration::from_secs(3600),
                conn_max_idle_time: Duration::from_secs(600),
            }),
        );
        // An explicit type wins over the presence of MySQL keys.
        check(
            Some(DatabaseConfig {
                kind: Some(DatabaseType::Sqlite),
                host: Some("db".into()),
                ..DatabaseConfig::default()
            }),
            StorageTarget::Sqlite {
                path: "data/usage.db".into(),
            },
        );
    }
}
