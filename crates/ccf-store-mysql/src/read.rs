//! Listing, stats and summary, filtering and aggregating in SQL.

use std::sync::LazyLock;

use ccf_store::columns::REQUEST_ROW;
use ccf_store::{
    status, Aggregate, Bucket, Cost, LegacyZone, Page, RequestFilter, RequestQuery, RequestRow,
    Stats, StoreError, SummaryQuery, SummaryRow,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Row, Value};

use crate::convert::{
    as_f64, as_i64, as_text, at, datetime, mysql_error, text, u64_or_zero, MysqlRow,
};

/// The SELECT list of a stored row ([`REQUEST_ROW`]).
static ROW_COLUMNS: LazyLock<String> = LazyLock::new(|| REQUEST_ROW.join(", "));

fn params(values: Vec<Value>) -> Params {
    if values.is_empty() {
        Params::Empty
    } else {
        Params::Positional(values)
    }
}

fn row_to_request(row: &Row, zone: LegacyZone) -> RequestRow {
    RequestRow::from_columns(&MysqlRow { row, zone })
}

fn where_clause(filter: &RequestFilter) -> (String, Vec<Value>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(start) = filter.start {
        clauses.push("start_time >= ?".into());
        values.push(datetime(start));
    }
    if let Some(end) = filter.end {
        clauses.push("start_time <= ?".into());
        values.push(datetime(end));
    }
    if let Some(status_filter) = filter.status.as_deref().filter(|s| !s.is_empty()) {
        let statuses = status::filter_values(status_filter);
        clauses.push(format!(
            "status IN ({})",
            vec!["?"; statuses.len()].join(", ")
        ));
        values.extend(statuses.into_iter().map(text));
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
            values.push(text(value));
        }
    }
    if clauses.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", clauses.join(" AND ")), values)
    }
}

pub(crate) async fn list_requests(
    conn: &mut Conn,
    query: &RequestQuery,
    zone: LegacyZone,
) -> Result<Page<RequestRow>, StoreError> {
    let (where_sql, mut values) = where_clause(&query.filter);
    let total: Option<i64> = conn
        .exec_first(
            format!("SELECT COUNT(*) FROM request_logs{where_sql}"),
            params(values.clone()),
        )
        .await
        .map_err(mysql_error)?;
    let limit = query.effective_limit();
    values.push(Value::UInt(u64::from(limit)));
    values.push(Value::UInt(query.offset));
    let columns = ROW_COLUMNS.as_str();
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT {columns} FROM request_logs{where_sql} \
                 ORDER BY start_time DESC, id DESC LIMIT ? OFFSET ?"
            ),
            params(values),
        )
        .await
        .map_err(mysql_error)?;
    Ok(Page {
        items: rows.iter().map(|row| row_to_request(row, zone)).collect(),
        total: total.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
        limit,
        offset: query.offset,
    })
}

pub(crate) async fn get_request(
    conn: &mut Conn,
    request_id: &str,
    zone: LegacyZone,
) -> Result<Option<RequestRow>, StoreError> {
    let columns = ROW_COLUMNS.as_str();
    let row: Option<Row> = conn
        .exec_first(
            format!("SELECT {columns} FROM request_logs WHERE request_id = ?"),
            (request_id,),
        )
        .await
        .map_err(mysql_error)?;
    Ok(row.map(|row| row_to_request(&row, zone)))
}

pub(crate) async fn scan_requests(
    conn: &mut Conn,
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
    values.push(Value::Int(after_id));
    values.push(Value::UInt(u64::from(limit.max(1))));
    let columns = ROW_COLUMNS.as_str();
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT {columns} FROM request_logs{where_sql}{joiner} id > ? ORDER BY id LIMIT ?"
            ),
            params(values),
        )
        .await
        .map_err(mysql_error)?;
    Ok(rows.iter().map(|row| row_to_request(row, zone)).collect())
}

fn aggregate_columns() -> String {
    let failed = status::FAILED_FAMILY
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "COUNT(*), COALESCE(SUM(status = 'completed'), 0), \
         COALESCE(SUM(status IN ({failed})), 0), COALESCE(SUM(status = 'cancelled'), 0), \
         AVG(duration_ms), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), \
         COALESCE(SUM(cache_creation_tokens), 0), COALESCE(SUM(cache_read_tokens), 0), \
         COALESCE(SUM(total_cost_nano_usd), 0)"
    )
}

fn aggregate_from(row: &Row, first: usize) -> Aggregate {
    let count = |index: usize| u64_or_zero(at(row, first + index));
    Aggregate {
        request_count: count(0),
        success_count: count(1),
        failed_count: count(2),
        cancelled_count: count(3),
        avg_duration_ms: as_f64(at(row, first + 4)),
        input_tokens: count(5),
        output_tokens: count(6),
        cache_creation_tokens: count(7),
        cache_read_tokens: count(8),
        total_cost_nano_usd: as_i64(at(row, first + 9)).unwrap_or(0),
        ..Aggregate::default()
    }
    .finish()
}

