//! Listing, stats and summary, filtering and aggregating in SQL.

use std::sync::LazyLock;
use std::time::SystemTime;

use ccf_store::columns::REQUEST_ROW;
use ccf_store::stats::{
    compose_stats, hour_key, p95, plan_stats, KeySummarySlice, RawSlice, StatsReadings,
    SummarySlice, Sums, TimeSpan, P95_SAMPLE, QUARTER_HOUR_SECS,
};
use ccf_store::{
    status, Cost, DayZone, LegacyZone, Page, RequestFilter, RequestQuery, RequestRow, Stats,
    StoreError, SummaryQuery, SummaryRow,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Row, Value};

use crate::convert::{as_f64, as_i64, as_text, at, datetime, mysql_error, text, MysqlRow};

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

fn failed_list() -> String {
    status::FAILED_FAMILY
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `WHERE …` for `filter`'s columns with the time range replaced by `span` (and only the rows
/// the summary does not count when `unsummarized`, found through `(summarized, start_time)`).
fn span_clause(filter: &RequestFilter, span: TimeSpan, unsummarized: bool) -> (String, Vec<Value>) {
    let (where_sql, values) = where_clause(&RequestFilter {
        start: span.start,
        end: span.end,
        ..filter.clone()
    });
    if !unsummarized {
        return (where_sql, values);
    }
    let mut all = vec![Value::Int(0)];
    all.extend(values);
    let sql = match where_sql.strip_prefix(" WHERE ") {
        Some(clauses) => format!(" WHERE summarized = ? AND {clauses}"),
        None => " WHERE summarized = ?".to_string(),
    };
    (sql, all)
}

/// [`Sums`] from 11 columns starting at `first` (requests, completed, failed, cancelled,
/// duration sum and count, four token counts, cost).
fn sums_from(row: &Row, first: usize) -> Sums {
    let int = |index: usize| as_i64(at(row, first + index)).unwrap_or(0);
    Sums {
        request_count: int(0),
        success_count: int(1),
        failed_count: int(2),
        cancelled_count: int(3),
        duration_sum_ms: int(4),
        duration_count: int(5),
        input_tokens: int(6),
        output_tokens: int(7),
        cache_creation_tokens: int(8),
        cache_read_tokens: int(9),
        cost_nano_usd: int(10),
    }
}

/// Raw rows in `span` grouped by UTC quarter-hour, model, endpoint, group and API key.
async fn raw_slices(
    conn: &mut Conn,
    filter: &RequestFilter,
    span: TimeSpan,
    unsummarized: bool,
) -> Result<Vec<RawSlice>, StoreError> {
    let (where_sql, values) = span_clause(filter, span, unsummarized);
    let dimensions = "COALESCE(model_name, ''), COALESCE(endpoint_name, ''), \
                      COALESCE(group_name, ''), COALESCE(api_key_name, '')";
    // Sessions run in UTC, so UNIX_TIMESTAMP reads the stored UTC DATETIME as it is.
    let sql = format!(
        "SELECT FLOOR(UNIX_TIMESTAMP(start_time) / {QUARTER_HOUR_SECS}), {dimensions}, \
         COUNT(*), COALESCE(SUM(status = 'completed'), 0), \
         COALESCE(SUM(status IN ({failed})), 0), COALESCE(SUM(status = 'cancelled'), 0), \
         COALESCE(SUM(duration_ms), 0), COUNT(duration_ms), \
         COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), \
         COALESCE(SUM(cache_creation_tokens), 0), COALESCE(SUM(cache_read_tokens), 0), \
         COALESCE(SUM(total_cost_nano_usd), 0) \
         FROM request_logs{where_sql} GROUP BY 1, 2, 3, 4, 5",
        failed = failed_list()
    );
    let rows: Vec<Row> = conn.exec(sql, params(values)).await.map_err(mysql_error)?;
    Ok(rows
        .iter()
        .map(|row| RawSlice {
            quarter_hour: as_i64(at(row, 0)).unwrap_or(0),
            model: as_text(at(row, 1)).unwrap_or_default(),
            endpoint: as_text(at(row, 2)).unwrap_or_default(),
            group: as_text(at(row, 3)).unwrap_or_default(),
            api_key: as_text(at(row, 4)).unwrap_or_default(),
            sums: sums_from(row, 5),
        })
        .collect())
}

/// `usage_summary` rows of the days `first..=last` (`""`: from the first) matching the
/// filter's model, endpoint and group.
async fn summary_slices(
    conn: &mut Conn,
    filter: &RequestFilter,
    first: &str,
    last: &str,
) -> Result<Vec<SummarySlice>, StoreError> {
    let mut clauses = vec!["date <= ?".to_string()];
    let mut values = vec![text(last)];
    if !first.is_empty() {
        clauses.push("date >= ?".into());
        values.push(text(first));
    }
    named_summary_slices(conn, filter, "usage_summary", clauses, values, |row| {
        as_text(at(row, 0)).unwrap_or_default()
    })
    .await
}

/// `usage_hourly_summary` rows of the hours starting at `hours` (Unix seconds) matching the
/// filter's model, endpoint and group, their period the hourly bucket in `zone`.
async fn hourly_summary_slices(
    conn: &mut Conn,
    filter: &RequestFilter,
    hours: &[i64],
    zone: DayZone,
) -> Result<Vec<SummarySlice>, StoreError> {
    let clauses = vec![format!(
        "hour_start IN ({})",
        vec!["?"; hours.len()].join(", ")
    )];
    let values = hours.iter().map(|hour| Value::Int(*hour)).collect();
    named_summary_slices(
        conn,
        filter,
        "usage_hourly_summary",
        clauses,
        values,
        |row| hour_key(zone, as_i64(at(row, 0)).unwrap_or(0)),
    )
    .await
}

/// Rows of `table` (`usage_summary` or `usage_hourly_summary`) matching `clauses` and the
/// filter's model, endpoint and group; `period` names a row's day or hour.
async fn named_summary_slices(
    conn: &mut Conn,
    filter: &RequestFilter,
    table: &str,
    mut clauses: Vec<String>,
    mut values: Vec<Value>,
    period: impl Fn(&Row) -> String,
) -> Result<Vec<SummarySlice>, StoreError> {
    let key = if table == "usage_summary" {
        "DATE_FORMAT(date, '%Y-%m-%d')"
    } else {
        "hour_start"
    };
    for (column, value) in [
        ("model_name", &filter.model),
        ("endpoint_name", &filter.endpoint),
        ("COALESCE(group_name, '')", &filter.group),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            clauses.push(format!("{column} = ?"));
            values.push(text(value));
        }
    }
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT {key}, model_name, endpoint_name, \
                 COALESCE(group_name, ''), request_count, success_count, error_count, \
                 cancelled_count, total_duration_ms, duration_count, total_input_tokens, \
                 total_output_tokens, total_cache_creation_tokens, total_cache_read_tokens, \
                 total_cost_nano_usd FROM {table} WHERE {}",
                clauses.join(" AND ")
            ),
            params(values),
        )
        .await
        .map_err(mysql_error)?;
    Ok(rows
        .iter()
        .map(|row| SummarySlice {
            date: period(row),
            model: as_text(at(row, 1)).unwrap_or_default(),
            endpoint: as_text(at(row, 2)).unwrap_or_default(),
            group: as_text(at(row, 3)).unwrap_or_default(),
            sums: sums_from(row, 4),
        })
        .collect())
}

