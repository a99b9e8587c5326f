//! Reader-pool queries: listing, stats and summary, all filtering and aggregating in SQL.

use std::sync::LazyLock;

use ccf_store::columns::REQUEST_ROW;
use ccf_store::time::format_timestamp;
use ccf_store::{
    status, Aggregate, Bucket, Cost, LegacyZone, Page, RequestFilter, RequestQuery, RequestRow,
    Stats, StoreError, SummaryQuery, SummaryRow,
};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, Row};

use crate::convert::{as_f64, as_i64, as_text, sqlite_error, u64_or_zero, SqliteRow};

/// The SELECT list of a stored row ([`REQUEST_ROW`]).
static ROW_COLUMNS: LazyLock<String> = LazyLock::new(|| REQUEST_ROW.join(", "));

fn row_to_request(row: &Row<'_>, zone: LegacyZone) -> rusqlite::Result<RequestRow> {
    Ok(RequestRow::from_columns(&SqliteRow { row, zone }))
}

/// `WHERE …` (or empty) and its parameters.
fn where_clause(filter: &RequestFilter) -> (String, Vec<Value>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(start) = filter.start {
        clauses.push("start_time >= ?".into());
        values.push(Value::Text(format_timestamp(start)));
    }
    if let Some(end) = filter.end {
        clauses.push("start_time <= ?".into());
        values.push(Value::Text(format_timestamp(end)));
    }
    if let Some(status_filter) = filter.status.as_deref().filter(|s| !s.is_empty()) {
        let statuses = status::filter_values(status_filter);
        clauses.push(format!(
            "status IN ({})",
            vec!["?"; statuses.len()].join(", ")
        ));
        values.extend(statuses.into_iter().map(|s| Value::Text(s.to_string())));
    }
    for (column, value) in [
        ("model_name", &filter.model),
        ("endpoint_name", &filter.endpoint),
        ("group_name", &filter.group),
        ("request_id", &filter.request_id),
        ("instance_id", &filter.instance),
        ("api_key_name", &filter.api_key),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            clauses.push(format!("{column} = ?"));
            values.push(Value::Text(value.to_string()));
        }
    }
    if clauses.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", clauses.join(" AND ")), values)
    }
}

pub(crate) fn list_requests(
    connection: &Connection,
    query: &RequestQuery,
    zone: LegacyZone,
) -> Result<Page<RequestRow>, StoreError> {
    let (where_sql, mut values) = where_clause(&query.filter);
    let total: i64 = connection
        .prepare_cached(&format!("SELECT COUNT(*) FROM request_logs{where_sql}"))
        .and_then(|mut s| s.query_row(params_from_iter(values.iter()), |row| row.get(0)))
        .map_err(sqlite_error)?;
    let limit = query.effective_limit();
    values.push(Value::Integer(i64::from(limit)));
    values.push(Value::Integer(
        i64::try_from(query.offset).unwrap_or(i64::MAX),
    ));
    let columns = ROW_COLUMNS.as_str();
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {columns} FROM request_logs{where_sql} \
             ORDER BY start_time DESC, id DESC LIMIT ? OFFSET ?"
        ))
        .map_err(sqlite_error)?;
    let items = statement
        .query_map(params_from_iter(values.iter()), |row| {
            row_to_request(row, zone)
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(Page {
        items,
        total: u64::try_from(total).unwrap_or(0),
        limit,
        offset: query.offset,
    })
}

pub(crate) fn get_request(
    connection: &Connection,
    request_id: &str,
    zone: LegacyZone,
) -> Result<Option<RequestRow>, StoreError> {
    let columns = ROW_COLUMNS.as_str();
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {columns} FROM request_logs WHERE request_id = ?1"
        ))
        .map_err(sqlite_error)?;
    let mut rows = statement
        .query_map([request_id], |row| row_to_request(row, zone))
        .map_err(sqlite_error)?;
    rows.next().transpose().map_err(sqlite_error)
}

pub(crate) fn scan_requests(
    connection: &Connection,
    filter: &RequestFilter,
    after_id: i64,
    limit: u32,
    zone: LegacyZone,
) -> Result<Vec<RequestRow>, StoreError> {
    let (where_sql, mut values) = where_clause(filter);
    let joiner = if where_sql.is_empty() {
        " WHERE"
    } else {
        " AND"
    };
    values.push(Value::Integer(after_id));
    values.push(Value::Integer(i64::from(limit.max(1))));
    let columns = ROW_COLUMNS.as_str();
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {columns} FROM request_logs{where_sql}{joiner} id > ? ORDER BY id LIMIT ?"
        ))
        .map_err(sqlite_error)?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), |row| {
            row_to_request(row, zone)
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(rows)
}

fn failed_list() -> String {
    status::FAILED_FAMILY
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn aggregate_columns() -> String {
    format!(
        "COUNT(*), \
         COALESCE(SUM(status = 'completed'), 0), \
         COALESCE(SUM(status IN ({failed})), 0), \
         COALESCE(SUM(status = 'cancelled'), 0), \
         AVG(duration_ms), \
         COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), \
         COALESCE(SUM(cache_creation_tokens), 0), COALESCE(SUM(cache_read_tokens), 0), \
         COALESCE(SUM(total_cost_nano_usd), 0)",
        failed = failed_list()
    )
}

fn aggregate_from(row: &Row<'_>, first: usize) -> rusqlite::Result<Aggregate> {
    let count =
        |index: usize| -> rusqlite::Result<u64> { Ok(u64_or_zero(row.get_ref(first + index)?)) };
    Ok(Aggregate {
        request_count: count(0)?,
        success_count: count(1)?,
        failed_count: count(2)?,
        cancelled_count: count(3)?,
        avg_duration_ms: as_f64(row.get_ref(first + 4)?),
        input_tokens: count(5)?,
        output_tokens: count(6)?,
        cache_creation_tokens: count(7)?,
        cache_read_tokens: count(8)?,
        total_cost_nano_usd: as_i64(row.get_ref(first + 9)?).unwrap_or(0),
        ..Aggregate::default()
    }
    .finish())
}

fn buckets(
    connection: &Connection,
    key_sql: &str,
    where_sql: &str,
    values: &[Value],
    by_key: bool,
) -> Result<Vec<Bucket>, StoreError> {
    let order = if by_key {
        "k ASC"
    } else {
        "COUNT(*) DESC, k ASC"
    };
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {key_sql} AS k, {} FROM request_logs{where_sql} GROUP BY k ORDER BY {order}",
            aggregate_columns()
        ))
        .map_err(sqlite_error)?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), |row| {
            Ok(Bucket {
                key: as_text(row.get_ref(0)?).unwrap_or_default(),
                aggregate: aggregate_from(row, 1)?,
            })
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(rows)
}

