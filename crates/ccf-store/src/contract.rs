//! The contract every [`UsageStore`] honours, as async test functions, and
//! [`usage_store_contract!`](crate::usage_store_contract) to run them all against an adapter.
//!
//! An adapter's test file provides a fixture factory, an `async fn(DayZone) -> F` where `F:
//! ContractFixture` holds a fresh store migrated with that day zone, and invokes the macro with
//! it; each case becomes one `#[tokio::test]` named after it. Most cases run in UTC days; the
//! zoned cases in [`zoned_day_zone`] (Asia/Shanghai, UTC+8).
//!
//! [`shared_state_is_compare_and_set_on_the_version`] is the contract of a [`SharedState`]
//! (operator state shared by instances: the MySQL `cluster_state` table, the Redis hash of
//! `ccf-cluster`), run by each of them with two handles on one backing store.

#![allow(clippy::unwrap_used, clippy::too_many_arguments, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ccf_config::{ModelPricing, UsageTrackingConfig};
use ccf_types::Usage;

use crate::{
    status, ApplyOutcome, Cost, DayZone, ExportCursor, ExportFormat, Pricing, Recorder,
    RecorderSettings, RequestFilter, RequestQuery, RequestRow, Retention, SharedChange,
    SharedState, StoredRecord, SummaryQuery, UsageRecord, UsageStore, WritePace, CSV_HEADER,
};

/// A fresh, migrated store for one test, and how to dispose of it.
#[async_trait]
pub trait ContractFixture: Send + Sized {
    /// The store under test.
    fn store(&self) -> Arc<dyn UsageStore>;
    /// Another store on the same database, opened with `day_zone` and migrated (what a restart
    /// with another `timezone` does).
    async fn reopen(&self, day_zone: DayZone) -> Arc<dyn UsageStore>;
    /// Removes what the fixture created (a temporary database).
    async fn teardown(self);
}

/// Runs every contract case against the fixtures made by `$make` (an `async fn() -> impl
/// ContractFixture`).
#[macro_export]
macro_rules! usage_store_contract {
    ($make:path) => {
        $crate::usage_store_contract!(@cases $make;
            upsert_overwrites_fields_and_keeps_first_start_time,
            final_row_is_never_overwritten_by_non_final,
            replacing_a_final_row_counts_it_once_in_the_summary,
            costs_are_exact_integer_sums,
            costs_are_computed_for_every_final_outcome_with_tokens,
            list_filters_paginate_and_count,
            failed_filter_matches_the_failed_family,
            stats_are_computed_in_sql,
            summary_is_kept_current,
            csv_export_quotes_awkward_user_agents,
            json_export_streams_every_row,
            cleanup_deletes_only_older_rows,
            timestamps_round_trip_in_utc,
            get_request_health_and_idempotent_migrate,
            recorder_writes_every_final_outcome,
            usage_is_split_by_api_key,
            over_long_values_are_fitted_to_their_columns,
            requested_and_billed_models_are_both_stored,
        );
        $crate::usage_store_contract!(@zoned $make;
            days_and_today_are_days_of_the_configured_zone,
            summary_served_stats_equal_the_raw_rows,
            hourly_summary_serves_the_whole_hours_of_partial_days,
            a_new_day_zone_rebuilds_the_summary,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $make($crate::DayZone::Utc).await;
                $crate::contract::$case(
                    $crate::contract::ContractFixture::store(&fixture),
                )
                .await;
                $crate::contract::ContractFixture::teardown(fixture).await;
            }
        )*
    };
    (@zoned $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $make($crate::contract::zoned_day_zone()).await;
                $crate::contract::$case(&fixture).await;
                $crate::contract::ContractFixture::teardown(fixture).await;
            }
        )*
    };
}

/// The day zone of the zoned cases: Asia/Shanghai (UTC+8, no daylight saving).
pub fn zoned_day_zone() -> DayZone {
    DayZone::Named(chrono_tz::Tz::Asia__Shanghai)
}

/// 2025-09-28T00:00:00Z.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_759_017_600)
}

/// `t0() + ms` milliseconds.
pub fn at_ms(ms: u64) -> SystemTime {
    t0() + Duration::from_millis(ms)
}

/// The prices the contract uses.
pub fn pricing() -> Pricing {
    let mut config = UsageTrackingConfig::default();
    config.model_pricing.insert(
        "claude-sonnet-4-5".into(),
        ModelPricing {
            input: 3.0,
            output: 15.0,
            cache_creation: 3.75,
            cache_read: 0.30,
            cache_creation_1h: Some(6.0),
            long_context: None,
        },
    );
    config.model_pricing.insert(
        "claude-haiku-4-5".into(),
        ModelPricing {
            input: 1.0,
            output: 5.0,
            cache_creation: 1.25,
            cache_read: 0.10,
            cache_creation_1h: None,
            long_context: None,
        },
    );
    Pricing::from_config(&config)
}

/// A non-final snapshot.
pub fn snapshot(id: &str, start: SystemTime, status_value: &str) -> UsageRecord {
    let mut record = UsageRecord::new(id, start);
    record.status = status_value.into();
    record
}

/// A final snapshot with usage, model, endpoint and group.
pub fn outcome(
    id: &str,
    start: SystemTime,
    status_value: &str,
    model: &str,
    endpoint: &str,
    group: &str,
    usage: Usage,
    duration_ms: u64,
) -> UsageRecord {
    let mut record = snapshot(id, start, status_value);
    record.model_name = Some(model.into());
    record.endpoint_name = Some(endpoint.into());
    record.group_name = Some(group.into());
    record.usage = usage;
    record.duration_ms = Some(duration_ms);
    record.end_time = Some(start + Duration::from_millis(duration_ms));
    record.http_status_code = Some(match status_value {
        status::COMPLETED => 200,
        status::CANCELLED => 499,
        _ => 502,
    });
    record.is_final = true;
    record
}

/// Usage with the given input and output tokens.
pub fn tokens(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

/// Prices `records` with [`pricing`] and writes them as one batch.
pub async fn write(store: &dyn UsageStore, records: Vec<UsageRecord>) {
    write_paced(store, records, WritePace::CatchUp).await;
}

/// [`write`] through [`UsageStore::write_shared`], paced as `pace` asks (the recorder's way).
pub async fn write_paced(store: &dyn UsageStore, records: Vec<UsageRecord>, pace: WritePace) {
    let pricing = pricing();
    let batch: crate::SharedBatch = Arc::new(
        records
            .into_iter()
            .map(|r| StoredRecord::price(r, &pricing))
            .collect(),
    );
    store.write_shared(batch, pace).await.unwrap();
}

async fn get(store: &dyn UsageStore, id: &str) -> RequestRow {
    store
        .get_request(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("row {id} missing"))
}

async fn count(store: &dyn UsageStore, filter: RequestFilter) -> u64 {
    store
        .list_requests(&RequestQuery {
            filter,
            limit: 1,
            offset: 0,
        })
        .await
        .unwrap()
        .total
}

pub async fn upsert_overwrites_fields_and_keeps_first_start_time(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let mut first = snapshot("req-upsert", at_ms(0), status::PENDING);
    first.client_ip = Some("10.0.0.1".into());
    first.user_agent = Some("claude-cli/1.0".into());
    first.is_streaming = true;
    write(store, vec![first.clone()]).await;

    let mut second = first.clone();
    second.start_time = at_ms(5_000);
    second.status = status::FORWARDING.into();
    second.endpoint_name = Some("primary".into());
    second.group_name = Some("main".into());
    second.retry_count = 2;
    second.failure_reason = Some("server_error".into());
    write(store, vec![second]).await;

    let row = get(store, "req-upsert").await;
    assert_eq!(
        row.record.start_time,
        at_ms(0),
        "start_time kept from the first snapshot"
    );
    assert_eq!(row.record.status, status::FORWARDING);
    assert_eq!(row.record.endpoint_name.as_deref(), Some("primary"));
    assert_eq!(row.record.retry_count, 2);
    assert_eq!(row.record.failure_reason.as_deref(), Some("server_error"));
    assert_eq!(row.record.client_ip.as_deref(), Some("10.0.0.1"));
    assert!(row.record.is_streaming);
    assert!(!row.record.is_final);
    assert_eq!(row.cost, Cost::default());

    let mut done = outcome(
        "req-upsert",
        at_ms(0),
        status::COMPLETED,
        "claude-sonnet-4-5-20250929",
        "primary",
        "main",
        Usage {
            input_tokens: 1200,
            output_tokens: 340,
            cache_creation_input_tokens: 3000,
            cache_creation_5m_input_tokens: 1000,
            cache_creation_1h_input_tokens: 2000,
            cache_read_input_tokens: 5000,
            ..Usage::default()
        },
        1500,
    );
    done.time_to_first_byte_ms = Some(250);
    done.attempts_json = Some(r#"[{"endpoint":"primary","status":200}]"#.into());
    done.model_mismatch = true;
    done.partial = true;
    done.instance_id = Some("host-a:8080".into());
    done.client_ip = Some("10.0.0.1".into());
    write(store, vec![done.clone()]).await;

    let row = get(store, "req-upsert").await;
    let expected_cost = pricing().cost(done.model_name.as_deref(), &done.usage);
    assert_eq!(row.cost, expected_cost);
    // 1200×3000 + 340×15000 + (1000×3750 + 2000×6000) + 5000×300
    assert_eq!(
        expected_cost.total,
        3_600_000 + 5_100_000 + 15_750_000 + 1_500_000
    );
    assert_eq!(row.record, done, "every field round-trips");
    assert!(row.id > 0);
}

pub async fn final_row_is_never_overwritten_by_non_final(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let done = outcome(
        "req-final",
        at_ms(0),
        status::COMPLETED,
        "claude-haiku-4-5",
        "primary",
        "main",
        tokens(100, 10),
        800,
    );
    write(store, vec![done.clone()]).await;
    // A late intermediate snapshot, alone and after the final one in the same batch.
    write(
        store,
        vec![snapshot("req-final", at_ms(0), status::PROCESSING)],
    )
    .await;
    write(
        store,
        vec![
            done.clone(),
            snapshot("req-final", at_ms(0), status::FORWARDING),
        ],
    )
    .await;
    let row = get(store, "req-final").await;
    assert_eq!(row.record, done);
    assert_eq!(row.cost.total, 100 * 1000 + 10 * 5000);
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].request_count, 1, "written twice, counted once");
}

