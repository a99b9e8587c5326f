//! Reader-pool queries: listing, stats and summary, all filtering and aggregating in SQL.

use std::sync::LazyLock;
use std::time::SystemTime;

use ccf_store::columns::REQUEST_ROW;
use ccf_store::stats::{
    compose_stats, hour_key, p95, plan_stats, KeySummarySlice, RawSlice, StatsReadings,
    SummarySlice, Sums, TimeSpan, P95_SAMPLE, QUARTER_HOUR_SECS,
};
use ccf_store::time::format_timestamp;
use ccf_store::{
    status, Cost, DayZone, LegacyZone, Page, RequestFilter, RequestQuery, RequestRow, Stats,
    StoreError, SummaryQuery, SummaryRow,
};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, Row};

use crate::convert::{as_f64, as_i64, as_text, sqlite_error, SqliteRow};

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

/// `WHERE …` for `filter`'s columns with the time range replaced by `span` (and only the rows
/// the summary does not count when `unsummarized`).
fn span_clause(filter: &RequestFilter, span: TimeSpan, unsummarized: bool) -> (String, Vec<Value>) {
    let (where_sql, mut values) = where_clause(&RequestFilter {
        start: span.start,
        end: span.end,
        ..filter.clone()
    });
    if !unsummarized {
        return (where_sql, values);
    }
    // A literal `summarized = 0`, not a parameter: the rows are found through the partial index
    // `... WHERE summarized = 0` (migration 9), which SQLite uses only when the query's own
    // condition implies the index's.
    let sql = match where_sql.strip_prefix(" WHERE ") {
        Some(clauses) => format!(" WHERE summarized = 0 AND {clauses}"),
        None => " WHERE summarized = 0".to_string(),
    };
    (sql, std::mem::take(&mut values))
}

/// Raw rows in `span` grouped by UTC quarter-hour, model, endpoint, group and API key.
fn raw_slices(
    connection: &Connection,
    filter: &RequestFilter,
    span: TimeSpan,
    unsummarized: bool,
) -> Result<Vec<RawSlice>, StoreError> {
    let (where_sql, values) = span_clause(filter, span, unsummarized);
    let dimensions = "COALESCE(model_name, ''), COALESCE(endpoint_name, ''), \
                      COALESCE(group_name, ''), COALESCE(api_key_name, '')";
    let sql = format!(
        "SELECT CAST(strftime('%s', start_time) AS INTEGER) / {QUARTER_HOUR_SECS}, {dimensions}, \
         COUNT(*), COALESCE(SUM(status = 'completed'), 0), \
         COALESCE(SUM(status IN ({failed})), 0), COALESCE(SUM(status = 'cancelled'), 0), \
         COALESCE(SUM(duration_ms), 0), COUNT(duration_ms), \
         COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), \
         COALESCE(SUM(cache_creation_tokens), 0), COALESCE(SUM(cache_read_tokens), 0), \
         COALESCE(SUM(total_cost_nano_usd), 0) \
         FROM request_logs{where_sql} GROUP BY 1, 2, 3, 4, 5",
        failed = failed_list()
    );
    let mut statement = connection.prepare_cached(&sql).map_err(sqlite_error)?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), |row| {
            let int = |index: usize| -> rusqlite::Result<i64> {
                Ok(as_i64(row.get_ref(index)?).unwrap_or(0))
            };
            let name = |index: usize| -> rusqlite::Result<String> {
                Ok(as_text(row.get_ref(index)?).unwrap_or_default())
            };
            Ok(RawSlice {
                quarter_hour: int(0)?,
                model: name(1)?,
                endpoint: name(2)?,
                group: name(3)?,
                api_key: name(4)?,
                sums: sums_from(row, 5)?,
            })
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(rows)
}

