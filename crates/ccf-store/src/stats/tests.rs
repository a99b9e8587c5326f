use super::*;
use crate::time::system_time;

fn at(text: &str) -> SystemTime {
    system_time(
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|time| time.with_timezone(&chrono::Utc))
            .unwrap(),
    )
}

fn shanghai() -> DayZone {
    DayZone::parse("Asia/Shanghai").unwrap()
}

#[test]
fn whole_local_days_come_from_the_summary_their_edges_from_hours_and_raw_rows() {
    let query = StatsQuery {
        start: Some(at("2026-03-01T10:20:00+08:00")),
        end: Some(at("2026-03-05T12:30:00+08:00")),
        ..StatsQuery::default()
    };
    let plan = plan_stats(&query, shanghai(), at("2026-03-05T12:30:00+08:00"));
    assert_eq!(
        plan.summary_days,
        Some(("2026-03-02".to_string(), "2026-03-04".to_string()))
    );
    let hour = |text: &str| crate::time::datetime(at(text)).timestamp();
    let mut hours: Vec<i64> = (11..24)
        .map(|h| hour(&format!("2026-03-01T{h:02}:00:00+08:00")))
        .collect();
    hours.extend((0..12).map(|h| hour(&format!("2026-03-05T{h:02}:00:00+08:00"))));
    assert_eq!(
        plan.summary_hours, hours,
        "13 hours on 1 March, 12 on 5 March"
    );
    assert_eq!(
        plan.unsummarized,
        Some(TimeSpan {
            start: Some(at("2026-03-01T03:00:00Z")),
            end: Some(at("2026-03-05T03:59:59.999999Z")),
        })
    );
    assert_eq!(
        plan.raw,
        vec![
            TimeSpan {
                start: Some(at("2026-03-01T02:20:00Z")),
                end: Some(at("2026-03-01T02:59:59.999999Z")),
            },
            TimeSpan {
                start: Some(at("2026-03-05T04:00:00Z")),
                end: Some(at("2026-03-05T04:30:00Z")),
            },
        ]
    );
    assert_eq!(
        plan.hours_from,
        at("2026-03-04T16:00:00Z"),
        "the range's last Shanghai day"
    );
}

#[test]
fn a_range_without_whole_days_reads_its_whole_hours_from_the_hourly_summary() {
    let query = StatsQuery {
        start: Some(at("2026-03-01T22:30:00Z")),
        end: None,
        ..StatsQuery::default()
    };
    let plan = plan_stats(&query, DayZone::Utc, at("2026-03-02T01:10:00Z"));
    assert_eq!(plan.summary_days, None);
    let hour = |text: &str| crate::time::datetime(at(text)).timestamp();
    assert_eq!(
        plan.summary_hours,
        vec![hour("2026-03-01T23:00:00Z"), hour("2026-03-02T00:00:00Z")]
    );
    assert_eq!(
        plan.raw,
        vec![
            TimeSpan {
                start: Some(at("2026-03-01T22:30:00Z")),
                end: Some(at("2026-03-01T22:59:59.999999Z")),
            },
            TimeSpan {
                start: Some(at("2026-03-02T01:00:00Z")),
                end: None,
            },
        ]
    );
}

#[test]
fn hours_of_a_half_hour_zone_start_at_half_past_utc() {
    let kolkata = DayZone::parse("Asia/Kolkata").unwrap();
    assert_eq!(
        hour_start(kolkata, at("2026-03-01T10:59:00+05:30")),
        crate::time::datetime(at("2026-03-01T10:00:00+05:30")).timestamp()
    );
    assert_eq!(
        hour_key(
            kolkata,
            crate::time::datetime(at("2026-03-01T04:30:00Z")).timestamp()
        ),
        "2026-03-01T10:00:00+05:30"
    );
}

#[test]
fn filters_the_summary_cannot_answer_read_raw_rows_for_the_whole_range() {
    let query = StatsQuery {
        start: Some(at("2026-03-01T00:00:00Z")),
        end: Some(at("2026-03-05T00:00:00Z")),
        status: Some("failed".into()),
        ..StatsQuery::default()
    };
    let plan = plan_stats(&query, DayZone::Utc, at("2026-03-05T00:00:00Z"));
    assert_eq!(plan.summary_days, None);
    assert_eq!(
        plan.raw,
        vec![TimeSpan {
            start: query.start,
            end: query.end
        }]
    );
}

