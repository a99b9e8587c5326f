//! Per-key limits (`auth.tokens[].limits`): requests per rolling minute, requests in flight at
//! once (more wait in a FIFO queue up to `auth.queue_timeout`), and daily / monthly budgets in
//! USD, enforced at admission for the API key a request authenticated with.
//!
//! Spend is counted here, in memory, from the exact cost of every finished outcome (added by
//! whoever prices it: the usage recorder through `monitoring::CostCounter`, or the engine's own
//! cost model) and seeded from the store at start, so enforcement is never behind by a store
//! flush. Budget periods come from a [`BudgetCalendar`] (midnight and the first of the month in
//! the configured `timezone`) that the application installs; this crate knows no time zones
//! database beyond UTC. A key reaching a budget publishes [`ForwarderEvent::KeyBudgetExceeded`]
//! once per key, budget and period.
//!
//! The rate window is a log of the admission instants of the last minute (at most
//! `requests_per_minute` of them per key): exact, it says when the next slot frees (the
//! `retry-after`) and what the current rate is for the dashboard, which a token bucket does not.
//! The concurrency queue is a tokio [`Semaphore`] (FIFO fair): a client that leaves while queued
//! drops its `acquire` future, which takes it out of the queue.
//!
//! It must not know how requests are routed or priced: only key names, limits and amounts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ccf_config::{AuthConfig, KeyLimitsConfig};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Offset, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::{ClusterLink, SharedUpdate};
use crate::events::{BudgetPeriod, EventBus, ForwarderEvent};

/// The rolling window `requests_per_minute` counts in.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// One budget period: when it started, when it ends (the reset) and that end as shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpan {
    /// The first instant of the period.
    pub start: SystemTime,
    /// The first instant of the next period: when the budget resets.
    pub end: SystemTime,
    /// `end` as RFC 3339 with the zone's offset, e.g. `2026-12-05T00:00:00+08:00`.
    pub end_text: String,
}

/// The day and the month an instant falls in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetPeriods {
    /// The local calendar day.
    pub day: BudgetSpan,
    /// The local calendar month.
    pub month: BudgetSpan,
}

impl BudgetPeriods {
    /// The periods of `now` in a zone given by its three calendar functions: the local date of
    /// an instant, the first instant of a local date, and the offset in force at an instant.
    pub fn from_zone(
        now: SystemTime,
        date_of: impl Fn(SystemTime) -> NaiveDate,
        day_start: impl Fn(NaiveDate) -> SystemTime,
        offset_at: impl Fn(SystemTime) -> FixedOffset,
    ) -> BudgetPeriods {
        let span = |first: NaiveDate, next: Option<NaiveDate>| {
            let start = day_start(first);
            let end = next
                .map(&day_start)
                .unwrap_or(start + Duration::from_secs(86_400));
            let end_text = DateTime::<Utc>::from(end)
                .with_timezone(&offset_at(end))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
            BudgetSpan {
                start,
                end,
                end_text,
            }
        };
        let today = date_of(now);
        let month_first = today.with_day(1).unwrap_or(today);
        let next_month = if month_first.month() == 12 {
            NaiveDate::from_ymd_opt(month_first.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(month_first.year(), month_first.month() + 1, 1)
        };
        BudgetPeriods {
            day: span(today, today.succ_opt()),
            month: span(month_first, next_month),
        }
    }

    /// The periods of `now` in UTC.
    pub fn utc(now: SystemTime) -> BudgetPeriods {
        let utc = Utc.fix();
        BudgetPeriods::from_zone(
            now,
            |time| DateTime::<Utc>::from(time).date_naive(),
            |date| SystemTime::from(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()),
            |_| utc,
        )
    }
}

/// Tells the budget periods an instant falls in (installed by the application from the
/// configured `timezone`; UTC until then).
pub type BudgetCalendar = Arc<dyn Fn(SystemTime) -> BudgetPeriods + Send + Sync>;

/// Why a request of a limited key is refused (429 `rate_limit_error`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyRefusal {
    /// `requests_per_minute` requests were already admitted in the last minute.
    #[error("API key '{key}' is over its limit of {limit} requests per minute; retry in {retry_after_secs} s")]
    Rate {
        /// The key's name.
        key: String,
        /// The configured limit.
        limit: u32,
        /// Seconds until the oldest admission of the window leaves it.
        retry_after_secs: u64,
    },
    /// `concurrency` requests stayed in flight for the whole `auth.queue_timeout`.
    #[error("API key '{key}' has {limit} requests in flight (its concurrency limit) and none finished within {}s (auth.queue_timeout)", .waited.as_secs_f64())]
    Concurrency {
        /// The key's name.
        key: String,
        /// The configured limit.
        limit: u32,
        /// How long the request waited in the queue.
        waited: Duration,
    },
    /// A daily or monthly budget is spent.
    #[error("API key '{key}' reached its {} budget of ${budget_usd:.2} (spent ${spent_usd:.2}); it resets at {resets_at}", .period.as_str())]
    Budget {
        /// The key's name.
        key: String,
        /// Which budget.
        period: BudgetPeriod,
        /// The budget, USD.
        budget_usd: f64,
        /// Spent in the period, USD.
        spent_usd: f64,
        /// When the period ends, RFC 3339 in the configured zone.
        resets_at: String,
        /// Seconds until then.
        retry_after_secs: u64,
    },
}