pub(crate) fn stats(connection: &Connection, filter: &RequestFilter) -> Result<Stats, StoreError> {
    let (where_sql, values) = where_clause(filter);
    let totals = connection
        .prepare_cached(&format!(
            "SELECT {} FROM request_logs{where_sql}",
            aggregate_columns()
        ))
        .and_then(|mut s| {
            s.query_row(params_from_iter(values.iter()), |row| {
                aggregate_from(row, 0)
            })
        })
        .map_err(sqlite_error)?;
    // p95 by nearest rank: the ceil(0.95 n)-th smallest duration.
    let joiner = if where_sql.is_empty() {
        " WHERE"
    } else {
        " AND"
    };
    let with_duration: i64 = connection
        .prepare_cached(&format!(
            "SELECT COUNT(duration_ms) FROM request_logs{where_sql}"
        ))
        .and_then(|mut s| s.query_row(params_from_iter(values.iter()), |row| row.get(0)))
        .map_err(sqlite_error)?;
    let p95_duration_ms = if with_duration > 0 {
        let rank = (with_duration * 95 + 99) / 100;
        let mut p95_values = values.clone();
        p95_values.push(Value::Integer(rank - 1));
        connection
            .prepare_cached(&format!(
                "SELECT duration_ms FROM request_logs{where_sql}{joiner} duration_ms IS NOT NULL \
                 ORDER BY duration_ms LIMIT 1 OFFSET ?"
            ))
            .and_then(|mut s| {
                s.query_row(params_from_iter(p95_values.iter()), |row| {
                    row.get::<_, i64>(0)
                })
            })
            .map(|d| u64::try_from(d).ok())
            .map_err(sqlite_error)?
    } else {
        None
    };
    Ok(Stats {
        totals,
        p95_duration_ms,
        by_model: buckets(
            connection,
            "COALESCE(model_name, '')",
            &where_sql,
            &values,
            false,
        )?,
        by_endpoint: buckets(
            connection,
            "COALESCE(endpoint_name, '')",
            &where_sql,
            &values,
            false,
        )?,
        by_group: buckets(
            connection,
            "COALESCE(group_name, '')",
            &where_sql,
            &values,
            false,
        )?,
        by_api_key: buckets(
            connection,
            "COALESCE(api_key_name, '')",
            &where_sql,
            &values,
            false,
        )?,
        by_day: buckets(
            connection,
            "substr(start_time, 1, 10)",
            &where_sql,
            &values,
            true,
        )?,
        by_hour: buckets(
            connection,
            "substr(start_time, 1, 13) || ':00:00Z'",
            &where_sql,
            &values,
            true,
        )?,
    })
}

pub(crate) fn summary(
    connection: &Connection,
    query: &SummaryQuery,
) -> Result<Vec<SummaryRow>, StoreError> {
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    for (clause, value) in [
        ("date >= ?", &query.start_date),
        ("date <= ?", &query.end_date),
        ("model_name = ?", &query.model),
        ("endpoint_name = ?", &query.endpoint),
        ("COALESCE(group_name, '') = ?", &query.group),
    ] {
        if let Some(value) = value {
            clauses.push(clause);
            values.push(Value::Text(value.clone()));
        }
    }
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT date, model_name, endpoint_name, COALESCE(group_name, ''), request_count, \
             success_count, error_count, total_input_tokens, total_output_tokens, \
             total_cache_creation_tokens, total_cache_read_tokens, total_cost_nano_usd, \
             total_duration_ms, avg_duration_ms FROM usage_summary{where_sql} \
             ORDER BY date, model_name, endpoint_name, group_name"
        ))
        .map_err(sqlite_error)?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), |row| {
            let int = |index: usize| -> rusqlite::Result<i64> {
                Ok(as_i64(row.get_ref(index)?).unwrap_or(0))
            };
            let nano = int(11)?;
            Ok(SummaryRow {
                date: as_text(row.get_ref(0)?).unwrap_or_default(),
                model_name: as_text(row.get_ref(1)?).unwrap_or_default(),
                endpoint_name: as_text(row.get_ref(2)?).unwrap_or_default(),
                group_name: as_text(row.get_ref(3)?).unwrap_or_default(),
                request_count: int(4)?,
                success_count: int(5)?,
                error_count: int(6)?,
                total_input_tokens: int(7)?,
                total_output_tokens: int(8)?,
                total_cache_creation_tokens: int(9)?,
                total_cache_read_tokens: int(10)?,
                total_cost_nano_usd: nano,
                total_cost_usd: Cost::usd(nano),
                total_duration_ms: int(12)?,
                avg_duration_ms: as_f64(row.get_ref(13)?).unwrap_or(0.0),
            })
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(rows)
}
