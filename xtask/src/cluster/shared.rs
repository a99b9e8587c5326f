//! The services the instances of `cargo xtask cluster` share: the local MariaDB (a database of
//! the run's own, dropped at the end unless `--keep`) through the `mysql` client, and the local
//! Redis (a key prefix of the run's own, its keys deleted at the end unless `--keep`) through
//! `redis-cli`. Both are needed by the forwarder's own tests and are on every development machine.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// The MariaDB server the instances share (root, empty password).
pub(super) const MYSQL_HOST: &str = "127.0.0.1";
/// Its port.
pub(super) const MYSQL_PORT: u16 = 3306;
/// The Redis server the instances share.
pub(super) const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Runs `redis-cli` against the local server; its standard output.
pub(super) fn redis_cli(args: &[&str]) -> Result<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .context("could not run redis-cli")?;
    if !output.status.success() {
        bail!(
            "redis-cli {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The keys matching `pattern` (`--scan`, never `KEYS`).
fn redis_keys(pattern: &str) -> Result<Vec<String>> {
    Ok(redis_cli(&["--scan", "--pattern", pattern])?
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect())
}

/// How many keys match `pattern`.
pub(super) fn redis_count(pattern: &str) -> Result<usize> {
    Ok(redis_keys(pattern)?.len())
}

/// The run's Redis prefix: every key under it is deleted at the end unless `--keep`.
pub(super) struct RedisPrefix {
    /// The prefix (`ccf-xtask-<random>`).
    pub(super) prefix: String,
    /// Leave the keys in place at the end.
    pub(super) keep: bool,
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        if self.keep {
            println!("kept Redis keys under {}:*", self.prefix);
            return;
        }
        let keys = match redis_keys(&format!("{}:*", self.prefix)) {
            Ok(keys) => keys,
            Err(error) => {
                println!("warning: listing Redis keys to delete: {error:#}");
                return;
            }
        };
        for chunk in keys.chunks(200) {
            let mut args = vec!["DEL"];
            args.extend(chunk.iter().map(String::as_str));
            if let Err(error) = redis_cli(&args) {
                println!("warning: deleting Redis keys: {error:#}");
            }
        }
    }
}

/// The run's MariaDB database: dropped at the end unless `--keep`.
pub(super) struct Database {
    /// The database's name (`ccf_cluster_<random>`).
    pub(super) name: String,
    keep: bool,
}

impl Database {
    /// Creates the database `name` (utf8mb4).
    pub(super) fn create(name: &str, keep: bool) -> Result<Database> {
        mysql(
            None,
            &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        )
        .context("MariaDB at 127.0.0.1:3306 (root, empty password)")?;
        Ok(Database {
            name: name.to_string(),
            keep,
        })
    }

    /// `(instance_id, request_id)` of every stored row.
    pub(super) fn rows(&self) -> Result<Vec<(String, String)>> {
        Ok(mysql(
            Some(&self.name),
            "SELECT instance_id, request_id FROM request_logs",
        )?
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [instance, request] => Some((instance.clone(), request.clone())),
            _ => None,
        })
        .collect())
    }

    /// Request ids stored more than once, with their count.
    pub(super) fn duplicates(&self) -> Result<Vec<(String, u64)>> {
        Ok(mysql(
            Some(&self.name),
            "SELECT request_id, COUNT(*) FROM request_logs GROUP BY request_id HAVING COUNT(*) > 1",
        )?
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [request, count] => Some((request.clone(), count.parse().unwrap_or(0))),
            _ => None,
        })
        .collect())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.keep {
            println!("kept database {}", self.name);
            return;
        }
        if let Err(error) = mysql(None, &format!("DROP DATABASE IF EXISTS {}", self.name)) {
            println!("warning: dropping database {}: {error:#}", self.name);
        }
    }
}

/// Runs SQL on the local MariaDB with the `mysql` client; tab-separated rows.
fn mysql(database: Option<&str>, statement: &str) -> Result<Vec<Vec<String>>> {
    let mut command = Command::new("mysql");
    command.args([
        "-h",
        MYSQL_HOST,
        "-P",
        &MYSQL_PORT.to_string(),
        "-u",
        "root",
        "-N",
        "-B",
    ]);
    if let Some(database) = database {
        command.arg(database);
    }
    let output = command
        .args(["-e", statement])
        .output()
        .context("could not run the mysql client")?;
    if !output.status.success() {
        bail!(
            "{statement}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect())
}