impl KeyRefusal {
    /// `rate`, `concurrency` or `budget`: the `reason` label of `ccf_key_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyRefusal::Rate { .. } => "rate",
            KeyRefusal::Concurrency { .. } => "concurrency",
            KeyRefusal::Budget { .. } => "budget",
        }
    }

    /// The key refused.
    pub fn key(&self) -> &str {
        match self {
            KeyRefusal::Rate { key, .. }
            | KeyRefusal::Concurrency { key, .. }
            | KeyRefusal::Budget { key, .. } => key,
        }
    }

    /// The `retry-after` to answer with, in whole seconds (at least 1), when a time is known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            KeyRefusal::Rate {
                retry_after_secs, ..
            }
            | KeyRefusal::Budget {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            KeyRefusal::Concurrency { .. } => None,
        }
    }
}

/// One key's limits and usage now, for the admin API, the dashboard and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyLimitView {
    /// The key's configured name (never the key itself).
    pub name: String,
    /// Its limits (absent ones do not limit).
    pub limits: KeyLimitsConfig,
    /// Spent today (local day of `timezone`), USD.
    pub spent_today_usd: f64,
    /// Spent this calendar month, USD.
    pub spent_this_month_usd: f64,
    /// When today's spend resets.
    pub day_resets_at: SystemTime,
    /// When this month's spend resets.
    pub month_resets_at: SystemTime,
    /// Requests admitted in the last minute.
    pub requests_last_minute: u32,
    /// Requests of this key in flight now.
    pub in_flight: u32,
    /// Requests waiting for a concurrency slot now.
    pub queued: u32,
    /// The budget refusing its requests now, if any (daily first).
    pub budget_exceeded: Option<BudgetPeriod>,
}

/// Counts shared by a key's state and its permits.
#[derive(Debug, Default)]
struct KeyCounters {
    in_flight: AtomicU32,
    queued: AtomicU32,
}

/// A key's concurrency limit: a FIFO semaphore whose size follows reloads.
#[derive(Debug)]
struct ConcurrencyGate {
    semaphore: Arc<Semaphore>,
    limit: AtomicU32,
    /// Permits to forget as they are released: a lowered limit with more permits in use than
    /// the new limit allows.
    debt: AtomicU32,
}

impl ConcurrencyGate {
    fn new(limit: u32) -> ConcurrencyGate {
        ConcurrencyGate {
            semaphore: Arc::new(Semaphore::new(
                usize::try_from(limit)
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            )),
            limit: AtomicU32::new(limit),
            debt: AtomicU32::new(0),
        }
    }