pub async fn replacing_a_final_row_counts_it_once_in_the_summary(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let failed = outcome(
        "req-twice",
        at_ms(0),
        status::FAILED,
        "claude-haiku-4-5",
        "primary",
        "main",
        tokens(50, 0),
        100,
    );
    write(store, vec![failed]).await;
    let completed = outcome(
        "req-twice",
        at_ms(0),
        status::COMPLETED,
        "claude-haiku-4-5",
        "primary",
        "main",
        tokens(70, 7),
        300,
    );
    write(store, vec![completed]).await;
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.len(), 1);
    let row = &summary[0];
    assert_eq!(
        (row.request_count, row.success_count, row.error_count),
        (1, 1, 0)
    );
    assert_eq!((row.total_input_tokens, row.total_output_tokens), (70, 7));
    assert_eq!(row.total_cost_nano_usd, 70 * 1000 + 7 * 5000);
    assert_eq!(row.total_duration_ms, 300);
}

pub async fn costs_are_exact_integer_sums(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let pricing = pricing();
    let models = [
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5",
        "unpriced-model",
    ];
    let mut expected: i64 = 0;
    let mut batch = Vec::new();
    for i in 0..1000u64 {
        let usage = Usage {
            input_tokens: i * 7 + 1,
            output_tokens: i * 13 % 997,
            cache_creation_input_tokens: i % 11,
            cache_read_input_tokens: i * 3,
            ..Usage::default()
        };
        let model = models[(i % 3) as usize];
        expected += pricing.cost(Some(model), &usage).total;
        batch.push(outcome(
            &format!("req-cost-{i:04}"),
            at_ms(i * 1000),
            status::COMPLETED,
            model,
            "primary",
            "main",
            usage,
            10,
        ));
        if batch.len() == 250 {
            write(store, std::mem::take(&mut batch)).await;
        }
    }
    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.request_count, 1000);
    assert_eq!(stats.totals.total_cost_nano_usd, expected);
    let summary_total: i64 = store
        .summary(&SummaryQuery::default())
        .await
        .unwrap()
        .iter()
        .map(|row| row.total_cost_nano_usd)
        .sum();
    assert_eq!(summary_total, expected);
    let by_model_total: i64 = stats
        .by_model
        .iter()
        .map(|b| b.aggregate.total_cost_nano_usd)
        .sum();
    assert_eq!(by_model_total, expected);
    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 1000,
            offset: 0,
        })
        .await
        .unwrap();
    let listed: i64 = page.items.iter().map(|row| row.cost.total).sum();
    assert_eq!(listed, expected);
    // The legacy USD column is the same value, rounded.
    assert!((stats.totals.total_cost_usd - expected as f64 / 1e9).abs() < 1e-6);
}

pub async fn costs_are_computed_for_every_final_outcome_with_tokens(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let usage = tokens(1000, 100);
    let model = "claude-haiku-4-5";
    let mut in_flight = snapshot("req-inflight", at_ms(0), status::PROCESSING);
    in_flight.usage = usage.clone();
    in_flight.model_name = Some(model.into());
    write(
        store,
        vec![
            outcome(
                "req-ok",
                at_ms(0),
                status::COMPLETED,
                model,
                "a",
                "g",
                usage.clone(),
                1,
            ),
            outcome(
                "req-fail",
                at_ms(1),
                status::FAILED,
                model,
                "a",
                "g",
                usage.clone(),
                1,
            ),
            outcome(
                "req-cancel",
                at_ms(2),
                status::CANCELLED,
                model,
                "a",
                "g",
                usage.clone(),
                1,
            ),
            outcome(
                "req-empty",
                at_ms(3),
                status::FAILED,
                model,
                "a",
                "g",
                Usage::default(),
                1,
            ),
            in_flight,
        ],
    )
    .await;
    let expected = 1000 * 1000 + 100 * 5000;
    for id in ["req-ok", "req-fail", "req-cancel"] {
        assert_eq!(get(store, id).await.cost.total, expected, "{id}");
    }
    assert_eq!(get(store, "req-empty").await.cost.total, 0);
    assert_eq!(
        get(store, "req-inflight").await.cost.total,
        0,
        "not final: not priced"
    );
}

fn listing_rows() -> Vec<UsageRecord> {
    let mut rows = Vec::new();
    for i in 0..30u64 {
        let model = if i % 2 == 0 {
            "claude-sonnet-4-5"
        } else {
            "claude-haiku-4-5"
        };
        let endpoint = ["alpha", "beta", "gamma"][(i % 3) as usize];
        let group = if i < 15 { "main" } else { "backup" };
        let status_value = match i % 5 {
            0 => status::FAILED,
            1 => status::CANCELLED,
            _ => status::COMPLETED,
        };
        let mut row = outcome(
            &format!("req-list-{i:02}"),
            at_ms(i * 60_000),
            status_value,
            model,
            endpoint,
            group,
            tokens(i, i),
            100 + i,
        );
        row.instance_id = Some(if i % 4 == 0 { "host-b" } else { "host-a" }.into());
        rows.push(row);
    }
    rows
}

pub async fn list_filters_paginate_and_count(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    write(store, listing_rows()).await;
    let page = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 7,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 30);
    assert_eq!((page.limit, page.offset), (7, 0));
    let ids: Vec<_> = page
        .items
        .iter()
        .map(|r| r.record.request_id.clone())
        .collect();
    let expected: Vec<_> = (23..30).rev().map(|i| format!("req-list-{i:02}")).collect();
    assert_eq!(ids, expected, "newest first");
    let last = store
        .list_requests(&RequestQuery {
            filter: RequestFilter::default(),
            limit: 7,
            offset: 28,
        })
        .await
        .unwrap();
    assert_eq!(last.items.len(), 2);
    assert_eq!(last.items[1].record.request_id, "req-list-00");

    let check = |filter: RequestFilter, expected: u64| async move {
        assert_eq!(count(store, filter.clone()).await, expected, "{filter:?}");
        let page = store
            .list_requests(&RequestQuery {
                filter: filter.clone(),
                limit: 100,
                offset: 0,
            })
            .await
            .unwrap();
        assert_eq!(page.items.len() as u64, expected, "{filter:?}");
    };
    check(
        RequestFilter {
            model: Some("claude-haiku-4-5".into()),
            ..RequestFilter::default()
        },
        15,
    )
    .await;
    check(
        RequestFilter {
            endpoint: Some("beta".into()),
            group: Some("main".into()),
            ..RequestFilter::default()
        },
        5,
    )
    .await;
    check(
        RequestFilter {
            start: Some(at_ms(10 * 60_000)),
            end: Some(at_ms(19 * 60_000)),
            ..RequestFilter::default()
        },
        10,
    )
    .await;
    check(
        RequestFilter {
            status: Some(status::CANCELLED.into()),
            start: Some(at_ms(10 * 60_000)),
            ..RequestFilter::default()
        },
        4,
    )
    .await;
    check(
        RequestFilter {
            request_id: Some("req-list-07".into()),
            ..RequestFilter::default()
        },
        1,
    )
    .await;
    check(
        RequestFilter {
            instance: Some("host-b".into()),
            ..RequestFilter::default()
        },
        8,
    )
    .await;
    check(
        RequestFilter {
            model: Some("nope".into()),
            ..RequestFilter::default()
        },
        0,
    )
    .await;
}