#[test]
fn a_range_inside_one_hour_is_all_raw() {
    let query = StatsQuery {
        start: Some(at("2026-03-01T01:10:00Z")),
        end: Some(at("2026-03-01T01:50:00Z")),
        ..StatsQuery::default()
    };
    let plan = plan_stats(&query, DayZone::Utc, at("2026-03-01T02:00:00Z"));
    assert_eq!(plan.summary_days, None);
    assert!(plan.summary_hours.is_empty());
    assert_eq!(
        plan.raw,
        vec![TimeSpan {
            start: query.start,
            end: query.end
        }]
    );
}

#[test]
fn raw_quarter_hours_land_on_local_days_and_hours() {
    let sums = |n: i64| Sums {
        request_count: n,
        success_count: n,
        duration_sum_ms: 100 * n,
        duration_count: n,
        ..Sums::default()
    };
    // 23:30 UTC on 1 March is 07:30 on 2 March in Shanghai; 00:30 UTC on 2 March is 08:30.
    let late = at("2026-03-01T23:30:00Z");
    let early = at("2026-03-02T00:30:00Z");
    let quarter = |time: SystemTime| crate::time::datetime(time).timestamp() / QUARTER_HOUR_SECS;
    let raw = vec![
        RawSlice {
            quarter_hour: quarter(late),
            model: "m".into(),
            sums: sums(1),
            ..RawSlice::default()
        },
        RawSlice {
            quarter_hour: quarter(early),
            model: "m".into(),
            sums: sums(2),
            ..RawSlice::default()
        },
    ];
    let summary = vec![SummarySlice {
        date: "2026-03-01".into(),
        model: "unknown".into(),
        endpoint: "e".into(),
        group: String::new(),
        sums: sums(4),
    }];
    let readings = StatsReadings {
        summary,
        key_summary: vec![KeySummarySlice {
            date: "2026-03-01".into(),
            api_key: "team".into(),
            sums: sums(4),
        }],
        hour_summary: vec![SummarySlice {
            date: "2026-03-02T09:00:00+08:00".into(),
            model: "m".into(),
            endpoint: "e".into(),
            group: String::new(),
            sums: sums(8),
        }],
        hour_key_summary: vec![KeySummarySlice {
            date: "2026-03-02T09:00:00+08:00".into(),
            api_key: "team".into(),
            sums: sums(8),
        }],
        raw,
        api_keys: None,
        hours_from: Some(at("2026-03-02T08:00:00+08:00")),
        p95_duration_ms: Some(7),
    };
    let stats = compose_stats(shanghai(), &readings);
    let keys: Vec<_> = stats
        .by_api_key
        .iter()
        .map(|b| (b.key.as_str(), b.aggregate.request_count))
        .collect();
    assert_eq!(keys, vec![("team", 12), ("", 3)]);
    let days: Vec<_> = stats
        .by_day
        .iter()
        .map(|b| (b.key.as_str(), b.aggregate.request_count))
        .collect();
    assert_eq!(days, vec![("2026-03-01", 4), ("2026-03-02", 11)]);
    let hours: Vec<_> = stats
        .by_hour
        .iter()
        .map(|b| (b.key.as_str(), b.aggregate.request_count))
        .collect();
    assert_eq!(
        hours,
        vec![
            ("2026-03-02T08:00:00+08:00", 2),
            ("2026-03-02T09:00:00+08:00", 8)
        ],
        "the 07:30 slice is before the hourly buckets' start"
    );
    let models: Vec<_> = stats
        .by_model
        .iter()
        .map(|b| (b.key.as_str(), b.aggregate.request_count))
        .collect();
    assert_eq!(models, vec![("m", 11), ("", 4)]);
    assert_eq!(stats.totals.request_count, 15);
    assert_eq!(stats.totals.avg_duration_ms, Some(100.0));
    assert_eq!(stats.p95_duration_ms, Some(7));
}

#[test]
fn p95_is_the_nearest_rank() {
    assert_eq!(p95(Vec::new()), None);
    assert_eq!(p95((1..=100).rev().collect()), Some(95));
    assert_eq!(p95(vec![5]), Some(5));
    assert_eq!(p95((1..=21).collect()), Some(20));
}