    /// Changes the limit without touching the permits held: a raise frees slots at once, a cut
    /// takes free slots and then the next released ones.
    fn resize(&self, limit: u32) {
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            let mut grow = limit - old;
            let previous_debt = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                    Some(debt.saturating_sub(grow))
                })
                .unwrap_or(0);
            grow -= previous_debt.min(grow);
            self.semaphore
                .add_permits(usize::try_from(grow).unwrap_or(0));
        } else if limit < old {
            let shrink = old - limit;
            let forgotten = self
                .semaphore
                .forget_permits(usize::try_from(shrink).unwrap_or(0));
            let unpaid = shrink.saturating_sub(u32::try_from(forgotten).unwrap_or(shrink));
            self.debt.fetch_add(unpaid, Ordering::AcqRel);
        }
    }

    /// Takes one unit of debt if there is any.
    fn take_debt(&self) -> bool {
        self.debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                debt.checked_sub(1)
            })
            .is_ok()
    }
}

/// A key's spend in its current day and month.
#[derive(Debug, Default)]
struct Spend {
    day_start: Option<SystemTime>,
    day_usd: f64,
    month_start: Option<SystemTime>,
    month_usd: f64,
    /// The period (by its start) whose budget crossing was already published.
    announced_day: Option<SystemTime>,
    announced_month: Option<SystemTime>,
}

impl Spend {
    /// Starts a new day or month at zero when `periods` is a later one than the counted.
    fn roll(&mut self, periods: &BudgetPeriods) {
        if self.day_start != Some(periods.day.start) {
            self.day_start = Some(periods.day.start);
            self.day_usd = 0.0;
        }
        if self.month_start != Some(periods.month.start) {
            self.month_start = Some(periods.month.start);
            self.month_usd = 0.0;
        }
    }

    /// The budget spent now, if any (daily first), with its period's budget and spend.
    fn exceeded(
        &self,
        limits: &KeyLimitsConfig,
        periods: &BudgetPeriods,
    ) -> Option<(BudgetPeriod, f64, f64, BudgetSpan)> {
        if let Some(budget) = limits
            .daily_budget_usd
            .filter(|budget| self.day_usd >= *budget)
        {
            return Some((
                BudgetPeriod::Daily,
                budget,
                self.day_usd,
                periods.day.clone(),
            ));
        }
        limits
            .monthly_budget_usd
            .filter(|budget| self.month_usd >= *budget)
            .map(|budget| {
                (
                    BudgetPeriod::Monthly,
                    budget,
                    self.month_usd,
                    periods.month.clone(),
                )
            })
    }
}

/// One key's state.
#[derive(Debug, Default)]
struct KeyState {
    limits: KeyLimitsConfig,
    /// Admission instants of the last minute (only kept with `requests_per_minute`).
    admitted: VecDeque<Instant>,
    gate: Option<Arc<ConcurrencyGate>>,
    counters: Arc<KeyCounters>,
    spend: Spend,
}

/// Every key's state, under one lock (held for a few arithmetic steps, never across an await).
#[derive(Debug, Default)]
struct State {
    /// Configured key names, in configuration order (what the views list).
    order: Vec<String>,
    keys: HashMap<String, KeyState>,
    queue_timeout: Duration,
}

/// The per-key limits of the forwarder; shared by every clone.
pub struct KeyLimits {
    state: Mutex<State>,
    calendar: RwLock<BudgetCalendar>,
    events: EventBus,
    /// The other instances (`cluster.redis_url`): spend is shared with them, and rate and
    /// concurrency are counted in their shared counters while those answer.
    cluster: OnceLock<Arc<dyn ClusterLink>>,
}

impl std::fmt::Debug for KeyLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimits").finish_non_exhaustive()
    }
}

/// A request's hold on its key: counts it in flight and, with a concurrency limit, holds one
/// slot; both are released when it is dropped (when the answer's body ends or is dropped).
#[derive(Debug)]
pub(crate) struct KeyPermit {
    counters: Arc<KeyCounters>,
    slot: Option<(Arc<ConcurrencyGate>, OwnedSemaphorePermit)>,
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some((gate, permit)) = self.slot.take() {
            if gate.take_debt() {
                permit.forget();
            }
        }
    }
}