pub async fn failed_filter_matches_the_failed_family(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let mut rows = Vec::new();
    for (i, status_value) in status::FAILED_FAMILY
        .iter()
        .chain([status::COMPLETED, status::CANCELLED, status::PROCESSING].iter())
        .enumerate()
    {
        let mut row = outcome(
            &format!("req-family-{i}"),
            at_ms(i as u64),
            status_value,
            "m",
            "e",
            "g",
            tokens(1, 1),
            5,
        );
        row.is_final = status::is_terminal(status_value);
        rows.push(row);
    }
    write(store, rows).await;
    let failed = RequestFilter {
        status: Some("failed".into()),
        ..RequestFilter::default()
    };
    assert_eq!(count(store, failed.clone()).await, 8);
    let page = store
        .list_requests(&RequestQuery {
            filter: failed.clone(),
            limit: 3,
            offset: 6,
        })
        .await
        .unwrap();
    assert_eq!(
        (page.total, page.items.len()),
        (8, 2),
        "count consistent with the filter"
    );
    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.failed_count, 8);
    assert_eq!(stats.totals.success_count, 1);
    assert_eq!(stats.totals.cancelled_count, 1);
    let timeout_only = RequestFilter {
        status: Some("timeout".into()),
        ..RequestFilter::default()
    };
    assert_eq!(count(store, timeout_only).await, 1);
}

