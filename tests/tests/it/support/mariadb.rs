//! A MariaDB database of a test's own on the local server (127.0.0.1:3306, root, no password):
//! created empty with a unique name, dropped when the test ends, also when it panics.

use mysql_async::prelude::Queryable as _;

/// The server's admin connection URL (database `test` always exists).
const ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// An empty database of the calling test's own; dropped with this value.
pub struct OwnDatabase {
    /// The database's name.
    pub name: String,
}

impl OwnDatabase {
    /// Creates an empty database named after `test` plus a random suffix.
    pub async fn create(test: &str) -> OwnDatabase {
        let name = format!("ccf_it_{test}_{:08x}", rand::random::<u32>());
        let mut admin = mysql_async::Conn::from_url(ADMIN_URL)
            .await
            .expect("MariaDB at 127.0.0.1:3306 (root, empty password)");
        admin
            .query_drop(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ))
            .await
            .expect("create the test's database");
        let _ = admin.disconnect().await;
        OwnDatabase { name }
    }

    /// The `usage_tracking.database` YAML lines for this database on `port` (the server's own,
    /// or a proxy's in front of it).
    pub fn usage_yaml(&self, port: u16) -> String {
        format!(
            "  database:\n    type: mysql\n    host: 127.0.0.1\n    port: {port}\n    database: {}\n    username: root\n    password: \"\"\n",
            self.name
        )
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which must not block on itself: a thread of its
        // own with a small runtime drops the database and is waited for.
        let name = std::mem::take(&mut self.name);
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = mysql_async::Conn::from_url(ADMIN_URL).await {
                    let _ = admin
                        .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await;
                    let _ = admin.disconnect().await;
                }
            });
        });
        let _ = dropper.join();
    }
}