/// [`Sums`] from 11 columns starting at `first` (requests, completed, failed, cancelled,
/// duration sum and count, four token counts, cost).
fn sums_from(row: &Row<'_>, first: usize) -> rusqlite::Result<Sums> {
    let int = |index: usize| -> rusqlite::Result<i64> {
        Ok(as_i64(row.get_ref(first + index)?).unwrap_or(0))
    };
    Ok(Sums {
        request_count: int(0)?,
        success_count: int(1)?,
        failed_count: int(2)?,
        cancelled_count: int(3)?,
        duration_sum_ms: int(4)?,
        duration_count: int(5)?,
        input_tokens: int(6)?,
        output_tokens: int(7)?,
        cache_creation_tokens: int(8)?,
        cache_read_tokens: int(9)?,
        cost_nano_usd: int(10)?,
    })
}

/// Which rows of a summary table to read: days `first..=last` (`""`: from the first) of
/// `usage_summary` / `usage_key_summary`, or listed hours of their hourly twins.
enum SummaryRows<'a> {
    Days(&'a str, &'a str),
    Hours(&'a [i64]),
}

impl SummaryRows<'_> {
    /// The table (the daily one given) and its row clauses and values.
    fn select(&self, daily: &str) -> (String, Vec<String>, Vec<Value>) {
        match self {
            SummaryRows::Days(first, last) => {
                let mut clauses = vec!["date <= ?".to_string()];
                let mut values = vec![Value::Text(last.to_string())];
                if !first.is_empty() {
                    clauses.push("date >= ?".into());
                    values.push(Value::Text(first.to_string()));
                }
                (daily.to_string(), clauses, values)
            }
            SummaryRows::Hours(hours) => (
                daily.replacen("usage_", "usage_hourly_", 1),
                vec![format!(
                    "hour_start IN ({})",
                    vec!["?"; hours.len()].join(", ")
                )],
                hours.iter().map(|hour| Value::Integer(*hour)).collect(),
            ),
        }
    }

    /// The key column: `date` or `hour_start`.
    fn key(&self) -> &'static str {
        match self {
            SummaryRows::Days(..) => "date",
            SummaryRows::Hours(_) => "hour_start",
        }
    }

    /// A row's period as the stats name it: the day, or the hourly bucket of the hour start.
    fn period(&self, value: rusqlite::types::ValueRef<'_>, zone: DayZone) -> String {
        match self {
            SummaryRows::Days(..) => as_text(value).unwrap_or_default(),
            SummaryRows::Hours(_) => hour_key(zone, as_i64(value).unwrap_or(0)),
        }
    }
}

/// `usage_summary` (or `usage_hourly_summary`) rows matching the filter's model, endpoint and
/// group.
fn summary_slices(
    connection: &Connection,
    filter: &RequestFilter,
    rows: &SummaryRows<'_>,
    zone: DayZone,
) -> Result<Vec<SummarySlice>, StoreError> {
    let (table, mut clauses, mut values) = rows.select("usage_summary");
    let key = rows.key();
    for (column, value) in [
        ("model_name", &filter.model),
        ("endpoint_name", &filter.endpoint),
        ("COALESCE(group_name, '')", &filter.group),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            clauses.push(format!("{column} = ?"));
            values.push(Value::Text(value.to_string()));
        }
    }
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {key}, model_name, endpoint_name, COALESCE(group_name, ''), \
             request_count, success_count, error_count, cancelled_count, total_duration_ms, \
             duration_count, total_input_tokens, total_output_tokens, \
             total_cache_creation_tokens, total_cache_read_tokens, total_cost_nano_usd \
             FROM {table} WHERE {}",
            clauses.join(" AND ")
        ))
        .map_err(sqlite_error)?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), |row| {
            let name = |index: usize| -> rusqlite::Result<String> {
                Ok(as_text(row.get_ref(index)?).unwrap_or_default())
            };
            Ok(SummarySlice {
                date: rows.period(row.get_ref(0)?, zone),
                model: name(1)?,
                endpoint: name(2)?,
                group: name(3)?,
                sums: sums_from(row, 4)?,
            })
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(rows)
}

