//! Fault injection, storage side: the usage database deleted while running, made read-only
//! under the forwarder, and MariaDB "restarted" (every connection dropped, the port refusing,
//! then back). Clients must never notice; no outcome may be lost; `/health/usage-tracker` must
//! say what is going on. (A locked SQLite database is covered by `usage_storage.rs`.)

use crate::faults_common;
use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ccf_store::{status, UsageStore};
use ccf_testkit::{MockUpstream, TcpProxy};
use faults_common::{assert_completed_with_mock_usage, message, request_id, Rig};
use support::{endpoint_yaml, messages_sent, WAIT};

/// Sends `count` normal requests; every client gets its 200; returns the request ids.
async fn traffic(rig: &Rig, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for index in 0..count {
        let answer = rig.forwarder.messages(message(index % 2 == 1), &[]).await;
        assert_eq!(answer.status, 200, "clients never notice the database");
        ids.push(request_id(&answer));
    }
    ids
}

/// Polls `/health/usage-tracker` until `wanted` holds for (status code, JSON).
async fn wait_for_usage_health(
    rig: &Rig,
    what: &str,
    wanted: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let (code, json) = rig.usage_health().await;
        if wanted(code, &json) {
            return json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage tracker never {what}: {code} {json}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unhealthy_with_backlog(code: u16, json: &serde_json::Value) -> bool {
    code == 503 && json["status"] == "unhealthy" && json["backlog"].as_u64().unwrap_or(0) >= 1
}

fn healthy_and_drained(code: u16, json: &serde_json::Value) -> bool {
    code == 200 && json["status"] == "healthy" && json["backlog"] == 0
}

/// Opens the SQLite file at `path` afresh (not through the app's connections).
async fn open_sqlite(path: &Path) -> Arc<dyn UsageStore> {
    Arc::new(
        ccf_store_sqlite::SqliteStore::open(path, ccf_store_sqlite::SqliteOptions::default())
            .await
            .expect("open the database file"),
    )
}

#[tokio::test]
async fn a_database_deleted_while_running_is_recreated_and_no_outcome_is_lost() {
    let upstream = MockUpstream::start().await;
    let rig = Rig::in_front_of(&upstream.url(), "", "").await;
    rig.serves_normally().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = rig.db_path.clone().into_os_string();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!("remove {name:?}: {error}"),
        }
    }
    let ids = traffic(&rig, 3).await;
    assert_eq!(messages_sent(&upstream), 4);
    // The outcomes after the deletion end up in a database at the configured path, read
    // through a connection of its own.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let mut found = 0;
        if rig.db_path.exists() {
            let store = open_sqlite(&rig.db_path).await;
            for id in &ids {
                if let Ok(Some(row)) = store.get_request(id).await {
                    if status::is_terminal(&row.record.status) {
                        assert_completed_with_mock_usage(&row);
                        found += 1;
                    }
                }
            }
        }
        if found == ids.len() {
            break;
        }
        let (code, health) = rig.usage_health().await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "outcomes written after the deletion are lost: {found} of {} in {} (health {code} {health})",
            ids.len(),
            rig.db_path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_usage_health(&rig, "healthy", healthy_and_drained).await;
    // Still serving, still recording.
    let answer = rig.forwarder.messages(message(false), &[]).await;
    assert_eq!(answer.status, 200);
    let id = request_id(&answer);
    let store = open_sqlite(&rig.db_path).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(row)) = store.get_request(&id).await {
            if status::is_terminal(&row.record.status) {
                assert_completed_with_mock_usage(&row);
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Set (to `1`) in the child process that runs the read-only scenario inside a private mount
/// namespace: there the test mounts its own tmpfs, which no other process sees.
const IN_PRIVATE_MOUNT_NAMESPACE: &str = "CC_FORWARDER_TEST_IN_PRIVATE_MOUNT_NAMESPACE";

/// The read-only scenario's name as libtest knows it in this binary (`faults_storage::...`): the
/// child runs exactly this test.
const READ_ONLY_TEST: &str =
    "faults_storage::a_read_only_database_is_refused_at_start_with_a_clear_error_and_no_row_is_lost";

/// Whether this process runs as uid 0 (for whom file modes stop nothing).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A folder that can be made read-only: a tmpfs remounted read-only (inside the private mount
/// namespace of the child process, the one way that stops root), or file modes (which stop a
/// user other than root). Linux refuses to remount a filesystem read-only while a file on it is
/// open for writing, so the forwarder is stopped before and started on the read-only database.
enum ReadOnlyFolder {
    Mounted(std::path::PathBuf),
    Modes(std::path::PathBuf),
}

impl ReadOnlyFolder {
    /// A tmpfs mounted on `path`; only called in the private mount namespace.
    fn mount(path: &Path) -> ReadOnlyFolder {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "ccf-faults"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount a tmpfs in the private mount namespace: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        ReadOnlyFolder::Mounted(path.to_path_buf())
    }

    fn set_read_only(&self, read_only: bool) {
        match self {
            ReadOnlyFolder::Mounted(path) => {
                let mode = if read_only {
                    "remount,ro"
                } else {
                    "remount,rw"
                };
                // The stopped forwarder's database handles close on their own threads a moment
                // later; until then the kernel refuses a read-only remount as busy.
                let deadline = std::time::Instant::now() + WAIT;
                loop {
                    let output = Command::new("mount")
                        .args(["-o", mode])
                        .arg(path)
                        .output()
                        .expect("mount");
                    if output.status.success() {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{mode}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            ReadOnlyFolder::Modes(path) => {
                use std::os::unix::fs::PermissionsExt;
                let (file, folder) = if read_only {
                    (0o444, 0o555)
                } else {
                    (0o644, 0o755)
                };
                for entry in std::fs::read_dir(path).expect("list").flatten() {
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(file))
                        .expect("chmod");
                }
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(folder))
                    .expect("chmod");
            }
        }
    }
}

impl Drop for ReadOnlyFolder {
    fn drop(&mut self) {
        match self {
            // The namespace dies with the child anyway; unmounting first lets the temp folder
            // below be removed.
            ReadOnlyFolder::Mounted(path) => {
                let _ = Command::new("umount").arg("-l").arg(&*path).output();
            }
            ReadOnlyFolder::Modes(_) => self.set_read_only(false),
        }
    }
}

/// Root: runs this same test again in a child process inside a new private mount namespace
/// (`unshare --mount --propagation private`), where mounting a tmpfs and remounting it read-only
/// touches nothing outside; panics when the child's test fails. `Err` with the reason when the
/// namespace cannot be made (no `unshare`, no `CAP_SYS_ADMIN`).
async fn run_in_private_mount_namespace() -> Result<(), String> {
    let test_binary = std::env::current_exe().map_err(|error| format!("test binary: {error}"))?;
    let namespace_works = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
        .map_err(|error| format!("run unshare: {error}"))?;
    if !namespace_works.status.success() {
        return Err(format!(
            "unshare --mount failed: {}",
            String::from_utf8_lossy(&namespace_works.stderr).trim()
        ));
    }
    let child = tokio::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&test_binary)
        .args([READ_ONLY_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_PRIVATE_MOUNT_NAMESPACE, "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT * 10, child)
        .await
        .expect("the child test finishes")
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Prefixed, so that no line of it reads as this process's own `test result:` line.
    for line in stdout.lines().chain(stderr.lines()) {
        eprintln!("private mount namespace | {line}");
    }
    // Exactly this one test ran there and passed: a filter that matched nothing would also
    // exit 0.
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the read-only scenario failed in its private mount namespace ({})",
        output.status
    );
    Ok(())
}

#[tokio::test]
async fn a_read_only_database_is_refused_at_start_with_a_clear_error_and_no_row_is_lost() {
    let in_private_mount_namespace = std::env::var_os(IN_PRIVATE_MOUNT_NAMESPACE).is_some();
    if !in_private_mount_namespace && running_as_root() {
        if let Err(reason) = run_in_private_mount_namespace().await {
            ccf_testkit::skip_unless_ci(
                READ_ONLY_TEST,
                &format!(
                    "root needs a private mount namespace to make a folder read-only: {reason}"
                ),
            );
        }
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let read_only = if in_private_mount_namespace {
        ReadOnlyFolder::mount(folder.path())
    } else {
        ReadOnlyFolder::Modes(folder.path().to_path_buf())
    };
    let upstream = MockUpstream::start().await;
    let db_path = folder.path().join("usage.db");
    let database = format!("  database_path: {}\n", db_path.display());
    let endpoints = [endpoint_yaml("mock", &upstream.url(), "")];
    let mut rig = Rig::start_with_database("", &database, &endpoints).await;
    rig.db_path = db_path.clone();
    let before = rig.serves_normally().await;
    rig.forwarder.stop().await;

    read_only.set_read_only(true);
    // The folder really is read-only for this process: nothing in it can be created or opened
    // for writing (else the refusal below would prove nothing).
    let probe = std::fs::write(folder.path().join("probe"), b"written");
    assert!(probe.is_err(), "a new file could be written in the folder");
    let writable = std::fs::OpenOptions::new().append(true).open(&db_path);
    assert!(
        writable.is_err(),
        "the database file could be opened for writing"
    );
    let refused = ccf_app::App::bind(faults_common::rig_config("", &database, &endpoints)).await;
    let error = match refused {
        Ok(_) => panic!("a forwarder must not start on a database it cannot write"),
        Err(error) => {
            let mut chain = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                chain.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            chain
        }
    };
    eprintln!("read-only database: {error}");
    // The chain says which store and why (it does not name the file yet: see docs/operations.md).
    assert!(
        (error.starts_with("usage store: usage database unavailable")
            && error.contains("unable to open database file"))
            || (error.starts_with("usage store: usage database read-only")
                && error.contains(&db_path.display().to_string())),
        "the error says what is wrong: {error}"
    );
    assert_eq!(messages_sent(&upstream), 1, "nothing was forwarded");

    // Writable again: it starts, the earlier row is intact, and it records again.
    read_only.set_read_only(false);
    let mut rig = Rig::start_with_database("", &database, &endpoints).await;
    rig.db_path = db_path;
    let kept = rig.row(&before.record.request_id).await;
    assert_completed_with_mock_usage(&kept);
    rig.serves_normally().await;
    assert_eq!(rig.final_rows(2).await.len(), 2);
    rig.forwarder.stop().await;
    drop(read_only);
}

#[tokio::test]
async fn a_mariadb_restart_loses_no_outcome() {
    let upstream = MockUpstream::start().await;
    let mariadb: SocketAddr = "127.0.0.1:3306".parse().expect("address");
    let proxy = TcpProxy::start("127.0.0.1:0".parse().expect("address"), mariadb).await;
    let own = crate::support::mariadb::OwnDatabase::create("restart").await;
    let database = own.usage_yaml(proxy.addr().port());
    let rig =
        Rig::start_with_database("", &database, &[endpoint_yaml("mock", &upstream.url(), "")])
            .await;
    rig.serves_normally().await;

    // "Restart": every connection dropped, the port refusing.
    let address = proxy.stop().await;
    let ids = traffic(&rig, 3).await;
    let health = wait_for_usage_health(&rig, "unhealthy", unhealthy_with_backlog).await;
    assert!(health["last_error"].is_string(), "{health}");

    // Back on the same port: the backlog drains and every outcome is there.
    let proxy = TcpProxy::start(address, mariadb).await;
    wait_for_usage_health(&rig, "healthy", healthy_and_drained).await;
    for id in &ids {
        assert_completed_with_mock_usage(&rig.row(id).await);
    }
    assert_eq!(messages_sent(&upstream), 4);
    rig.serves_normally().await;
    rig.forwarder.stop().await;
    proxy.stop().await;
}
