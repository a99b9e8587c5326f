//! [`SharedState`] on the `cluster_state` table (migration 4): settings shared by every forwarder
//! instance using this database, written compare-and-set on a version number.

use std::time::SystemTime;

use ccf_store::{ApplyOutcome, SharedChange, SharedSetting, StoreError};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use crate::convert::{as_text, as_time, at, datetime, int, mysql_error, text, u64_or_zero};
use crate::STORED_ZONE;

const COLUMNS: &str = "scope, state, version, updated_by, updated_at";

fn setting(row: &Row) -> SharedSetting {
    SharedSetting {
        scope: as_text(at(row, 0)).unwrap_or_default(),
        state: as_text(at(row, 1)).unwrap_or_default(),
        version: u64_or_zero(at(row, 2)),
        updated_by: as_text(at(row, 3)).unwrap_or_default(),
        updated_at: as_time(at(row, 4), STORED_ZONE),
    }
}

pub(crate) async fn load_all(conn: &mut Conn) -> Result<Vec<SharedSetting>, StoreError> {
    let rows: Vec<Row> = conn
        .query(format!(
            "SELECT {COLUMNS} FROM cluster_state ORDER BY updated_at, scope"
        ))
        .await
        .map_err(mysql_error)?;
    Ok(rows.iter().map(setting).collect())
}

pub(crate) async fn load(
    conn: &mut Conn,
    scope: &str,
) -> Result<Option<SharedSetting>, StoreError> {
    let row: Option<Row> = conn
        .exec_first(
            format!("SELECT {COLUMNS} FROM cluster_state WHERE scope = ?"),
            (text(scope),),
        )
        .await
        .map_err(mysql_error)?;
    Ok(row.as_ref().map(setting))
}

pub(crate) async fn apply(
    conn: &mut Conn,
    change: &SharedChange,
    expected_version: u64,
) -> Result<ApplyOutcome, StoreError> {
    let now = datetime(SystemTime::now());
    if expected_version == 0 {
        let result = conn
            .exec_drop(
                "INSERT INTO cluster_state (scope, state, version, updated_by, updated_at) \
                 VALUES (?, ?, 1, ?, ?)",
                (
                    text(&change.scope),
                    text(&change.state),
                    text(&change.updated_by),
                    now,
                ),
            )
            .await;
        return match result {
            Ok(()) => Ok(ApplyOutcome::Applied { version: 1 }),
            // 1062: duplicate key, another instance created the scope first.
            Err(mysql_async::Error::Server(error)) if error.code == 1062 => {
                Ok(ApplyOutcome::Conflict)
            }
            Err(error) => Err(mysql_error(error)),
        };
    }
    conn.exec_drop(
        "UPDATE cluster_state SET state = ?, version = version + 1, updated_by = ?, \
         updated_at = ? WHERE scope = ? AND version = ?",
        (
            text(&change.state),
            text(&change.updated_by),
            now,
            text(&change.scope),
            int(expected_version),
        ),
    )
    .await
    .map_err(mysql_error)?;
    // `version` always changes, so one affected row means the compare-and-set succeeded.
    if conn.affected_rows() == 1 {
        Ok(ApplyOutcome::Applied {
            version: expected_version.saturating_add(1),
        })
    } else {
        Ok(ApplyOutcome::Conflict)
    }
}
