//! The account of a `cargo xtask cluster` run: every client request matched with the row its
//! answer left in `request_logs`, per instance, and the checks that decide the exit status.
//!
//! The rule for the killed instance: the recorder writes a finished request's row at the next
//! tick of `flush_interval` (or a full batch), so a SIGKILL loses at most the rows handed over
//! since the last flush that committed. Every answer of the killed instance without a row must
//! therefore have reached the client within [`FLUSH_INTERVAL`] + [`FLUSH_SLACK`] before the kill;
//! the number of its answers in that window is the printed bound.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The instances' `usage_tracking.flush_interval`.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Added to the flush interval for the killed instance's bound: the batch write in progress
/// at the kill, and the moment between the forwarder handing the record over and the client
/// seeing the end of the answer.
pub(super) const FLUSH_SLACK: Duration = Duration::from_millis(500);

/// What happened to one client request (its attempts included).
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    /// `x-ccf-request-id` of the answer; `None` when both attempts failed.
    pub(super) request_id: Option<String>,
    /// The instance that answered (from the balancer's `x-ccf-upstream`).
    pub(super) instance: Option<String>,
    /// When the client had the whole answer.
    pub(super) answered_at: Instant,
    /// Whether the first attempt failed and the request was sent again.
    pub(super) retried: bool,
    /// Why the last failed attempt failed (the first attempt's reason when the retry worked).
    pub(super) error: Option<String>,
}

/// The account of the run, per instance.
#[derive(Debug, Default)]
pub(super) struct Report {
    sent: usize,
    answered: usize,
    retried: usize,
    /// Why first attempts failed (then retried), with counts.
    retry_reasons: BTreeMap<String, usize>,
    unanswered: Vec<String>,
    /// Per instance id: answers, rows, answers without a row.
    per_instance: BTreeMap<String, InstanceCount>,
    /// Rows whose request id no answer carries (a failed first attempt, say).
    rows_without_answer: usize,
    /// Answers whose row is stored under another instance.
    misattributed: usize,
    duplicates: Vec<(String, u64)>,
    /// The killed instance: answers without a row, answers within the last flush interval
    /// before the kill, and missing rows answered before that window.
    killed_missing: usize,
    killed_bound: usize,
    killed_missing_outside: usize,
    /// Answers the balancer attributed to no known instance.
    unknown_instance: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct InstanceCount {
    answered: usize,
    rows: usize,
    missing: usize,
}

impl Report {
    /// Matches the answers with the stored rows. `instances` are the ids and proxy ports; an
    /// answer names its instance by id (HAProxy) or by `127.0.0.1:port` (nginx).
    pub(super) fn build(
        outcomes: &[Outcome],
        rows: &[(String, String)],
        duplicates: &[(String, u64)],
        instances: &[(String, u16)],
        killed: &str,
        killed_at: Instant,
    ) -> Report {
        let mut report = Report {
            sent: outcomes.len(),
            duplicates: duplicates.to_vec(),
            ..Report::default()
        };
        for (id, _) in instances {
            report
                .per_instance
                .insert(id.clone(), InstanceCount::default());
        }
        let stored: BTreeMap<&str, &str> = rows
            .iter()
            .map(|(instance, request)| (request.as_str(), instance.as_str()))
            .collect();
        for (instance, _) in rows {
            report
                .per_instance
                .entry(instance.clone())
                .or_default()
                .rows += 1;
        }
        let window_start = killed_at
            .checked_sub(FLUSH_INTERVAL + FLUSH_SLACK)
            .unwrap_or(killed_at);
        let mut answered_ids = BTreeSet::new();
        for outcome in outcomes {
            if outcome.retried {
                report.retried += 1;
                if outcome.request_id.is_some() {
                    let reason = outcome.error.clone().unwrap_or_default();
                    *report.retry_reasons.entry(reason).or_default() += 1;
                }
            }
            let (Some(request_id), Some(instance)) = (&outcome.request_id, &outcome.instance)
            else {
                report
                    .unanswered
                    .push(outcome.error.clone().unwrap_or_default());
                continue;
            };
            report.answered += 1;
            answered_ids.insert(request_id.as_str());
            let Some(id) = resolve_instance(instance, instances) else {
                report.unknown_instance += 1;
                continue;
            };
            let in_window = outcome.answered_at > window_start && outcome.answered_at <= killed_at;
            let count = report.per_instance.entry(id.clone()).or_default();
            count.answered += 1;
            match stored.get(request_id.as_str()) {
                Some(row_instance) if *row_instance == id => {}
                Some(_) => report.misattributed += 1,
                None => {
                    count.missing += 1;
                    if id == killed {
                        report.killed_missing += 1;
                        if !in_window {
                            report.killed_missing_outside += 1;
                        }
                    }
                }
            }
            if id == killed && in_window {
                report.killed_bound += 1;
            }
        }
        report.rows_without_answer = rows
            .iter()
            .filter(|(_, request)| !answered_ids.contains(request.as_str()))
            .count();
        report
    }