/// Counts a request as queued while it waits for a slot (dropped with the waiting future when
/// the client leaves).
struct QueuedGuard(Arc<KeyCounters>);

impl QueuedGuard {
    fn enter(counters: &Arc<KeyCounters>) -> QueuedGuard {
        counters.queued.fetch_add(1, Ordering::AcqRel);
        QueuedGuard(Arc::clone(counters))
    }
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl KeyLimits {
    /// The limits `auth` configures, publishing budget crossings on `events`; periods in UTC
    /// until [`KeyLimits::set_calendar`].
    pub fn new(auth: &AuthConfig, events: EventBus) -> KeyLimits {
        let limits = KeyLimits {
            state: Mutex::new(State::default()),
            calendar: RwLock::new(Arc::new(BudgetPeriods::utc)),
            events,
            cluster: OnceLock::new(),
        };
        limits.reconfigure(auth);
        limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The budget periods `now` falls in, by the installed calendar.
    pub fn periods(&self, now: SystemTime) -> BudgetPeriods {
        let calendar = Arc::clone(&self.calendar.read().unwrap_or_else(PoisonError::into_inner));
        calendar(now)
    }

    /// Installs the calendar budgets are counted in (the configured `timezone`).
    pub fn set_calendar(&self, calendar: BudgetCalendar) {
        *self
            .calendar
            .write()
            .unwrap_or_else(PoisonError::into_inner) = calendar;
    }

    /// Hot reload: applies `auth`'s limits and queue timeout. Spend, the rate window and the
    /// requests in flight are kept by key name; a changed concurrency limit resizes the queue's
    /// slots (a cut takes effect as requests finish).
    pub fn reconfigure(&self, auth: &AuthConfig) {
        let configured: Vec<(String, KeyLimitsConfig)> = auth
            .named_tokens()
            .into_iter()
            .map(|(name, _token)| {
                let limits = auth
                    .tokens
                    .iter()
                    .find(|entry| entry.name == name)
                    .map(|entry| entry.limits.clone())
                    .unwrap_or_default();
                (name, limits)
            })
            .collect();
        let mut state = self.lock();
        state.queue_timeout = auth.queue_timeout.get();
        for key in state.keys.values_mut() {
            key.limits = KeyLimitsConfig::default();
        }
        state.order = configured.iter().map(|(name, _)| name.clone()).collect();
        for (name, limits) in configured {
            let key = state.keys.entry(name).or_default();
            key.gate = match (key.gate.take(), limits.concurrency) {
                (_, None) => None,
                (Some(gate), Some(limit)) => {
                    gate.resize(limit);
                    Some(gate)
                }
                (None, Some(limit)) => Some(Arc::new(ConcurrencyGate::new(limit))),
            };
            if limits.requests_per_minute.is_none() {
                key.admitted.clear();
            }
            key.limits = limits;
        }
        for key in state.keys.values_mut() {
            if key.limits.concurrency.is_none() {
                key.gate = None;
            }
        }
    }

    /// Admits a request made with `key`: refused when a budget is spent or the rate is used up,
    /// else (after waiting in the key's queue if its concurrency is in use, at most
    /// `auth.queue_timeout`) a permit to hold until the answer ends. `None` for a key with no
    /// state (not configured).
    pub(crate) async fn admit(&self, key: &str) -> Result<Option<KeyPermit>, KeyRefusal> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let periods = self.periods(wall);
        let (counters, gate, queue_timeout) = {
            let mut state = self.lock();
            let queue_timeout = state.queue_timeout;
            let Some(entry) = state.keys.get_mut(key) else {
                return Ok(None);
            };
            entry.spend.roll(&periods);
            if let Some((period, budget_usd, spent_usd, span)) =
                entry.spend.exceeded(&entry.limits, &periods)
            {
                return Err(KeyRefusal::Budget {
                    key: key.to_string(),
                    period,
                    budget_usd,
                    spent_usd,
                    retry_after_secs: span
                        .end
                        .duration_since(wall)
                        .unwrap_or_default()
                        .as_secs_f64()
                        .ceil() as u64,
                    resets_at: span.end_text,
                });
            }
            if let Some(limit) = entry.limits.requests_per_minute {
                while entry
                    .admitted
                    .front()
                    .is_some_and(|at| now.duration_since(*at) >= RATE_WINDOW)
                {
                    entry.admitted.pop_front();
                }
                let full = entry.admitted.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
                if let Some(oldest) = entry.admitted.front().filter(|_| full) {
                    let frees_in = RATE_WINDOW.saturating_sub(now.duration_since(*oldest));
                    return Err(KeyRefusal::Rate {
                        key: key.to_string(),
                        limit,
                        retry_after_secs: frees_in.as_secs_f64().ceil() as u64,
                    });
                }
                entry.admitted.push_back(now);
            }
            (
                Arc::clone(&entry.counters),
                entry.gate.clone(),
                queue_timeout,
            )
        };
        let slot = match gate {
            None => None,
            Some(gate) => {
                let _queued = QueuedGuard::enter(&counters);
                let waiting = Arc::clone(&gate.semaphore).acquire_owned();
                match tokio::time::timeout(queue_timeout, waiting).await {
                    Ok(Ok(permit)) => Some((gate, permit)),
                    Ok(Err(_)) | Err(_) => {
                        return Err(KeyRefusal::Concurrency {
                            key: key.to_string(),
                            limit: gate.limit.load(Ordering::Acquire),
                            waited: queue_timeout,
                        })
                    }
                }
            }
        };
        counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Some(KeyPermit { counters, slot }))
    }