/// The durations of the latest [`P95_SAMPLE`] rows of the range that have one.
fn p95_sample(connection: &Connection, filter: &RequestFilter) -> Result<Option<u64>, StoreError> {
    let (where_sql, mut values) = where_clause(filter);
    let joiner = if where_sql.is_empty() {
        " WHERE"
    } else {
        " AND"
    };
    values.push(Value::Integer(i64::from(P95_SAMPLE)));
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT duration_ms FROM request_logs{where_sql}{joiner} duration_ms IS NOT NULL \
             ORDER BY start_time DESC LIMIT ?"
        ))
        .map_err(sqlite_error)?;
    let durations = statement
        .query_map(params_from_iter(values.iter()), |row| row.get::<_, i64>(0))
        .map_err(sqlite_error)?
        .map(|duration| duration.map(|d| u64::try_from(d).unwrap_or(0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(p95(durations))
}

/// `usage_key_summary` (or `usage_hourly_key_summary`) rows.
fn key_summary_slices(
    connection: &Connection,
    rows: &SummaryRows<'_>,
    zone: DayZone,
) -> Result<Vec<KeySummarySlice>, StoreError> {
    let (table, clauses, values) = rows.select("usage_key_summary");
    let key = rows.key();
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {key}, api_key_name, request_count, success_count, error_count, \
             cancelled_count, total_duration_ms, duration_count, total_input_tokens, \
             total_output_tokens, total_cache_creation_tokens, total_cache_read_tokens, \
             total_cost_nano_usd FROM {table} WHERE {}",
            clauses.join(" AND ")
        ))
        .map_err(sqlite_error)?;
    let rows = statement
        .query_map(params_from_iter(values.iter()), |row| {
            Ok(KeySummarySlice {
                date: rows.period(row.get_ref(0)?, zone),
                api_key: as_text(row.get_ref(1)?).unwrap_or_default(),
                sums: sums_from(row, 2)?,
            })
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok(rows)
}

/// Stats as [`ccf_store::stats`] plans them: whole days of `day_zone` from `usage_summary`
/// and `usage_key_summary`, the rest from raw rows.
pub(crate) fn stats(
    connection: &Connection,
    filter: &RequestFilter,
    day_zone: DayZone,
) -> Result<Stats, StoreError> {
    let plan = plan_stats(filter, day_zone, SystemTime::now());
    let mut readings = StatsReadings {
        hours_from: Some(plan.hours_from),
        ..StatsReadings::default()
    };
    if let Some((first, last)) = &plan.summary_days {
        let days = SummaryRows::Days(first, last);
        readings.summary = summary_slices(connection, filter, &days, day_zone)?;
        if !plan.api_keys_from_raw_rows {
            readings.key_summary = key_summary_slices(connection, &days, day_zone)?;
        }
    }
    if !plan.summary_hours.is_empty() {
        let hours = SummaryRows::Hours(&plan.summary_hours);
        readings.hour_summary = summary_slices(connection, filter, &hours, day_zone)?;
        if !plan.api_keys_from_raw_rows {
            readings.hour_key_summary = key_summary_slices(connection, &hours, day_zone)?;
        }
    }
    if let Some(span) = plan.unsummarized {
        readings
            .raw
            .extend(raw_slices(connection, filter, span, true)?);
    }
    for span in &plan.raw {
        readings
            .raw
            .extend(raw_slices(connection, filter, *span, false)?);
    }
    if plan.api_keys_from_raw_rows {
        let whole = TimeSpan {
            start: filter.start,
            end: filter.end,
        };
        readings.api_keys = Some(raw_slices(connection, filter, whole, false)?);
    }
    readings.p95_duration_ms = p95_sample(connection, filter)?;
    Ok(compose_stats(day_zone, &readings))
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