pub async fn stats_are_computed_in_sql(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let mut rows = Vec::new();
    for i in 1..=100u64 {
        let status_value = if i <= 80 {
            status::COMPLETED
        } else if i <= 95 {
            status::FAILED
        } else {
            status::CANCELLED
        };
        let model = if i % 4 == 0 {
            "claude-haiku-4-5"
        } else {
            "claude-sonnet-4-5"
        };
        // Two UTC days, hours 0 and 23 of day one and hour 0 of day two.
        let start = match i % 3 {
            0 => at_ms(0),
            1 => at_ms(23 * 3_600_000 + i),
            _ => at_ms(24 * 3_600_000 + i),
        };
        rows.push(outcome(
            &format!("req-stats-{i:03}"),
            start,
            status_value,
            model,
            if i % 2 == 0 { "alpha" } else { "beta" },
            "main",
            tokens(10, 1),
            i,
        ));
    }
    rows.push(snapshot("req-stats-open", at_ms(5), status::PENDING));
    write(store, rows).await;
    let stats = store
        .stats(&RequestFilter {
            start: Some(at_ms(0)),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    let totals = &stats.totals;
    assert_eq!(totals.request_count, 101);
    // The hourly buckets cover the range's last day: today, without rows here.
    assert!(stats.by_hour.is_empty());
    assert_eq!(
        (
            totals.success_count,
            totals.failed_count,
            totals.cancelled_count
        ),
        (80, 15, 5)
    );
    assert!((totals.success_rate - 80.0).abs() < 1e-9);
    assert!((totals.avg_duration_ms.unwrap() - 50.5).abs() < 1e-9);
    assert_eq!(stats.p95_duration_ms, Some(95));
    assert_eq!(totals.input_tokens, 1000);
    assert_eq!(totals.output_tokens, 100);
    assert_eq!(totals.total_tokens(), 1100);

    let by_model: BTreeMap<_, _> = stats
        .by_model
        .iter()
        .map(|b| (b.key.clone(), b.aggregate.request_count))
        .collect();
    assert_eq!(by_model.get("claude-sonnet-4-5"), Some(&75));
    assert_eq!(by_model.get("claude-haiku-4-5"), Some(&25));
    assert_eq!(by_model.get(""), Some(&1), "rows without a model");
    assert_eq!(
        stats.by_model[0].key, "claude-sonnet-4-5",
        "most requests first"
    );
    let by_endpoint: BTreeMap<_, _> = stats
        .by_endpoint
        .iter()
        .map(|b| (b.key.clone(), b.aggregate.request_count))
        .collect();
    assert_eq!(by_endpoint.get("alpha"), Some(&50));
    assert_eq!(by_endpoint.get("beta"), Some(&50));
    assert_eq!(
        stats
            .by_group
            .iter()
            .find(|b| b.key == "main")
            .unwrap()
            .aggregate
            .request_count,
        100
    );
    let days: Vec<_> = stats
        .by_day
        .iter()
        .map(|b| (b.key.as_str(), b.aggregate.request_count))
        .collect();
    assert_eq!(days, vec![("2025-09-28", 68), ("2025-09-29", 33)]);
    let two_days = store
        .stats(&RequestFilter {
            start: Some(at_ms(0)),
            end: Some(at_ms(24 * 3_600_000 + 1000)),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    let hours: Vec<_> = two_days
        .by_hour
        .iter()
        .map(|b| (b.key.as_str(), b.aggregate.request_count))
        .collect();
    assert_eq!(hours, vec![("2025-09-29T00:00:00Z", 33)]);
    assert_eq!(two_days.totals, stats.totals);
    let cost = pricing()
        .cost(Some("claude-sonnet-4-5"), &tokens(10, 1))
        .total
        * 75
        + pricing()
            .cost(Some("claude-haiku-4-5"), &tokens(10, 1))
            .total
            * 25;
    assert_eq!(totals.total_cost_nano_usd, cost);

    let haiku = store
        .stats(&RequestFilter {
            model: Some("claude-haiku-4-5".into()),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(haiku.totals.request_count, 25);
    let empty = store
        .stats(&RequestFilter {
            model: Some("nothing".into()),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(empty.totals.request_count, 0);
    assert_eq!(empty.p95_duration_ms, None);
    assert_eq!(empty.totals.avg_duration_ms, None);
}

pub async fn summary_is_kept_current(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let day = 24 * 3_600_000;
    write(
        store,
        vec![
            outcome(
                "req-s1",
                at_ms(0),
                status::COMPLETED,
                "claude-haiku-4-5",
                "alpha",
                "main",
                tokens(10, 1),
                100,
            ),
            outcome(
                "req-s2",
                at_ms(1),
                status::FAILED,
                "claude-haiku-4-5",
                "alpha",
                "main",
                tokens(20, 2),
                300,
            ),
            outcome(
                "req-s3",
                at_ms(day),
                status::COMPLETED,
                "claude-haiku-4-5",
                "alpha",
                "main",
                tokens(30, 3),
                50,
            ),
            snapshot("req-s4", at_ms(2), status::PROCESSING),
        ],
    )
    .await;
    let rows = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(rows.len(), 2);
    let first = &rows[0];
    assert_eq!(first.date, "2025-09-28");
    assert_eq!(
        (
            first.model_name.as_str(),
            first.endpoint_name.as_str(),
            first.group_name.as_str()
        ),
        ("claude-haiku-4-5", "alpha", "main")
    );
    assert_eq!(
        (first.request_count, first.success_count, first.error_count),
        (2, 1, 1)
    );
    assert_eq!(
        (first.total_input_tokens, first.total_output_tokens),
        (30, 3)
    );
    assert_eq!(first.total_cost_nano_usd, 30 * 1000 + 3 * 5000);
    assert!((first.avg_duration_ms - 200.0).abs() < 1e-9);
    assert!((first.total_cost_usd - 0.000045).abs() < 1e-12);

    // The in-flight request finishes: the summary follows.
    write(
        store,
        vec![outcome(
            "req-s4",
            at_ms(2),
            status::CANCELLED,
            "claude-haiku-4-5",
            "alpha",
            "main",
            tokens(1, 0),
            400,
        )],
    )
    .await;
    let rows = store
        .summary(&SummaryQuery {
            start_date: Some("2025-09-28".into()),
            end_date: Some("2025-09-28".into()),
            ..SummaryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].request_count, 3);
    assert_eq!(rows[0].total_input_tokens, 31);
    assert!((rows[0].avg_duration_ms - 800.0 / 3.0).abs() < 0.01);
    let filtered = store
        .summary(&SummaryQuery {
            model: Some("other".into()),
            ..SummaryQuery::default()
        })
        .await
        .unwrap();
    assert!(filtered.is_empty());
}

pub async fn csv_export_quotes_awkward_user_agents(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let awkward = "Mozilla/5.0 (X11; Linux), \"quoted\" agent\nsecond line, ünïcödé";
    let mut row = outcome(
        "req-csv",
        at_ms(0),
        status::COMPLETED,
        "claude-haiku-4-5",
        "a,b",
        "g",
        tokens(3, 4),
        9,
    );
    row.user_agent = Some(awkward.into());
    row.last_failure_reason = Some("line1\r\nline2".into());
    write(
        store,
        vec![row, snapshot("req-csv-2", at_ms(1), status::PENDING)],
    )
    .await;
    let mut out: Vec<u8> = Vec::new();
    let n = store
        .export(&RequestFilter::default(), ExportFormat::Csv, &mut out)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let mut reader = csv::Reader::from_reader(out.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header, CSV_HEADER.to_vec());
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), 2);
    let first = &records[0];
    assert_eq!(&first[0], "req-csv");
    assert_eq!(&first[2], awkward);
    assert_eq!(&first[8], "a,b");
    assert_eq!(&first[5], "2025-09-28T00:00:00.000000Z");
    assert_eq!(&first[22], "0.000023");
    assert_eq!(&first[27], "line1\r\nline2");
    assert_eq!(&first[36], "23000");
    assert_eq!(first.len(), CSV_HEADER.len());
}

pub async fn json_export_streams_every_row(store: Arc<dyn UsageStore>) {
    let rows: Vec<UsageRecord> = (0..2500u64)
        .map(|i| {
            outcome(
                &format!("req-json-{i:05}"),
                at_ms(i),
                status::COMPLETED,
                "claude-haiku-4-5",
                if i % 2 == 0 { "even" } else { "odd" },
                "g",
                tokens(i, 1),
                1,
            )
        })
        .collect();
    for chunk in rows.chunks(500) {
        write(store.as_ref(), chunk.to_vec()).await;
    }
    let mut out: Vec<u8> = Vec::new();
    let n = store
        .export(&RequestFilter::default(), ExportFormat::Json, &mut out)
        .await
        .unwrap();
    assert_eq!(n, 2500, "no row cap");
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(parsed.len(), 2500);
    let first = &parsed[0];
    assert_eq!(first["request_id"], "req-json-00000");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["start_time"], "2025-09-28T00:00:00.000000Z");
    assert_eq!(first["output_tokens"], 1);
    assert_eq!(first["total_cost_nano_usd"], 5000);
    assert!(first.get("id").is_some() && first.get("is_streaming").is_some());

    // The pull-based cursor gives the same rows, filtered.
    let mut cursor = ExportCursor::new(
        store.clone(),
        RequestFilter {
            endpoint: Some("odd".into()),
            ..RequestFilter::default()
        },
        ExportFormat::Json,
    );
    let mut bytes = Vec::new();
    while let Some(chunk) = cursor.next_chunk().await.unwrap() {
        bytes.extend_from_slice(&chunk);
    }
    let odd: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(odd.len(), 1250);
    assert_eq!(cursor.rows_written(), 1250);

    let mut empty = Vec::new();
    store
        .export(
            &RequestFilter {
                model: Some("none".into()),
                ..RequestFilter::default()
            },
            ExportFormat::Json,
            &mut empty,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8(empty).unwrap().trim(), "[]");
}

pub async fn cleanup_deletes_only_older_rows(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let day = Duration::from_secs(86_400);
    let now = t0() + day * 200;
    write(
        store,
        vec![
            outcome(
                "req-old",
                now - day * 100,
                status::COMPLETED,
                "m",
                "e",
                "g",
                tokens(1, 1),
                1,
            ),
            outcome(
                "req-mid",
                now - day * 10,
                status::COMPLETED,
                "m",
                "e",
                "g",
                tokens(1, 1),
                1,
            ),
            outcome(
                "req-new",
                now,
                status::COMPLETED,
                "m",
                "e",
                "g",
                tokens(1, 1),
                1,
            ),
        ],
    )
    .await;
    let forever = Retention {
        days: 0,
        interval: Duration::from_secs(3600),
    };
    assert_eq!(forever.cutoff(now), None, "retention 0 keeps everything");
    let retention = Retention {
        days: 30,
        interval: Duration::from_secs(3600),
    };
    let report = store.cleanup(retention.cutoff(now).unwrap()).await.unwrap();
    assert_eq!(report.requests_deleted, 1);
    assert_eq!(report.summary_rows_deleted, 1);
    assert!(store.get_request("req-old").await.unwrap().is_none());
    assert!(store.get_request("req-mid").await.unwrap().is_some());
    assert_eq!(count(store, RequestFilter::default()).await, 2);
    assert_eq!(
        store.summary(&SummaryQuery::default()).await.unwrap().len(),
        2
    );
    let again = store.cleanup(retention.cutoff(now).unwrap()).await.unwrap();
    assert_eq!(again.requests_deleted, 0);
}

pub async fn timestamps_round_trip_in_utc(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let start = t0() + Duration::from_micros(123_456);
    let mut row = outcome(
        "req-time",
        start,
        status::COMPLETED,
        "m",
        "e",
        "g",
        tokens(1, 1),
        2_000,
    );
    row.end_time = Some(start + Duration::from_micros(2_000_001));
    write(store, vec![row.clone()]).await;
    let read = get(store, "req-time").await;
    assert_eq!(read.record.start_time, start);
    assert_eq!(read.record.end_time, row.end_time);
    let created = read.created_at.expect("created_at");
    let updated = read.updated_at.expect("updated_at");
    let now = SystemTime::now();
    for stamp in [created, updated] {
        let age = now.duration_since(stamp).unwrap_or_default();
        assert!(
            age < Duration::from_secs(300),
            "audit times are UTC now: {age:?}"
        );
    }
    // Filters compare instants, not text: a bound a microsecond after start excludes the row.
    let after = RequestFilter {
        start: Some(start + Duration::from_micros(1)),
        ..RequestFilter::default()
    };
    assert_eq!(count(store, after).await, 0);
    let at = RequestFilter {
        start: Some(start),
        end: Some(start),
        ..RequestFilter::default()
    };
    assert_eq!(count(store, at).await, 1);
}

pub async fn get_request_health_and_idempotent_migrate(store: Arc<dyn UsageStore>) {
    assert!(store.get_request("req-missing").await.unwrap().is_none());
    store.health().await.unwrap();
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "already migrated: {again:?}");
    assert!(again.current_version >= 2);
    assert!(store.pending_migrations().await.unwrap().is_empty());
    assert!(!store.backend().is_empty());
}

pub async fn recorder_writes_every_final_outcome(store: Arc<dyn UsageStore>) {
    let settings = RecorderSettings {
        batch_size: 64,
        flush_interval: Duration::from_millis(50),
        ..RecorderSettings::default()
    };
    let recorder = Recorder::spawn(store.clone(), settings, pricing());
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500u64 {
                let id = format!("req-rec-{worker}-{i:04}");
                let start = at_ms(worker * 1_000_000 + i);
                recorder.record(snapshot(&id, start, status::PENDING));
                let mut forwarding = snapshot(&id, start, status::FORWARDING);
                forwarding.endpoint_name = Some("alpha".into());
                recorder.record(forwarding);
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
                recorder.record(outcome(
                    &id,
                    start,
                    status::COMPLETED,
                    "claude-haiku-4-5",
                    "alpha",
                    "main",
                    tokens(i, 1),
                    3,
                ));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    recorder.shutdown().await;
    assert_eq!(recorder.backlog(), 0);
    assert_eq!(recorder.dropped(), 0);
    assert!(recorder.last_error().is_none());
    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.request_count, 2000);
    assert_eq!(stats.totals.success_count, 2000);
    let expected: i64 = (0..500u64)
        .map(|i| {
            pricing()
                .cost(Some("claude-haiku-4-5"), &tokens(i, 1))
                .total
        })
        .sum::<i64>()
        * 4;
    assert_eq!(stats.totals.total_cost_nano_usd, expected);
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary.iter().map(|r| r.request_count).sum::<i64>(), 2000);
}

/// The recorder benchmark's workload, shared by every adapter's bench: `requests` requests from
/// `tasks` producers (a `pending` and a final `completed` snapshot each) into a fresh recorder
/// on `store`, then a shutdown that flushes everything. Returns the time from spawn to flushed
/// and asserts that every request is stored as completed and nothing was dropped.
/// The inbound auth key's name is stored, filtered on and grouped by; rows without one (auth off,
/// rows the Go forwarder wrote) read back as `None` and group under `""`.
pub async fn usage_is_split_by_api_key(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let mut rows = Vec::new();
    for (index, key) in [Some("alice"), Some("alice"), Some("bob"), None]
        .into_iter()
        .enumerate()
    {
        let mut row = outcome(
            &format!("req-key-{index}"),
            at_ms(index as u64),
            status::COMPLETED,
            "claude-sonnet-4-5",
            "primary",
            "main",
            tokens(100, 10),
            100,
        );
        row.api_key_name = key.map(str::to_string);
        rows.push(row);
    }
    // A later snapshot of a keyed request keeps its key.
    let mut pending = snapshot("req-key-live", at_ms(10), status::PENDING);
    pending.api_key_name = Some("carol".into());
    rows.push(pending.clone());
    write(store, rows).await;

    let alice = get(store, "req-key-0").await;
    assert_eq!(alice.record.api_key_name.as_deref(), Some("alice"));
    assert_eq!(get(store, "req-key-3").await.record.api_key_name, None);
    pending.status = status::FORWARDING.into();
    write(store, vec![pending]).await;
    assert_eq!(
        get(store, "req-key-live")
            .await
            .record
            .api_key_name
            .as_deref(),
        Some("carol")
    );

    let only = |key: &str| RequestFilter {
        api_key: Some(key.into()),
        ..RequestFilter::default()
    };
    assert_eq!(count(store, only("alice")).await, 2);
    assert_eq!(count(store, only("bob")).await, 1);
    assert_eq!(count(store, only("nobody")).await, 0);
    let alice_stats = store.stats(&only("alice")).await.unwrap();
    assert_eq!(alice_stats.totals.request_count, 2);
    assert_eq!(alice_stats.totals.input_tokens, 200);

    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    let by_key: Vec<(&str, u64, u64)> = stats
        .by_api_key
        .iter()
        .map(|bucket| {
            (
                bucket.key.as_str(),
                bucket.aggregate.request_count,
                bucket.aggregate.input_tokens,
            )
        })
        .collect();
    assert_eq!(
        by_key,
        vec![
            ("alice", 2, 200),
            ("", 1, 100),
            ("bob", 1, 100),
            ("carol", 1, 0)
        ],
        "most requests first, then by name"
    );
    let alice_cost = stats.by_api_key[0].aggregate.total_cost_nano_usd;
    assert_eq!(
        alice_cost,
        2 * pricing()
            .cost(Some("claude-sonnet-4-5"), &tokens(100, 10))
            .total
    );
}

pub async fn recorder_workload(
    store: Arc<dyn UsageStore>,
    requests: u64,
    tasks: u64,
    batch_size: usize,
) -> Duration {
    let settings = RecorderSettings {
        batch_size,
        flush_interval: Duration::from_secs(1),
        ..RecorderSettings::default()
    };
    let started = std::time::Instant::now();
    let recorder = Recorder::spawn(store.clone(), settings, pricing());
    let mut producers = Vec::new();
    for task in 0..tasks {
        let recorder = recorder.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..requests / tasks {
                let id = format!("req-{task}-{i:08}");
                let start = at_ms(i);
                recorder.record(snapshot(&id, start, status::PENDING));
                recorder.record(outcome(
                    &id,
                    start,
                    status::COMPLETED,
                    "claude-sonnet-4-5-20250929",
                    "primary",
                    "main",
                    tokens(1000 + i, 200),
                    1200,
                ));
                if i % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    recorder.shutdown().await;
    let elapsed = started.elapsed();
    let stats = store.stats(&RequestFilter::default()).await.unwrap();
    assert_eq!(stats.totals.success_count, requests, "none lost");
    assert_eq!(recorder.dropped(), 0);
    elapsed
}

/// A 300-character value from a client (model name, path, method, client address, user agent,
/// endpoint and group names, cancel reason, key name) neither fails its row nor the rest of its
/// batch: it is stored cut to its column's [`MAX_CHARS`](crate::columns::MAX_CHARS), on a
/// character boundary (multi-byte characters), the same by every adapter, and the summary
/// counts the row under the cut names.
/// Issue 20: a row keeps the model the client asked for beside the model billed (the upstream's,
/// after an endpoint's `model_map` sent another name); rows without one read back `None`, and the
/// export carries both.
pub async fn requested_and_billed_models_are_both_stored(store: Arc<dyn UsageStore>) {
    let store = store.as_ref();
    let mut mapped = outcome(
        "req-mapped",
        at_ms(0),
        status::COMPLETED,
        "glm-4.5-air",
        "relay",
        "cheap",
        tokens(10, 5),
        20,
    );
    mapped.requested_model = Some("claude-3-5-haiku-20241022".into());
    let plain = outcome(
        "req-plain",
        at_ms(1),
        status::COMPLETED,
        "claude-sonnet-4-5",
        "primary",
        "main",
        tokens(10, 5),
        20,
    );
    write(store, vec![mapped.clone(), plain]).await;
    let stored = get(store, "req-mapped").await.record;
    assert_eq!(stored.model_name.as_deref(), Some("glm-4.5-air"));
    assert_eq!(
        stored.requested_model.as_deref(),
        Some("claude-3-5-haiku-20241022")
    );
    assert_eq!(get(store, "req-plain").await.record.requested_model, None);
    // A later snapshot of the same request keeps writing it.
    let mut again = mapped;
    again.usage = tokens(11, 6);
    write(store, vec![again]).await;
    assert_eq!(
        get(store, "req-mapped")
            .await
            .record
            .requested_model
            .as_deref(),
        Some("claude-3-5-haiku-20241022")
    );

    let mut out: Vec<u8> = Vec::new();
    store
        .export(&RequestFilter::default(), ExportFormat::Csv, &mut out)
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(out.as_slice());
    let column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|name| name == "requested_model")
        .unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let by_id = |id: &str| rows.iter().find(|row| &row[0] == id).unwrap()[column].to_string();
    assert_eq!(by_id("req-mapped"), "claude-3-5-haiku-20241022");
    assert_eq!(by_id("req-plain"), "");
}

pub async fn over_long_values_are_fitted_to_their_columns(store: Arc<dyn UsageStore>) {
    // Two-byte characters, so a cut by bytes would split one.
    let long = |prefix: &str| format!("{prefix}{}", "é".repeat(300 - prefix.chars().count()));
    let mut wide = outcome(
        "req-wide",
        t0(),
        status::COMPLETED,
        &long("model-"),
        &long("endpoint-"),
        &long("group-"),
        tokens(10, 5),
        100,
    );
    wide.path = long("/v1/");
    wide.method = long("POST");
    wide.client_ip = Some(long("10."));
    wide.user_agent = Some(long("agent/"));
    wide.cancel_reason = Some(long("cancel "));
    wide.api_key_name = Some(long("key-"));
    wide.requested_model = Some(long("asked-"));
    wide.instance_id = Some(long("node-"));
    let before = outcome(
        "req-before",
        t0(),
        status::COMPLETED,
        "claude-sonnet-4",
        "primary",
        "main",
        tokens(1, 1),
        10,
    );
    let after = outcome(
        "req-after",
        t0(),
        status::COMPLETED,
        "claude-sonnet-4",
        "primary",
        "main",
        tokens(1, 1),
        10,
    );
    write(&*store, vec![before, wide.clone(), after]).await;

    let cut = |value: &str, column: &str| -> String {
        let limit = crate::columns::max_chars(column).unwrap();
        value.chars().take(limit).collect()
    };
    let stored = get(&*store, "req-wide").await.record;
    assert_eq!(
        stored.model_name.as_deref(),
        Some(cut(wide.model_name.as_deref().unwrap(), "model_name").as_str())
    );
    assert_eq!(stored.model_name.as_deref().unwrap().chars().count(), 255);
    assert_eq!(stored.path, cut(&wide.path, "path"));
    assert_eq!(stored.method, cut(&wide.method, "method"));
    assert_eq!(stored.method.chars().count(), 10);
    assert_eq!(
        stored.client_ip.as_deref(),
        Some(cut(wide.client_ip.as_deref().unwrap(), "client_ip").as_str())
    );
    assert_eq!(
        stored.endpoint_name.as_deref(),
        Some(cut(wide.endpoint_name.as_deref().unwrap(), "endpoint_name").as_str())
    );
    assert_eq!(
        stored.group_name.as_deref(),
        Some(cut(wide.group_name.as_deref().unwrap(), "group_name").as_str())
    );
    assert_eq!(
        stored.cancel_reason.as_deref(),
        Some(cut(wide.cancel_reason.as_deref().unwrap(), "cancel_reason").as_str())
    );
    assert_eq!(
        stored.api_key_name.as_deref(),
        Some(cut(wide.api_key_name.as_deref().unwrap(), "api_key_name").as_str())
    );
    assert_eq!(
        stored.instance_id.as_deref(),
        Some(cut(wide.instance_id.as_deref().unwrap(), "instance_id").as_str())
    );
    assert_eq!(
        stored.requested_model.as_deref(),
        Some(cut(wide.requested_model.as_deref().unwrap(), "requested_model").as_str())
    );
    // A TEXT column: nothing to cut.
    assert_eq!(stored.user_agent, wide.user_agent);
    for id in ["req-before", "req-after"] {
        assert_eq!(get(&*store, id).await.record.status, status::COMPLETED);
    }

    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    let counted: i64 = summary.iter().map(|row| row.request_count).sum();
    assert_eq!(counted, 3, "{summary:?}");
    assert!(
        summary
            .iter()
            .any(|row| row.model_name == stored.model_name.clone().unwrap()),
        "{summary:?}"
    );
}

/// `time` written as RFC 3339.
fn instant(text: &str) -> SystemTime {
    crate::time::parse_timestamp(text, crate::LegacyZone::Utc).unwrap()
}

fn day_counts(buckets: &[crate::Bucket]) -> Vec<(String, u64)> {
    buckets
        .iter()
        .map(|b| (b.key.clone(), b.aggregate.request_count))
        .collect()
}

fn summary_counts(rows: &[crate::SummaryRow]) -> Vec<(String, i64)> {
    let mut by_date: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        *by_date.entry(row.date.clone()).or_default() += row.request_count;
    }
    by_date.into_iter().collect()
}

/// Four requests around the Shanghai day change: 23:30 and 00:30 UTC are 07:30 and 08:30 of
/// the same Shanghai day, 15:30 and 16:30 UTC fall on both sides of its midnight.
fn around_midnight() -> Vec<UsageRecord> {
    [
        ("req-tz-a", "2025-09-27T23:30:00Z"),
        ("req-tz-b", "2025-09-28T00:30:00Z"),
        ("req-tz-c", "2025-09-28T15:30:00Z"),
        ("req-tz-d", "2025-09-28T16:30:00Z"),
    ]
    .into_iter()
    .map(|(id, start)| {
        outcome(
            id,
            instant(start),
            status::COMPLETED,
            "claude-haiku-4-5",
            "alpha",
            "main",
            tokens(10, 1),
            100,
        )
    })
    .collect()
}

/// Runs with the store in Asia/Shanghai: summary rows, daily and hourly buckets and "today"
/// are Shanghai days and hours.
pub async fn days_and_today_are_days_of_the_configured_zone(fixture: &impl ContractFixture) {
    let store = fixture.store();
    let store = store.as_ref();
    write(store, around_midnight()).await;
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(
        summary_counts(&summary),
        vec![("2025-09-28".to_string(), 3), ("2025-09-29".to_string(), 1)]
    );
    // Two whole Shanghai days: served from the summary.
    let whole_days = store
        .stats(&RequestFilter {
            start: Some(instant("2025-09-27T16:00:00Z")),
            end: Some(instant("2025-09-29T15:59:59.999999Z")),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        day_counts(&whole_days.by_day),
        vec![("2025-09-28".to_string(), 3), ("2025-09-29".to_string(), 1)]
    );
    // From 08:00 Shanghai time on the 28th: the partial day from raw rows.
    let partial = store
        .stats(&RequestFilter {
            start: Some(instant("2025-09-28T00:00:00Z")),
            end: Some(instant("2025-09-28T16:30:00Z")),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        day_counts(&partial.by_day),
        vec![("2025-09-28".to_string(), 2), ("2025-09-29".to_string(), 1)]
    );
    // Hours of the range's last Shanghai day.
    assert_eq!(
        day_counts(&partial.by_hour),
        vec![("2025-09-29T00:00:00+08:00".to_string(), 1)]
    );
    assert_eq!(
        day_counts(&whole_days.by_hour),
        vec![("2025-09-29T00:00:00+08:00".to_string(), 1)]
    );
    let first_day = store
        .stats(&RequestFilter {
            start: Some(instant("2025-09-27T16:00:00Z")),
            end: Some(instant("2025-09-28T15:59:59.999999Z")),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        day_counts(&first_day.by_hour),
        vec![
            ("2025-09-28T07:00:00+08:00".to_string(), 1),
            ("2025-09-28T08:00:00+08:00".to_string(), 1),
            ("2025-09-28T23:00:00+08:00".to_string(), 1),
        ]
    );
    let summary_of_the_29th = store
        .summary(&SummaryQuery {
            start_date: Some("2025-09-29".into()),
            end_date: Some("2025-09-29".into()),
            ..SummaryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(summary_of_the_29th.len(), 1);
    assert_eq!(summary_of_the_29th[0].total_input_tokens, 10);

    // "Today" is the Shanghai day: a request a minute before its midnight is yesterday's.
    let zone = zoned_day_zone();
    let today_start = zone.day_start(zone.today());
    write(
        store,
        vec![
            outcome(
                "req-tz-today",
                SystemTime::now(),
                status::COMPLETED,
                "claude-sonnet-4-5",
                "alpha",
                "main",
                tokens(1000, 100),
                100,
            ),
            outcome(
                "req-tz-yesterday",
                today_start - Duration::from_secs(60),
                status::COMPLETED,
                "claude-sonnet-4-5",
                "alpha",
                "main",
                tokens(1000, 100),
                100,
            ),
        ],
    )
    .await;
    let today = store
        .stats(&RequestFilter {
            start: Some(today_start),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(today.totals.request_count, 1);
    assert_eq!(
        today.totals.total_cost_nano_usd,
        1000 * 3000 + 100 * 15_000,
        "sonnet: $3 in, $15 out per million"
    );
    assert_eq!(
        day_counts(&today.by_day),
        vec![(zone.today().format("%Y-%m-%d").to_string(), 1)]
    );
}

/// The stats an independent reading of every row gives for `filter` (`zone` days).
async fn stats_from_rows(
    store: &dyn UsageStore,
    filter: &RequestFilter,
    zone: DayZone,
) -> crate::Stats {
    use crate::stats::Sums;
    let rows = store.scan_requests(filter, 0, 100_000).await.unwrap();
    let mut totals = Sums::default();
    let mut by: [BTreeMap<String, Sums>; 6] = Default::default();
    // The hourly buckets: the range's last day (a zone without daylight saving: the hours'
    // text sorts as they follow each other).
    let last_day_start = zone.day_start(zone.date_of(filter.end.unwrap_or_else(SystemTime::now)));
    for row in &rows {
        let record = &row.record;
        let sums = Sums {
            request_count: 1,
            success_count: i64::from(record.status == status::COMPLETED),
            failed_count: i64::from(status::is_failure(&record.status)),
            cancelled_count: i64::from(record.status == status::CANCELLED),
            duration_sum_ms: record.duration_ms.map_or(0, |d| d as i64),
            duration_count: i64::from(record.duration_ms.is_some()),
            input_tokens: record.usage.input_tokens as i64,
            output_tokens: record.usage.output_tokens as i64,
            cache_creation_tokens: record.usage.cache_creation_input_tokens as i64,
            cache_read_tokens: record.usage.cache_read_input_tokens as i64,
            cost_nano_usd: row.cost.total,
        };
        totals.add(&sums);
        let keys = [
            record.model_name.clone().unwrap_or_default(),
            record.endpoint_name.clone().unwrap_or_default(),
            record.group_name.clone().unwrap_or_default(),
            zone.format_date(record.start_time),
            record.api_key_name.clone().unwrap_or_default(),
        ];
        for (map, key) in by.iter_mut().zip(keys) {
            map.entry(key).or_default().add(&sums);
        }
        if record.start_time >= last_day_start {
            by[5]
                .entry(zone.format_hour(record.start_time))
                .or_default()
                .add(&sums);
        }
    }
    let buckets = |map: &BTreeMap<String, Sums>, by_count: bool| {
        let mut buckets: Vec<crate::Bucket> = map
            .iter()
            .map(|(key, sums)| crate::Bucket {
                key: key.clone(),
                aggregate: sums.aggregate(),
            })
            .collect();
        if by_count {
            buckets.sort_by(|a, b| {
                b.aggregate
                    .request_count
                    .cmp(&a.aggregate.request_count)
                    .then_with(|| a.key.cmp(&b.key))
            });
        }
        buckets
    };
    crate::Stats {
        totals: totals.aggregate(),
        by_model: buckets(&by[0], true),
        by_endpoint: buckets(&by[1], true),
        by_group: buckets(&by[2], true),
        by_day: buckets(&by[3], false),
        by_api_key: buckets(&by[4], true),
        by_hour: buckets(&by[5], false),
        ..crate::Stats::default()
    }
}

/// Runs with the store in Asia/Shanghai: whole days come from `usage_summary`, the edges and
/// the unfinished rows from raw rows, and the numbers are exactly those of the rows.
pub async fn summary_served_stats_equal_the_raw_rows(fixture: &impl ContractFixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let hour = 3_600_000;
    let mut rows = Vec::new();
    for i in 0..120u64 {
        // Every 37 minutes over about three and a half days, from 2025-09-28T00:00Z.
        let start = at_ms(i * 37 * 60_000 + i);
        let status_value = match i % 10 {
            0..=6 => status::COMPLETED,
            7 | 8 => status::FAILED,
            _ => status::CANCELLED,
        };
        let model = ["claude-haiku-4-5", "claude-sonnet-4-5", ""][(i % 3) as usize];
        let mut record = outcome(
            &format!("req-eq-{i:03}"),
            start,
            status_value,
            model,
            ["alpha", "beta"][(i % 2) as usize],
            ["main", ""][(i % 5 == 0) as usize],
            tokens(10 + i, i),
            40 + i,
        );
        if model.is_empty() {
            record.model_name = None;
        }
        if i % 11 == 0 {
            record.duration_ms = None;
            record.end_time = None;
        }
        if i % 4 != 0 {
            record.api_key_name = Some(["team-a", "team-b", "ci"][(i % 3) as usize].into());
        }
        rows.push(record);
    }
    // Requests that never finished, on a whole day and on an edge.
    rows.push(snapshot(
        "req-eq-open-1",
        at_ms(30 * hour),
        status::PROCESSING,
    ));
    rows.push(snapshot("req-eq-open-2", at_ms(70 * hour), status::PENDING));
    write(store, rows).await;
    // A counted row replaced by a later outcome moves its contribution (every snapshot of a
    // request carries its key name).
    let mut replacement = outcome(
        "req-eq-005",
        at_ms(5 * 37 * 60_000 + 5),
        status::FAILED,
        "claude-sonnet-4-5",
        "beta",
        "main",
        tokens(7, 7),
        9,
    );
    replacement.api_key_name = Some("ci".into());
    write(store, vec![replacement]).await;

    let zone = zoned_day_zone();
    let filters = [
        // 10:00 Shanghai on the 28th to 20:00 on the 30th: two partial days, one whole one.
        RequestFilter {
            start: Some(instant("2025-09-28T02:00:00Z")),
            end: Some(instant("2025-09-30T12:00:00Z")),
            ..RequestFilter::default()
        },
        // 10:20 Shanghai on the 28th to 20:40 on the 30th: partial hours at both ends, whole
        // hours of two partial days, one whole day.
        RequestFilter {
            start: Some(instant("2025-09-28T02:20:00Z")),
            end: Some(instant("2025-09-30T12:40:00Z")),
            ..RequestFilter::default()
        },
        // Inside one Shanghai day, no whole day: whole hours and two partial ones.
        RequestFilter {
            start: Some(instant("2025-09-29T01:10:00Z")),
            end: Some(instant("2025-09-29T11:50:00Z")),
            ..RequestFilter::default()
        },
        // Whole Shanghai days only.
        RequestFilter {
            start: Some(instant("2025-09-27T16:00:00Z")),
            end: Some(instant("2025-09-30T15:59:59.999999Z")),
            ..RequestFilter::default()
        },
        // Open to now, one model, one group.
        RequestFilter {
            start: Some(at_ms(0)),
            model: Some("claude-sonnet-4-5".into()),
            group: Some("main".into()),
            ..RequestFilter::default()
        },
        // A status filter: raw rows for the whole range.
        RequestFilter {
            start: Some(at_ms(0)),
            status: Some("failed".into()),
            ..RequestFilter::default()
        },
        // One API key: raw rows for the whole range.
        RequestFilter {
            start: Some(at_ms(0)),
            api_key: Some("team-a".into()),
            ..RequestFilter::default()
        },
    ];
    for filter in filters {
        let expected = stats_from_rows(store, &filter, zone).await;
        assert!(expected.totals.request_count > 10, "{filter:?}");
        let stats = store.stats(&filter).await.unwrap();
        assert_eq!(stats.totals, expected.totals, "totals for {filter:?}");
        assert_eq!(stats.by_model, expected.by_model, "by model for {filter:?}");
        assert_eq!(
            stats.by_endpoint, expected.by_endpoint,
            "by endpoint for {filter:?}"
        );
        assert_eq!(stats.by_group, expected.by_group, "by group for {filter:?}");
        assert_eq!(stats.by_day, expected.by_day, "by day for {filter:?}");
        assert_eq!(
            stats.by_api_key, expected.by_api_key,
            "by API key for {filter:?}"
        );
        assert_eq!(stats.by_hour, expected.by_hour, "by hour for {filter:?}");
    }
}

/// Whole hours of a partial day come from the hourly summary, the partial hours at the range's
/// ends and a request that never finished from raw rows: each request counted exactly once, on
/// its Shanghai hour.
pub async fn hourly_summary_serves_the_whole_hours_of_partial_days(fixture: &impl ContractFixture) {
    let store = fixture.store();
    let store = store.as_ref();
    let row = |id: &str, start: &str, status_value: &str, key: Option<&str>| {
        let mut record = outcome(
            id,
            instant(start),
            status_value,
            "claude-haiku-4-5",
            "alpha",
            "main",
            tokens(10, 1),
            100,
        );
        record.api_key_name = key.map(str::to_string);
        record
    };
    write(
        store,
        vec![
            row(
                "req-h-a",
                "2025-09-28T01:10:00Z",
                status::COMPLETED,
                Some("team-a"),
            ),
            row("req-h-b", "2025-09-28T01:50:00Z", status::COMPLETED, None),
            row(
                "req-h-c",
                "2025-09-28T02:05:00Z",
                status::COMPLETED,
                Some("team-a"),
            ),
            row("req-h-d", "2025-09-28T02:40:00Z", status::FAILED, None),
            row("req-h-e", "2025-09-28T03:15:00Z", status::COMPLETED, None),
            row("req-h-g", "2025-09-28T04:05:00Z", status::COMPLETED, None),
            snapshot(
                "req-h-f",
                instant("2025-09-28T02:20:00Z"),
                status::PROCESSING,
            ),
        ],
    )
    .await;
    // 09:30 to 11:30 Shanghai: 10:00-11:00 is a whole hour (c, d from the hourly summary, f
    // never finished), 09:30-10:00 (b) and 11:00-11:30 (e) are raw; a and g are outside.
    let stats = store
        .stats(&RequestFilter {
            start: Some(instant("2025-09-28T01:30:00Z")),
            end: Some(instant("2025-09-28T03:30:00Z")),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    let counts = |buckets: &[crate::Bucket]| -> Vec<(String, u64)> {
        buckets
            .iter()
            .map(|bucket| (bucket.key.clone(), bucket.aggregate.request_count))
            .collect()
    };
    assert_eq!(
        (
            stats.totals.request_count,
            stats.totals.success_count,
            stats.totals.failed_count,
            stats.totals.input_tokens
        ),
        (5, 3, 1, 40)
    );
    assert_eq!(
        counts(&stats.by_hour),
        vec![
            ("2025-09-28T09:00:00+08:00".to_string(), 1),
            ("2025-09-28T10:00:00+08:00".to_string(), 3),
            ("2025-09-28T11:00:00+08:00".to_string(), 1),
        ]
    );
    assert_eq!(
        counts(&stats.by_api_key),
        vec![("".to_string(), 4), ("team-a".to_string(), 1)]
    );
    assert_eq!(counts(&stats.by_day), vec![("2025-09-28".to_string(), 5)]);
}

/// A store reopened with another day zone (a restart after `timezone` changed) rebuilds
/// `usage_summary` in it; the old rows (UTC days, before the zone was recorded) are rebuilt the
/// same way on the first start.
pub async fn a_new_day_zone_rebuilds_the_summary(fixture: &impl ContractFixture) {
    let store = fixture.store();
    write(store.as_ref(), around_midnight()).await;
    let shanghai_days = vec![("2025-09-28".to_string(), 3), ("2025-09-29".to_string(), 1)];
    let utc_days = vec![("2025-09-27".to_string(), 1), ("2025-09-28".to_string(), 3)];
    let summary = store.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary_counts(&summary), shanghai_days);

    let utc = fixture.reopen(DayZone::Utc).await;
    let summary = utc.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(summary_counts(&summary), utc_days);
    let first = summary.iter().find(|row| row.date == "2025-09-27").unwrap();
    assert_eq!(
        (
            first.request_count,
            first.success_count,
            first.total_input_tokens
        ),
        (1, 1, 10)
    );
    // Writes after the rebuild count in the new zone, once.
    write(
        utc.as_ref(),
        vec![outcome(
            "req-tz-e",
            instant("2025-09-27T23:45:00Z"),
            status::FAILED,
            "claude-haiku-4-5",
            "alpha",
            "main",
            tokens(1, 1),
            5,
        )],
    )
    .await;
    let summary = utc.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(
        summary_counts(&summary),
        vec![("2025-09-27".to_string(), 2), ("2025-09-28".to_string(), 3)]
    );

    let back = fixture.reopen(zoned_day_zone()).await;
    let summary = back.summary(&SummaryQuery::default()).await.unwrap();
    assert_eq!(
        summary_counts(&summary),
        vec![("2025-09-28".to_string(), 4), ("2025-09-29".to_string(), 1)]
    );
    let stats = back
        .stats(&RequestFilter {
            start: Some(instant("2025-09-27T16:00:00Z")),
            end: Some(instant("2025-09-29T15:59:59.999999Z")),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (stats.totals.request_count, stats.totals.failed_count),
        (5, 1)
    );
}

/// The stats benchmark's workload (`cargo xtask bench-stats`): `rows` final requests spread
/// evenly over the 30 days before `now` (5 models, 6 endpoints in 2 groups, 4 API keys and
/// none, 90 % completed, 7 % failed, 3 % cancelled), written through `write_batch` in batches
/// of `batch`, so that `usage_summary` is kept as in production. Returns the time it took.
pub async fn fill_for_stats_bench(
    store: &dyn UsageStore,
    rows: u64,
    batch: usize,
    now: SystemTime,
) -> Duration {
    const MODELS: [&str; 5] = [
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "claude-3-5-haiku-20241022",
        "claude-sonnet-4-20250514",
    ];
    const KEYS: [Option<&str>; 5] = [
        None,
        Some("team-a"),
        Some("team-b"),
        Some("ci"),
        Some("bot"),
    ];
    let pricing = pricing();
    let span = Duration::from_secs(30 * 86_400);
    let first = now - span;
    let started = std::time::Instant::now();
    let mut pending: Vec<StoredRecord> = Vec::with_capacity(batch);
    for i in 0..rows {
        let offset = span.as_micros() as u64 * i / rows.max(1);
        let start = first + Duration::from_micros(offset);
        let status_value = match i % 100 {
            0..=89 => status::COMPLETED,
            90..=96 => status::FAILED,
            _ => status::CANCELLED,
        };
        let endpoint = i % 6;
        let mut record = outcome(
            &format!("bench-{i:010}"),
            start,
            status_value,
            MODELS[(i % 5) as usize],
            &format!("endpoint-{endpoint}"),
            if endpoint < 3 { "primary" } else { "backup" },
            tokens(500 + i % 2000, 50 + i % 700),
            200 + (i * 7919) % 30_000,
        );
        record.api_key_name = KEYS[(i % 5) as usize].map(str::to_string);
        pending.push(StoredRecord::price(record, &pricing));
        if pending.len() == batch {
            store.write_batch(&pending).await.unwrap();
            pending.clear();
        }
    }
    if !pending.is_empty() {
        store.write_batch(&pending).await.unwrap();
    }
    started.elapsed()
}

/// Times `store.stats` for the last `days` days before `now`, `runs` times; returns the
/// durations sorted (the median is the middle one) and the request count the stats found.
pub async fn time_stats(
    store: &dyn UsageStore,
    days: u64,
    runs: usize,
    now: SystemTime,
) -> (Vec<Duration>, u64) {
    let filter = RequestFilter {
        start: now.checked_sub(Duration::from_secs(days * 86_400)),
        ..RequestFilter::default()
    };
    let mut times = Vec::with_capacity(runs);
    let mut requests = 0;
    for _ in 0..runs {
        let started = std::time::Instant::now();
        let stats = store.stats(&filter).await.unwrap();
        times.push(started.elapsed());
        requests = stats.totals.request_count;
    }
    times.sort();
    (times, requests)
}

/// A [`SharedState`] change of `scope` to `state` written by `by`.
fn shared_change(scope: &str, state: &str, by: &str) -> SharedChange {
    SharedChange {
        scope: scope.into(),
        state: state.into(),
        updated_by: by.into(),
    }
}

/// The [`SharedState`] contract, on two handles `a` and `b` to one empty backing store (two
/// instances): creating a scope lets the first writer win; an update needs the current version;
/// a read shows the last writer and time; 20 concurrent read-modify-write increments from both
/// lose none. Leaves the scopes `group:main` and `counter` behind.
pub async fn shared_state_is_compare_and_set_on_the_version(
    a: Arc<dyn SharedState>,
    b: Arc<dyn SharedState>,
) {
    assert!(a.load_all().await.unwrap().is_empty());

    // Creating a scope: the first writer wins, the second conflicts.
    let created = a
        .apply(&shared_change("group:main", r#"{"paused":true}"#, "a"), 0)
        .await
        .unwrap();
    assert_eq!(created, ApplyOutcome::Applied { version: 1 });
    let late = b
        .apply(&shared_change("group:main", r#"{"paused":false}"#, "b"), 0)
        .await
        .unwrap();
    assert_eq!(late, ApplyOutcome::Conflict);

    // Updating: only with the current version.
    let stale = b
        .apply(&shared_change("group:main", r#"{"paused":false}"#, "b"), 7)
        .await
        .unwrap();
    assert_eq!(stale, ApplyOutcome::Conflict);
    let current = b.load("group:main").await.unwrap().unwrap();
    assert_eq!((current.version, current.updated_by.as_str()), (1, "a"));
    assert!(current.updated_at.is_some());
    let fresh = b
        .apply(&shared_change("group:main", r#"{"paused":false}"#, "b"), 1)
        .await
        .unwrap();
    assert_eq!(fresh, ApplyOutcome::Applied { version: 2 });
    let all = a.load_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].scope, "group:main");
    assert_eq!(all[0].state, r#"{"paused":false}"#);
    assert_eq!((all[0].version, all[0].updated_by.as_str()), (2, "b"));
    assert_eq!(a.load("nope").await.unwrap(), None);

    // Concurrent read-modify-write increments from both: none is lost.
    let handles = [a, b];
    let mut tasks = Vec::new();
    for (index, store) in handles.iter().enumerate() {
        for _ in 0..10 {
            let store = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                loop {
                    let current = store.load("counter").await.unwrap();
                    let (count, version) = current.map_or((0, 0), |setting| {
                        (setting.state.parse::<u64>().unwrap(), setting.version)
                    });
                    let next =
                        shared_change("counter", &(count + 1).to_string(), &index.to_string());
                    if let ApplyOutcome::Applied { .. } = store.apply(&next, version).await.unwrap()
                    {
                        break;
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counter = handles[0].load("counter").await.unwrap().unwrap();
    assert_eq!((counter.state.as_str(), counter.version), ("20", 20));
}