    /// Counts `usd` spent by `key` on an outcome that finished at `at`; publishes
    /// [`ForwarderEvent::KeyBudgetExceeded`] when this crosses one of its budgets (once per
    /// budget and period).
    pub fn add_spend(&self, key: &str, usd: f64, at: SystemTime) {
        if !usd.is_finite() || usd <= 0.0 {
            return;
        }
        let periods = self.periods(at);
        let (crossed, day_usd, month_usd) = {
            let mut state = self.lock();
            let entry = state.keys.entry(key.to_string()).or_default();
            entry.spend.roll(&periods);
            entry.spend.day_usd += usd;
            entry.spend.month_usd += usd;
            (
                announce(key, entry, &periods),
                entry.spend.day_usd,
                entry.spend.month_usd,
            )
        };
        if let Some(link) = self.cluster.get() {
            link.publish(SharedUpdate::Spend {
                key: key.to_string(),
                usd,
                at,
                day_start: periods.day.start,
                day_usd,
                month_start: periods.month.start,
                month_usd,
            });
        }
        for event in crossed {
            tracing::warn!(key = %key, "{}", budget_log(&event));
            self.events.publish(event);
        }
    }

    /// Installs the link to the other instances (see [`crate::cluster`]); the first call wins.
    pub(crate) fn set_cluster_link(&self, link: Arc<dyn ClusterLink>) {
        let _first = self.cluster.set(link);
    }

    /// Another instance says `key`'s spend in the day starting at `day_start` is at least
    /// `day_usd`, and in the month starting at `month_start` at least `month_usd`: the local
    /// totals of the current periods are raised to them (a total of an earlier period is
    /// ignored). A budget crossed this way is marked as announced without publishing: the
    /// instance whose spend crossed it publishes [`ForwarderEvent::KeyBudgetExceeded`].
    pub fn observe_shared_spend(
        &self,
        key: &str,
        day_start: SystemTime,
        day_usd: f64,
        month_start: SystemTime,
        month_usd: f64,
    ) {
        let periods = self.periods(SystemTime::now());
        let mut state = self.lock();
        let Some(entry) = state.keys.get_mut(key) else {
            return;
        };
        entry.spend.roll(&periods);
        if day_start == periods.day.start && day_usd.is_finite() {
            entry.spend.day_usd = entry.spend.day_usd.max(day_usd);
        }
        if month_start == periods.month.start && month_usd.is_finite() {
            entry.spend.month_usd = entry.spend.month_usd.max(month_usd);
        }
        let _published_where_it_crossed = announce(key, entry, &periods);
    }