    /// Prints the table and the checks; the failed checks' descriptions.
    pub(super) fn print(
        &self,
        killed: &str,
        bindings: usize,
        all_keys: usize,
        linked: bool,
    ) -> Vec<String> {
        println!("\n| instance | answered | rows stored | answered without a row |");
        println!("|---|---|---|---|");
        for (id, count) in &self.per_instance {
            println!(
                "| {id} | {} | {} | {} |",
                count.answered, count.rows, count.missing
            );
        }
        println!(
            "\nrequests sent {}, answered {}, retried by the client {}, unanswered after the retry {}",
            self.sent,
            self.answered,
            self.retried,
            self.unanswered.len()
        );
        for (reason, count) in &self.retry_reasons {
            println!("  retried {count}× after: {reason}");
        }
        let mut unanswered: BTreeMap<&str, usize> = BTreeMap::new();
        for reason in &self.unanswered {
            *unanswered.entry(reason.as_str()).or_default() += 1;
        }
        for (reason, count) in unanswered {
            println!("  unanswered {count}× (the retry failed too): {reason}");
        }
        println!(
            "rows stored {} (of which without an answer: {}), duplicate request ids {}",
            self.per_instance.values().map(|c| c.rows).sum::<usize>(),
            self.rows_without_answer,
            self.duplicates.len()
        );
        println!(
            "{killed} (SIGKILL): {} answered without a row; bound = {} answered in its last flush interval ({} ms + {} ms) before the kill; {} missing answered before that window",
            self.killed_missing,
            self.killed_bound,
            FLUSH_INTERVAL.as_millis(),
            FLUSH_SLACK.as_millis(),
            self.killed_missing_outside
        );
        println!("Redis: {bindings} session bindings, {all_keys} keys under the run's prefix");

        let checks = self.checks(killed, bindings, linked);
        for check in &checks {
            let mark = if check.passed { "ok" } else { "FAILED" };
            println!("[{mark}] {}", check.what);
        }
        checks
            .into_iter()
            .filter(|check| !check.passed)
            .map(|check| check.what)
            .collect()
    }

    /// The checks of the run: passed or failed, each with what it says.
    fn checks(&self, killed: &str, bindings: usize, linked: bool) -> Vec<Check> {
        let lost_elsewhere: usize = self
            .per_instance
            .iter()
            .filter(|(id, _)| id.as_str() != killed)
            .map(|(_, count)| count.missing)
            .sum();
        vec![
            Check::new(
                self.unanswered.is_empty(),
                format!(
                    "every request answered after at most one retry ({} not{})",
                    self.unanswered.len(),
                    self.unanswered
                        .first()
                        .map(|e| format!(", first: {e}"))
                        .unwrap_or_default()
                ),
            ),
            Check::new(
                self.duplicates.is_empty(),
                format!("no request id stored twice ({})", self.duplicates.len()),
            ),
            Check::new(
                self.unknown_instance == 0 && self.misattributed == 0,
                format!(
                    "every answer attributed to an instance and its row stored under that instance ({} unknown, {} elsewhere)",
                    self.unknown_instance, self.misattributed
                ),
            ),
            Check::new(
                lost_elsewhere == 0,
                format!("no row lost on the instances not killed ({lost_elsewhere} lost)"),
            ),
            Check::new(
                self.killed_missing <= self.killed_bound && self.killed_missing_outside == 0,
                format!(
                    "the killed instance lost only answers of its last flush interval ({} lost, bound {})",
                    self.killed_missing, self.killed_bound
                ),
            ),
            Check::new(
                linked && bindings > 0,
                format!(
                    "every instance linked through Redis at the start and session bindings shared there ({bindings}{})",
                    if linked { "" } else { "; an instance had no connected link" }
                ),
            ),
        ]
    }
}

/// One check of the run.
#[derive(Debug)]
struct Check {
    passed: bool,
    what: String,
}

impl Check {
    fn new(passed: bool, what: String) -> Check {
        Check { passed, what }
    }
}

/// The instance id an answer's `x-ccf-upstream` names: the id itself (HAProxy's server name)
/// or the instance's `127.0.0.1:port` (nginx's `$upstream_addr`).
fn resolve_instance(named: &str, instances: &[(String, u16)]) -> Option<String> {
    instances
        .iter()
        .find(|(id, port)| id == named || format!("127.0.0.1:{port}") == named)
        .map(|(id, _)| id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three instances on ports 8101..8103; `cluster-3` is the killed one.
    fn instances() -> Vec<(String, u16)> {
        (1..=3)
            .map(|n| (format!("cluster-{n}"), 8100 + n))
            .collect()
    }

    /// An answer from `instance` (as nginx names it) that reached the client `before_kill`
    /// before the kill.
    fn answer(id: &str, instance: &str, kill: Instant, before_kill: Duration) -> Outcome {
        Outcome {
            request_id: Some(id.to_string()),
            instance: Some(instance.to_string()),
            answered_at: kill - before_kill,
            retried: false,
            error: None,
        }
    }

    fn row(instance: &str, id: &str) -> (String, String) {
        (instance.to_string(), id.to_string())
    }

    /// The failed checks' texts for these answers, rows and duplicates.
    fn failed(
        outcomes: &[Outcome],
        rows: &[(String, String)],
        duplicates: &[(String, u64)],
    ) -> Vec<String> {
        let kill = outcomes
            .first()
            .map(|o| o.answered_at + Duration::from_secs(10))
            .unwrap_or_else(Instant::now);
        let report = Report::build(outcomes, rows, duplicates, &instances(), "cluster-3", kill);
        report
            .checks("cluster-3", 1, true)
            .into_iter()
            .filter(|check| !check.passed)
            .map(|check| check.what)
            .collect()
    }

    #[test]
    fn the_killed_instance_may_lose_only_answers_of_its_last_flush_interval() {
        let kill = Instant::now() + Duration::from_secs(60);
        let early = Duration::from_secs(5);
        let late = Duration::from_millis(300);
        let outcomes = vec![
            answer("a", "127.0.0.1:8101", kill, early),
            answer("b", "127.0.0.1:8103", kill, early),
            answer("c", "127.0.0.1:8103", kill, late),
            answer("d", "127.0.0.1:8102, 127.0.0.1:8103", kill, late),
        ];
        let report = Report::build(
            &outcomes,
            &[row("cluster-1", "a"), row("cluster-3", "b")],
            &[],
            &instances(),
            "cluster-3",
            kill,
        );
        // `d` names two upstreams: the caller keeps the last one, so this one is unknown.
        assert_eq!(report.unknown_instance, 1);
        assert_eq!(report.killed_missing, 1);
        assert_eq!(report.killed_bound, 1);
        assert_eq!(report.killed_missing_outside, 0);

        // A row lost from before the window fails the check.
        let report = Report::build(
            &outcomes[..3],
            &[row("cluster-1", "a"), row("cluster-3", "c")],
            &[],
            &instances(),
            "cluster-3",
            kill,
        );
        assert_eq!(report.killed_missing_outside, 1);
        let failed: Vec<_> = report
            .checks("cluster-3", 1, true)
            .into_iter()
            .filter(|check| !check.passed)
            .map(|check| check.what)
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].starts_with("the killed instance lost only"),
            "{failed:?}"
        );
    }