async fn buckets(
    conn: &mut Conn,
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
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT {key_sql} AS k, {} FROM request_logs{where_sql} GROUP BY k ORDER BY {order}",
                aggregate_columns()
            ),
            params(values.to_vec()),
        )
        .await
        .map_err(mysql_error)?;
    Ok(rows
        .iter()
        .map(|row| Bucket {
            key: as_text(at(row, 0)).unwrap_or_default(),
            aggregate: aggregate_from(row, 1),
        })
        .collect())
}

pub(crate) async fn stats(conn: &mut Conn, filter: &RequestFilter) -> Result<Stats, StoreError> {
    let (where_sql, values) = where_clause(filter);
    let totals_row: Option<Row> = conn
        .exec_first(
            format!(
                "SELECT {} FROM request_logs{where_sql}",
                aggregate_columns()
            ),
            params(values.clone()),
        )
        .await
        .map_err(mysql_error)?;
    let totals = totals_row
        .map(|row| aggregate_from(&row, 0))
        .unwrap_or_default();
    let with_duration: Option<i64> = conn
        .exec_first(
            format!("SELECT COUNT(duration_ms) FROM request_logs{where_sql}"),
            params(values.clone()),
        )
        .await
        .map_err(mysql_error)?;
    let with_duration = with_duration.unwrap_or(0);
    let joiner = if where_sql.is_empty() {
        " WHERE"
    } else {
        " AND"
    };
    let p95_duration_ms = if with_duration > 0 {
        // Nearest rank: the ceil(0.95 n)-th smallest duration.
        let rank = (with_duration * 95 + 99) / 100;
        let mut p95_values = values.clone();
        p95_values.push(Value::Int(rank - 1));
        let value: Option<i64> = conn
            .exec_first(
                format!(
                    "SELECT duration_ms FROM request_logs{where_sql}{joiner} duration_ms IS NOT NULL \
                     ORDER BY duration_ms LIMIT 1 OFFSET ?"
                ),
                params(p95_values),
            )
            .await
            .map_err(mysql_error)?;
        value.and_then(|d| u64::try_from(d).ok())
    } else {
        None
    };
    Ok(Stats {
        totals,
        p95_duration_ms,
        by_model: buckets(conn, "COALESCE(model_name, '')", &where_sql, &values, false).await?,
        by_endpoint: buckets(
            conn,
            "COALESCE(endpoint_name, '')",
            &where_sql,
            &values,
            false,
        )
        .await?,
        by_group: buckets(conn, "COALESCE(group_name, '')", &where_sql, &values, false).await?,
        by_api_key: buckets(
            conn,
            "COALESCE(api_key_name, '')",
            &where_sql,
            &values,
            false,
        )
        .await?,
        by_day: buckets(
            conn,
            "DATE_FORMAT(start_time, '%Y-%m-%d')",
            &where_sql,
            &values,
            true,
        )
        .await?,
        by_hour: buckets(
            conn,
            "DATE_FORMAT(start_time, '%Y-%m-%dT%H:00:00Z')",
            &where_sql,
            &values,
            true,
        )
        .await?,
    })
}

pub(crate) async fn summary(
    conn: &mut Conn,
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
            values.push(text(value));
        }
    }
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT DATE_FORMAT(date, '%Y-%m-%d'), model_name, endpoint_name, \
                 COALESCE(group_name, ''), request_count, success_count, error_count, \
                 total_input_tokens, total_output_tokens, total_cache_creation_tokens, \
                 total_cache_read_tokens, total_cost_nano_usd, total_duration_ms, avg_duration_ms \
                 FROM usage_summary{where_sql} ORDER BY date, model_name, endpoint_name, group_name"
            ),
            params(values),
        )
        .await
        .map_err(mysql_error)?;
    Ok(rows
        .iter()
        .map(|row| {
            let int = |index: usize| as_i64(at(row, index)).unwrap_or(0);
            let nano = int(11);
            SummaryRow {
                date: as_text(at(row, 0)).unwrap_or_default(),
                model_name: as_text(at(row, 1)).unwrap_or_default(),
                endpoint_name: as_text(at(row, 2)).unwrap_or_default(),
                group_name: as_text(at(row, 3)).unwrap_or_default(),
                request_count: int(4),
                success_count: int(5),
                error_count: int(6),
                total_input_tokens: int(7),
                total_output_tokens: int(8),
                total_cache_creation_tokens: int(9),
                total_cache_read_tokens: int(10),
                total_cost_nano_usd: nano,
                total_cost_usd: Cost::usd(nano),
                total_duration_ms: int(12),
                avg_duration_ms: as_f64(at(row, 13)).unwrap_or(0.0),
            }
        })
        .collect())
}