    /// Seeds `key`'s spend today and this month (as of `at`) from the store at start. A budget
    /// already spent is marked as announced: it was published before the restart.
    pub fn seed_spend(&self, key: &str, today_usd: f64, this_month_usd: f64, at: SystemTime) {
        let periods = self.periods(at);
        let mut state = self.lock();
        let entry = state.keys.entry(key.to_string()).or_default();
        entry.spend.roll(&periods);
        if today_usd.is_finite() && today_usd > 0.0 {
            entry.spend.day_usd += today_usd;
        }
        if this_month_usd.is_finite() && this_month_usd > 0.0 {
            entry.spend.month_usd += this_month_usd;
        }
        let _already_published = announce(key, entry, &periods);
    }

    /// Every configured key's limits and usage now, in configuration order.
    pub fn views(&self) -> Vec<KeyLimitView> {
        let now = Instant::now();
        let periods = self.periods(SystemTime::now());
        let mut state = self.lock();
        let State { order, keys, .. } = &mut *state;
        order
            .iter()
            .filter_map(|name| {
                let entry = keys.get_mut(name)?;
                entry.spend.roll(&periods);
                let recent = entry
                    .admitted
                    .iter()
                    .filter(|at| now.duration_since(**at) < RATE_WINDOW)
                    .count();
                Some(KeyLimitView {
                    name: name.clone(),
                    limits: entry.limits.clone(),
                    spent_today_usd: entry.spend.day_usd,
                    spent_this_month_usd: entry.spend.month_usd,
                    day_resets_at: periods.day.end,
                    month_resets_at: periods.month.end,
                    requests_last_minute: u32::try_from(recent).unwrap_or(u32::MAX),
                    in_flight: entry.counters.in_flight.load(Ordering::Acquire),
                    queued: entry.counters.queued.load(Ordering::Acquire),
                    budget_exceeded: entry
                        .spend
                        .exceeded(&entry.limits, &periods)
                        .map(|(period, ..)| period),
                })
            })
            .collect()
    }
}

/// The budget crossings of `entry` not yet announced in this period, marked announced.
fn announce(name: &str, entry: &mut KeyState, periods: &BudgetPeriods) -> Vec<ForwarderEvent> {
    let mut crossed = Vec::new();
    let spend = &mut entry.spend;
    let checks = [
        (
            BudgetPeriod::Daily,
            entry.limits.daily_budget_usd,
            spend.day_usd,
            &periods.day,
        ),
        (
            BudgetPeriod::Monthly,
            entry.limits.monthly_budget_usd,
            spend.month_usd,
            &periods.month,
        ),
    ];
    for (period, budget, spent, span) in checks {
        let Some(budget) = budget.filter(|budget| spent >= *budget) else {
            continue;
        };
        let announced = match period {
            BudgetPeriod::Daily => &mut spend.announced_day,
            BudgetPeriod::Monthly => &mut spend.announced_month,
        };
        if *announced == Some(span.start) {
            continue;
        }
        *announced = Some(span.start);
        crossed.push(ForwarderEvent::KeyBudgetExceeded {
            key_name: name.to_string(),
            period,
            budget_usd: budget,
            spent_usd: spent,
            resets_at: span.end,
        });
    }
    crossed
}