    #[test]
    fn every_stored_answer_passes_every_check() {
        let kill = Instant::now() + Duration::from_secs(60);
        let outcomes = vec![
            answer("a", "127.0.0.1:8101", kill, Duration::from_secs(9)),
            answer("b", "cluster-2", kill, Duration::from_secs(8)),
        ];
        let rows = [
            row("cluster-1", "a"),
            row("cluster-2", "b"),
            row("cluster-3", "x"),
        ];
        assert_eq!(failed(&outcomes, &rows, &[]), Vec::<String>::new());
        let report = Report::build(&outcomes, &rows, &[], &instances(), "cluster-3", kill);
        assert_eq!(report.rows_without_answer, 1);
        assert_eq!(report.per_instance["cluster-3"].rows, 1);
    }

    #[test]
    fn each_kind_of_loss_or_mistake_fails_its_check() {
        let kill = Instant::now() + Duration::from_secs(60);
        let a = answer("a", "127.0.0.1:8101", kill, Duration::from_secs(9));
        let unanswered = Outcome {
            request_id: None,
            instance: None,
            answered_at: kill,
            retried: true,
            error: Some("status 502".into()),
        };
        for (name, outcomes, rows, duplicates, expected) in [
            (
                "row lost on a live instance",
                vec![a.clone()],
                vec![],
                vec![],
                "no row lost on the instances not killed (1 lost)",
            ),
            (
                "row under another instance",
                vec![a.clone()],
                vec![row("cluster-2", "a")],
                vec![],
                "every answer attributed to an instance and its row stored under that instance (0 unknown, 1 elsewhere)",
            ),
            (
                "request id stored twice",
                vec![a.clone()],
                vec![row("cluster-1", "a")],
                vec![("a".to_string(), 2)],
                "no request id stored twice (1)",
            ),
            (
                "request never answered",
                vec![a.clone(), unanswered.clone()],
                vec![row("cluster-1", "a")],
                vec![],
                "every request answered after at most one retry (1 not, first: status 502)",
            ),
        ] {
            assert_eq!(
                failed(&outcomes, &rows, &duplicates),
                vec![expected.to_string()],
                "{name}"
            );
        }
    }

    #[test]
    fn missing_redis_bindings_or_an_unlinked_instance_fail() {
        let report = Report::default();
        let outcome = |bindings, linked| {
            report
                .checks("cluster-3", bindings, linked)
                .last()
                .map(|check| check.passed)
        };
        assert_eq!(outcome(0, true), Some(false));
        assert_eq!(outcome(3, true), Some(true));
        assert_eq!(outcome(3, false), Some(false));
    }
}