/// The p95 of the latest [`P95_SAMPLE`] rows of the range that have a duration.
async fn p95_sample(conn: &mut Conn, filter: &RequestFilter) -> Result<Option<u64>, StoreError> {
    let (where_sql, mut values) = where_clause(filter);
    let joiner = if where_sql.is_empty() {
        " WHERE"
    } else {
        " AND"
    };
    values.push(Value::Int(i64::from(P95_SAMPLE)));
    let durations: Vec<Option<i64>> = conn
        .exec(
            format!(
                "SELECT duration_ms FROM request_logs{where_sql}{joiner} duration_ms IS NOT NULL \
                 ORDER BY start_time DESC LIMIT ?"
            ),
            params(values),
        )
        .await
        .map_err(mysql_error)?;
    Ok(p95(durations
        .into_iter()
        .flatten()
        .map(|d| u64::try_from(d).unwrap_or(0))
        .collect()))
}

/// `usage_key_summary` rows of the days `first..=last` (`""`: from the first).
async fn key_summary_slices(
    conn: &mut Conn,
    first: &str,
    last: &str,
) -> Result<Vec<KeySummarySlice>, StoreError> {
    let (from_first, mut values) = if first.is_empty() {
        ("", Vec::new())
    } else {
        (" AND date >= ?", vec![text(first)])
    };
    values.push(text(last));
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT DATE_FORMAT(date, '%Y-%m-%d'), api_key_name, request_count, \
                 success_count, error_count, cancelled_count, total_duration_ms, duration_count, \
                 total_input_tokens, total_output_tokens, total_cache_creation_tokens, \
                 total_cache_read_tokens, total_cost_nano_usd FROM usage_key_summary \
                 WHERE 1 = 1{from_first} AND date <= ?"
            ),
            params(values),
        )
        .await
        .map_err(mysql_error)?;
    Ok(rows
        .iter()
        .map(|row| KeySummarySlice {
            date: as_text(at(row, 0)).unwrap_or_default(),
            api_key: as_text(at(row, 1)).unwrap_or_default(),
            sums: sums_from(row, 2),
        })
        .collect())
}