/// The log line of a budget crossing.
fn budget_log(event: &ForwarderEvent) -> String {
    match event {
        ForwarderEvent::KeyBudgetExceeded {
            period,
            budget_usd,
            spent_usd,
            ..
        } => format!(
            "API key reached its {} budget of ${budget_usd:.2} (spent ${spent_usd:.2}): its requests are refused until the period resets",
            period.as_str()
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        SystemTime::from(DateTime::parse_from_rfc3339(text).expect("time"))
    }

    fn auth(yaml_limits: &str) -> AuthConfig {
        let yaml = format!(
            "auth:\n  enabled: true\n  queue_timeout: 50ms\n  tokens:\n    - name: alice\n      token: alice-token\n      limits:\n{yaml_limits}\nendpoints:\n  - name: a\n    url: https://example.com\n"
        );
        ccf_config::Config::from_yaml_str(&yaml)
            .expect("valid")
            .auth
    }

    #[test]
    fn utc_periods_end_at_midnight_and_on_the_first_of_next_month() {
        let periods = BudgetPeriods::utc(at("2026-12-31T23:59:59Z"));
        assert_eq!(periods.day.start, at("2026-12-31T00:00:00Z"));
        assert_eq!(periods.day.end, at("2027-01-01T00:00:00Z"));
        assert_eq!(periods.month.start, at("2026-12-01T00:00:00Z"));
        assert_eq!(periods.month.end_text, "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn zone_periods_use_local_midnight_and_show_the_offset() {
        let plus_eight = FixedOffset::east_opt(8 * 3600).expect("offset");
        let periods = BudgetPeriods::from_zone(
            at("2026-12-04T20:00:00Z"),
            |time| {
                DateTime::<Utc>::from(time)
                    .with_timezone(&plus_eight)
                    .date_naive()
            },
            |date| {
                SystemTime::from(
                    date.and_hms_opt(0, 0, 0)
                        .expect("midnight")
                        .and_local_timezone(plus_eight)
                        .single()
                        .expect("fixed"),
                )
            },
            |_| plus_eight,
        );
        assert_eq!(periods.day.end_text, "2026-12-06T00:00:00+08:00");
        assert_eq!(periods.month.end_text, "2027-01-01T00:00:00+08:00");
    }

    #[tokio::test]
    async fn spend_reaching_a_budget_refuses_and_announces_once() {
        let limits = KeyLimits::new(&auth("        daily_budget_usd: 1.5"), EventBus::new());
        let mut events = limits.events.subscribe();
        let now = SystemTime::now();
        assert!(limits.admit("alice").await.is_ok());
        limits.add_spend("alice", 1.0, now);
        assert!(limits.admit("alice").await.is_ok());
        limits.add_spend("alice", 0.75, now);
        limits.add_spend("alice", 0.25, now);
        let refusal = limits.admit("alice").await.expect_err("over budget");
        assert_eq!(refusal.reason(), "budget");
        let text = refusal.to_string();
        assert!(
            text.starts_with(
                "API key 'alice' reached its daily budget of $1.50 (spent $2.00); it resets at "
            ),
            "{text}"
        );
        let mut announced = 0;
        while let Ok(event) = events.try_recv() {
            announced += usize::from(matches!(event, ForwarderEvent::KeyBudgetExceeded { .. }));
        }
        assert_eq!(announced, 1);
        // Unknown keys (not configured) are not limited.
        assert!(limits.admit("mallory").await.expect("admitted").is_none());
    }

    #[tokio::test]
    async fn a_lowered_concurrency_limit_takes_effect_as_requests_finish() {
        let limits = KeyLimits::new(&auth("        concurrency: 2"), EventBus::new());
        let first = limits.admit("alice").await.expect("slot 1");
        let second = limits.admit("alice").await.expect("slot 2");
        assert_eq!(
            limits.admit("alice").await.expect_err("full").reason(),
            "concurrency"
        );
        limits.reconfigure(&auth("        concurrency: 1"));
        drop(first);
        assert_eq!(
            limits
                .admit("alice")
                .await
                .expect_err("still one in use")
                .reason(),
            "concurrency",
            "the released slot paid the cut"
        );
        drop(second);
        let third = limits.admit("alice").await.expect("one slot");
        assert_eq!(limits.views()[0].in_flight, 1);
        limits.reconfigure(&auth("        concurrency: 3"));
        let _fourth = limits.admit("alice").await.expect("raised");
        let _fifth = limits.admit("alice").await.expect("raised");
        assert!(limits.admit("alice").await.is_err());
        drop(third);
        assert_eq!(limits.views()[0].in_flight, 2);
        assert_eq!(limits.views()[0].queued, 0);
    }
}