/// `usage_hourly_key_summary` rows of the hours starting at `hours` (Unix seconds), their
/// period the hourly bucket in `zone`.
async fn hourly_key_summary_slices(
    conn: &mut Conn,
    hours: &[i64],
    zone: DayZone,
) -> Result<Vec<KeySummarySlice>, StoreError> {
    let values: Vec<Value> = hours.iter().map(|hour| Value::Int(*hour)).collect();
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT hour_start, api_key_name, request_count, \
                 success_count, error_count, cancelled_count, total_duration_ms, duration_count, \
                 total_input_tokens, total_output_tokens, total_cache_creation_tokens, \
                 total_cache_read_tokens, total_cost_nano_usd FROM usage_hourly_key_summary \
                 WHERE hour_start IN ({})",
                vec!["?"; hours.len()].join(", ")
            ),
            params(values),
        )
        .await
        .map_err(mysql_error)?;
    Ok(rows
        .iter()
        .map(|row| KeySummarySlice {
            date: hour_key(zone, as_i64(at(row, 0)).unwrap_or(0)),
            api_key: as_text(at(row, 1)).unwrap_or_default(),
            sums: sums_from(row, 2),
        })
        .collect())
}

/// Stats as [`ccf_store::stats`] plans them: whole days of `day_zone` from `usage_summary`
/// and `usage_key_summary`, their whole hours from the hourly summaries, the rest from raw
/// rows.
pub(crate) async fn stats(
    conn: &mut Conn,
    filter: &RequestFilter,
    day_zone: DayZone,
) -> Result<Stats, StoreError> {
    let plan = plan_stats(filter, day_zone, SystemTime::now());
    let mut readings = StatsReadings {
        hours_from: Some(plan.hours_from),
        ..StatsReadings::default()
    };
    if let Some((first, last)) = &plan.summary_days {
        readings.summary = summary_slices(conn, filter, first, last).await?;
        if !plan.api_keys_from_raw_rows {
            readings.key_summary = key_summary_slices(conn, first, last).await?;
        }
    }
    if !plan.summary_hours.is_empty() {
        readings.hour_summary =
            hourly_summary_slices(conn, filter, &plan.summary_hours, day_zone).await?;
        if !plan.api_keys_from_raw_rows {
            readings.hour_key_summary =
                hourly_key_summary_slices(conn, &plan.summary_hours, day_zone).await?;
        }
    }
    if let Some(span) = plan.unsummarized {
        readings
            .raw
            .extend(raw_slices(conn, filter, span, true).await?);
    }
    for span in &plan.raw {
        readings
            .raw
            .extend(raw_slices(conn, filter, *span, false).await?);
    }
    if plan.api_keys_from_raw_rows {
        let whole = TimeSpan {
            start: filter.start,
            end: filter.end,
        };
        readings.api_keys = Some(raw_slices(conn, filter, whole, false).await?);
    }
    readings.p95_duration_ms = p95_sample(conn, filter).await?;
    Ok(compose_stats(day_zone, &readings))
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
