//! Per-key limits (`auth.tokens[].limits`): requests per rolling minute, requests in flight at
//! once (more wait in a FIFO queue up to `auth.queue_timeout`), and daily / monthly budgets in
//! USD, enforced at admission for the API key a request authenticated with.
//!
//! Spend is counted here, in memory, from the exact cost of every finished outcome (added by
//! whoever prices it: the usage recorder, whose price `RequestObserver::on_outcome` returns, or
//! the engine's own cost model) and seeded from the store at start, so enforcement is never
//! behind by a store flush. Budget periods come from a [`BudgetCalendar`] (midnight and the first of the month in
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
//! With several instances (`cluster.redis_url`, [`crate::cluster`]) a key's limits are one
//! limit for all of them: spend is shared as totals every instance merges into its own (the
//! budget check stays local, on totals kept current by the other instances' updates), and the
//! rate and concurrency are counted in the link's [`SharedKeyCounters`] as well as here. The
//! shared counters decide while they answer within `cluster.redis_timeout`; past it, on an
//! error, or while the link has none, the request is decided here alone (a fallback, counted by
//! the link) and the local window, which kept counting, is not starting from zero. The views
//! show this instance's numbers only.
//!
//! It must not know how requests are routed or priced: only key names, limits and amounts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ccf_config::{Config, KeyLimitsConfig};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Offset, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::{ClusterLink, RateAdmission, SharedKeyCounters, SharedSlot, SharedUpdate};
use crate::events::{BudgetPeriod, EventBus, ForwarderEvent};

/// The rolling window `requests_per_minute` counts in.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// First pause before asking the shared counters again for a concurrency slot they said was
/// taken; it doubles up to [`SHARED_SLOT_MAX_BACKOFF`] (a generation takes seconds to minutes,
/// so a slot freed elsewhere is seen within a fraction of one).
const SHARED_SLOT_FIRST_BACKOFF: Duration = Duration::from_millis(25);

/// Longest pause between two asks for a shared concurrency slot.
const SHARED_SLOT_MAX_BACKOFF: Duration = Duration::from_millis(200);

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

/// A key's spend totals in its current budget periods, as the shared store counts them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedSpendTotals {
    /// Start of the budget day counted.
    pub day_start: SystemTime,
    /// Spend in that day, USD.
    pub day_usd: f64,
    /// Start of the budget month counted.
    pub month_start: SystemTime,
    /// Spend in that month, USD.
    pub month_usd: f64,
}

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
    /// Longest wait for the shared counters (`cluster.redis_timeout`).
    shared_timeout: Duration,
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
/// local slot and (with shared counters that answered) one shared slot; all are released when
/// it is dropped (when the answer's body ends or is dropped).
#[derive(Debug)]
pub(crate) struct KeyPermit {
    counters: Arc<KeyCounters>,
    _slot: Option<LocalSlot>,
    _shared: Option<SharedSlot>,
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One slot of a key's local concurrency gate; released when dropped, or forgotten when a
/// lowered limit still has permits to take back.
#[derive(Debug)]
struct LocalSlot {
    gate: Arc<ConcurrencyGate>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.gate.take_debt() {
                permit.forget();
            }
        }
    }
}

/// Whether a request still asks the shared counters, and whether it already fell back.
enum SharedCounting {
    /// No link installed, or the key has neither a rate nor a concurrency limit.
    Off,
    /// The link's counters, asked within the timeout.
    Ask(Arc<dyn ClusterLink>, Arc<dyn SharedKeyCounters>, Duration),
    /// This request decides locally (the fallback is already counted).
    FellBack,
}

impl SharedCounting {
    /// Stops asking for the rest of the request and counts one fallback on the link (once
    /// per request).
    fn fall_back(&mut self) {
        if let SharedCounting::Ask(link, ..) = self {
            link.note_fallback();
            *self = SharedCounting::FellBack;
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
    /// The limits `config.auth` configures (and `cluster.redis_timeout`, the longest wait for
    /// the shared counters), publishing budget crossings on `events`; periods in UTC until
    /// [`KeyLimits::set_calendar`].
    pub fn new(config: &Config, events: EventBus) -> KeyLimits {
        let limits = KeyLimits {
            state: Mutex::new(State::default()),
            calendar: RwLock::new(Arc::new(BudgetPeriods::utc)),
            events,
            cluster: OnceLock::new(),
        };
        limits.reconfigure(config);
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

    /// Hot reload: applies `config.auth`'s limits and queue timeout and `cluster.redis_timeout`.
    /// Spend, the rate window and the requests in flight are kept by key name; a changed
    /// concurrency limit resizes the queue's slots (a cut takes effect as requests finish).
    pub fn reconfigure(&self, config: &Config) {
        let auth = &config.auth;
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
        state.shared_timeout = config.cluster.redis_timeout.get();
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
    /// state (not configured). With shared counters the rate and the concurrency are the
    /// cluster's (see the module doc).
    pub(crate) async fn admit(&self, key: &str) -> Result<Option<KeyPermit>, KeyRefusal> {
        let wall = SystemTime::now();
        let periods = self.periods(wall);
        let linked = self.cluster.get().is_some();
        let (counters, gate, limits, queue_timeout, shared_timeout) = {
            let mut state = self.lock();
            let queue_timeout = state.queue_timeout;
            let shared_timeout = state.shared_timeout;
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
            // The local window full means this instance alone admitted the limit: the cluster
            // did too, no need to ask. Without a link the local window decides here.
            if let Some(limit) = entry.limits.requests_per_minute {
                let now = Instant::now();
                local_rate_room(entry, key, limit, now)?;
                if !linked {
                    entry.admitted.push_back(now);
                }
            }
            (
                Arc::clone(&entry.counters),
                entry.gate.clone(),
                entry.limits.clone(),
                queue_timeout,
                shared_timeout,
            )
        };
        let mut shared = self.shared_counting(&limits, shared_timeout);
        if let Some(limit) = limits.requests_per_minute.filter(|_| linked) {
            self.admit_rate(key, limit, &mut shared).await?;
        }
        let slots = match (gate, limits.concurrency) {
            (Some(gate), Some(limit)) => {
                let _queued = QueuedGuard::enter(&counters);
                Some(acquire_slots(key, limit, gate, queue_timeout, &mut shared).await?)
            }
            _ => None,
        };
        let (slot, shared_slot) = slots.unzip();
        counters.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Some(KeyPermit {
            counters,
            _slot: slot,
            _shared: shared_slot.flatten(),
        }))
    }

    /// Whether a request of a key with `limits` asks the shared counters: with a link, for a
    /// rate or concurrency limit. A link without counters now (disconnected) is a fallback.
    fn shared_counting(&self, limits: &KeyLimitsConfig, timeout: Duration) -> SharedCounting {
        let Some(link) = self.cluster.get() else {
            return SharedCounting::Off;
        };
        if limits.requests_per_minute.is_none() && limits.concurrency.is_none() {
            return SharedCounting::Off;
        }
        match link.key_counters() {
            Some(counters) => SharedCounting::Ask(Arc::clone(link), counters, timeout),
            None => {
                link.note_fallback();
                SharedCounting::FellBack
            }
        }
    }

    /// Counts one request of `key` (with a link installed) in its rate window of `limit` a
    /// minute: the shared window decides while it answers (a full one refuses with its own
    /// retry-after), the local one otherwise; the local window counts every admission either
    /// way.
    async fn admit_rate(
        &self,
        key: &str,
        limit: u32,
        shared: &mut SharedCounting,
    ) -> Result<(), KeyRefusal> {
        let verdict = match shared {
            SharedCounting::Ask(_, counters, timeout) => {
                match tokio::time::timeout(*timeout, counters.admit_rate(key, limit)).await {
                    Ok(Ok(verdict)) => Some(verdict),
                    Ok(Err(_)) | Err(_) => None,
                }
            }
            SharedCounting::Off | SharedCounting::FellBack => None,
        };
        if verdict.is_none() {
            shared.fall_back();
        }
        let mut state = self.lock();
        let Some(entry) = state.keys.get_mut(key) else {
            return Ok(());
        };
        let now = Instant::now();
        match verdict {
            Some(RateAdmission::Full { retry_after }) => Err(KeyRefusal::Rate {
                key: key.to_string(),
                limit,
                retry_after_secs: retry_after.as_secs_f64().ceil() as u64,
            }),
            Some(RateAdmission::Admitted) => {
                // The cluster's window decided; the local one keeps at most `limit` instants.
                if local_rate_room(entry, key, limit, now).is_err() {
                    entry.admitted.pop_front();
                }
                entry.admitted.push_back(now);
                Ok(())
            }
            None => {
                local_rate_room(entry, key, limit, now)?;
                entry.admitted.push_back(now);
                Ok(())
            }
        }
    }

    /// Counts `usd` spent by `key` on an outcome that finished at `at`; publishes
    /// [`ForwarderEvent::KeyBudgetExceeded`] when this crosses one of its budgets (once per
    /// budget and period).
    pub fn add_spend(&self, key: &str, usd: f64, at: SystemTime) {
        if !usd.is_finite() || usd <= 0.0 {
            return;
        }
        let periods = self.periods(at);
        // Linked to a connected shared store, the crossing is announced from the shared total
        // this spend's increment returns (`observe_shared_spend`), so that N instances announce
        // it once; otherwise here.
        let shared_total_decides = self.cluster.get().is_some_and(|link| link.is_connected());
        let (crossed, day_usd, month_usd) = {
            let mut state = self.lock();
            let entry = state.keys.entry(key.to_string()).or_default();
            entry.spend.roll(&periods);
            entry.spend.day_usd += usd;
            entry.spend.month_usd += usd;
            let crossed = if shared_total_decides {
                Vec::new()
            } else {
                announce(key, entry, &periods)
            };
            (crossed, entry.spend.day_usd, entry.spend.month_usd)
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

    /// The shared store says `key`'s spend in the day starting at `day_start` is at least
    /// `day_usd`, and in the month starting at `month_start` at least `month_usd`: the local
    /// totals of the current periods are raised to them (a total of an earlier period is
    /// ignored). `crossed_here` says whether these totals are the result of this instance's own
    /// increment (the atomic counter moved past the budget with this instance's spend): only
    /// then is a budget crossed this way published as [`ForwarderEvent::KeyBudgetExceeded`], so
    /// the deployment announces it once, from the instance whose spend crossed it; otherwise it
    /// is marked as announced without publishing.
    pub fn observe_shared_spend(&self, key: &str, totals: SharedSpendTotals, crossed_here: bool) {
        let periods = self.periods(SystemTime::now());
        let crossed = {
            let mut state = self.lock();
            let Some(entry) = state.keys.get_mut(key) else {
                return;
            };
            entry.spend.roll(&periods);
            if totals.day_start == periods.day.start && totals.day_usd.is_finite() {
                entry.spend.day_usd = entry.spend.day_usd.max(totals.day_usd);
            }
            if totals.month_start == periods.month.start && totals.month_usd.is_finite() {
                entry.spend.month_usd = entry.spend.month_usd.max(totals.month_usd);
            }
            announce(key, entry, &periods)
        };
        if crossed_here {
            for event in crossed {
                tracing::warn!(key = %key, "{}", budget_log(&event));
                self.events.publish(event);
            }
        }
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

/// Drops the admissions of `entry` that left the window by `now`; refuses when `limit` remain.
fn local_rate_room(
    entry: &mut KeyState,
    key: &str,
    limit: u32,
    now: Instant,
) -> Result<(), KeyRefusal> {
    while entry
        .admitted
        .front()
        .is_some_and(|at| now.duration_since(*at) >= RATE_WINDOW)
    {
        entry.admitted.pop_front();
    }
    let full = entry.admitted.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    match entry.admitted.front().filter(|_| full) {
        Some(oldest) => Err(KeyRefusal::Rate {
            key: key.to_string(),
            limit,
            retry_after_secs: RATE_WINDOW
                .saturating_sub(now.duration_since(*oldest))
                .as_secs_f64()
                .ceil() as u64,
        }),
        None => Ok(()),
    }
}

/// Takes one of `limit` concurrency slots of `key`: first a local one (FIFO, at most
/// `queue_timeout`), then, while the shared counters answer, a shared one, asked again after a
/// growing pause while all are held elsewhere, until the same `queue_timeout` is used up. The
/// local slot is released again on a refusal (dropped with it).
async fn acquire_slots(
    key: &str,
    limit: u32,
    gate: Arc<ConcurrencyGate>,
    queue_timeout: Duration,
    shared: &mut SharedCounting,
) -> Result<(LocalSlot, Option<SharedSlot>), KeyRefusal> {
    let deadline = tokio::time::Instant::now() + queue_timeout;
    let refusal = |gate: &ConcurrencyGate| KeyRefusal::Concurrency {
        key: key.to_string(),
        limit: gate.limit.load(Ordering::Acquire),
        waited: queue_timeout,
    };
    let waiting = Arc::clone(&gate.semaphore).acquire_owned();
    let permit = match tokio::time::timeout_at(deadline, waiting).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) | Err(_) => return Err(refusal(&gate)),
    };
    let local = LocalSlot {
        gate,
        permit: Some(permit),
    };
    let mut backoff = SHARED_SLOT_FIRST_BACKOFF;
    loop {
        let SharedCounting::Ask(_, counters, timeout) = &*shared else {
            return Ok((local, None));
        };
        match tokio::time::timeout(*timeout, counters.acquire_slot(key, limit)).await {
            Ok(Ok(Some(slot))) => return Ok((local, Some(slot))),
            Ok(Ok(None)) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(refusal(&local.gate));
                }
                tokio::time::sleep_until(deadline.min(now + backoff)).await;
                backoff = (backoff * 2).min(SHARED_SLOT_MAX_BACKOFF);
            }
            Ok(Err(_)) | Err(_) => shared.fall_back(),
        }
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
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::cluster::SharedUnavailable;

    fn at(text: &str) -> SystemTime {
        SystemTime::from(DateTime::parse_from_rfc3339(text).expect("time"))
    }

    fn auth(yaml_limits: &str) -> Config {
        let yaml = format!(
            "auth:\n  enabled: true\n  queue_timeout: 50ms\n  tokens:\n    - name: alice\n      token: alice-token\n      limits:\n{yaml_limits}\ncluster:\n  redis_timeout: 20ms\nendpoints:\n  - name: a\n    url: https://example.com\n"
        );
        Config::from_yaml_str(&yaml).expect("valid")
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

    #[tokio::test]
    async fn without_a_link_the_local_window_refuses_past_the_rate() {
        let limits = KeyLimits::new(&auth("        requests_per_minute: 2"), EventBus::new());
        let _first = limits.admit("alice").await.expect("admitted");
        let _second = limits.admit("alice").await.expect("admitted");
        let refusal = limits.admit("alice").await.expect_err("third in a minute");
        assert!(
            matches!(
                refusal,
                KeyRefusal::Rate {
                    limit: 2,
                    retry_after_secs: 1..=60,
                    ..
                }
            ),
            "{refusal:?}"
        );
        assert_eq!(limits.views()[0].requests_last_minute, 2);
    }

    /// How the fake shared counters answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Answer {
        /// Like Redis: an in-memory window and slot count shared with "other instances".
        Count,
        /// Never (slower than any timeout).
        Hang,
        /// At once, with an error.
        Fail,
    }

    /// Shared counters another instance also counts in (the test moves `rate_used` and
    /// `slots_held` as it would), answering as `answer` says.
    struct FakeCounters {
        answer: Mutex<Answer>,
        rate_used: AtomicU32,
        /// When set, the rate window answers "full" with this retry-after.
        rate_full_for: Mutex<Option<Duration>>,
        slots_held: Arc<AtomicU32>,
        rate_asks: AtomicU32,
        slot_asks: AtomicU32,
        /// Woken on every slot ask answered "all held".
        slot_refused: tokio::sync::Notify,
    }

    impl FakeCounters {
        fn new(answer: Answer) -> Arc<FakeCounters> {
            Arc::new(FakeCounters {
                answer: Mutex::new(answer),
                rate_used: AtomicU32::new(0),
                rate_full_for: Mutex::new(None),
                slots_held: Arc::new(AtomicU32::new(0)),
                rate_asks: AtomicU32::new(0),
                slot_asks: AtomicU32::new(0),
                slot_refused: tokio::sync::Notify::new(),
            })
        }

        fn answer(&self) -> Answer {
            *self.answer.lock().expect("answer")
        }

        fn set_answer(&self, answer: Answer) {
            *self.answer.lock().expect("answer") = answer;
        }
    }

    impl SharedKeyCounters for FakeCounters {
        fn admit_rate<'a>(
            &'a self,
            _key: &'a str,
            limit: u32,
        ) -> futures_util::future::BoxFuture<'a, Result<RateAdmission, SharedUnavailable>> {
            self.rate_asks.fetch_add(1, Ordering::AcqRel);
            Box::pin(async move {
                match self.answer() {
                    Answer::Hang => std::future::pending().await,
                    Answer::Fail => Err(SharedUnavailable("connection refused".into())),
                    Answer::Count => {
                        if let Some(retry_after) = *self.rate_full_for.lock().expect("full") {
                            return Ok(RateAdmission::Full { retry_after });
                        }
                        let counted = self.rate_used.fetch_update(
                            Ordering::AcqRel,
                            Ordering::Acquire,
                            |used| (used < limit).then_some(used + 1),
                        );
                        Ok(match counted {
                            Ok(_) => RateAdmission::Admitted,
                            Err(_) => RateAdmission::Full {
                                retry_after: Duration::from_secs(30),
                            },
                        })
                    }
                }
            })
        }

        fn acquire_slot<'a>(
            &'a self,
            _key: &'a str,
            limit: u32,
        ) -> futures_util::future::BoxFuture<'a, Result<Option<SharedSlot>, SharedUnavailable>>
        {
            self.slot_asks.fetch_add(1, Ordering::AcqRel);
            Box::pin(async move {
                match self.answer() {
                    Answer::Hang => std::future::pending().await,
                    Answer::Fail => Err(SharedUnavailable("connection refused".into())),
                    Answer::Count => {
                        let taken = self.slots_held.fetch_update(
                            Ordering::AcqRel,
                            Ordering::Acquire,
                            |held| (held < limit).then_some(held + 1),
                        );
                        if taken.is_err() {
                            self.slot_refused.notify_one();
                            return Ok(None);
                        }
                        let held = Arc::clone(&self.slots_held);
                        Ok(Some(SharedSlot::new(move || {
                            held.fetch_sub(1, Ordering::AcqRel);
                        })))
                    }
                }
            })
        }
    }

    /// A link whose key counters are `counters` (`None`: disconnected), counting fallbacks.
    struct FakeLink {
        counters: Option<Arc<FakeCounters>>,
        fallbacks: AtomicU64,
    }

    /// A connected link that keeps what it is given, for the spend tests.
    #[derive(Default)]
    struct SpendLink(Mutex<Vec<SharedUpdate>>);

    impl ClusterLink for SpendLink {
        fn publish(&self, update: SharedUpdate) {
            self.0.lock().expect("updates").push(update);
        }

        fn key_counters(&self) -> Option<Arc<dyn SharedKeyCounters>> {
            None
        }

        fn status(&self) -> crate::cluster::ClusterStatus {
            crate::cluster::ClusterStatus {
                connected: true,
                ..crate::cluster::ClusterStatus::default()
            }
        }

        fn note_fallback(&self) {}
    }

    fn budget_events(events: &mut tokio::sync::broadcast::Receiver<ForwarderEvent>) -> usize {
        let mut announced = 0;
        while let Ok(event) = events.try_recv() {
            announced += usize::from(matches!(event, ForwarderEvent::KeyBudgetExceeded { .. }));
        }
        announced
    }

    #[test]
    fn linked_instances_announce_a_budget_once_from_the_increment_that_crossed_it() {
        let now = SystemTime::now();
        let instance = |_: &str| {
            let limits = KeyLimits::new(&auth("        daily_budget_usd: 1.0"), EventBus::new());
            let link = Arc::new(SpendLink::default());
            limits.set_cluster_link(Arc::clone(&link) as Arc<dyn ClusterLink>);
            (limits, link)
        };
        let (alpha, alpha_link) = instance("alpha");
        let (beta, _beta_link) = instance("beta");
        let mut alpha_events = alpha.events.subscribe();
        let mut beta_events = beta.events.subscribe();
        // Alpha's own spend crosses its local mirror: not announced there, the shared total
        // decides; the update carries alpha's totals.
        alpha.add_spend("alice", 1.2, now);
        assert_eq!(budget_events(&mut alpha_events), 0);
        let update = alpha_link
            .0
            .lock()
            .expect("updates")
            .pop()
            .expect("spend shared");
        let SharedUpdate::Spend {
            day_start,
            month_start,
            ..
        } = update
        else {
            panic!("not a spend: {update:?}");
        };
        let totals = SharedSpendTotals {
            day_start,
            day_usd: 1.2,
            month_start,
            month_usd: 1.2,
        };
        // The shared counter's answer to alpha's increment crossed: alpha announces, once.
        alpha.observe_shared_spend("alice", totals, true);
        alpha.observe_shared_spend("alice", totals, true);
        assert_eq!(budget_events(&mut alpha_events), 1);
        // Beta learns the total from alpha: refuses, announces nothing.
        beta.observe_shared_spend("alice", totals, false);
        assert_eq!(budget_events(&mut beta_events), 0);
        assert_eq!(
            beta.views()[0].budget_exceeded,
            Some(BudgetPeriod::Daily),
            "beta enforces the one budget"
        );
    }

    impl ClusterLink for FakeLink {
        fn publish(&self, _update: SharedUpdate) {}

        fn key_counters(&self) -> Option<Arc<dyn SharedKeyCounters>> {
            self.counters
                .clone()
                .map(|counters| counters as Arc<dyn SharedKeyCounters>)
        }

        fn status(&self) -> crate::cluster::ClusterStatus {
            crate::cluster::ClusterStatus::default()
        }

        fn note_fallback(&self) {
            self.fallbacks.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Limits from `yaml_limits` linked to `counters` (`None`: a link without counters).
    fn linked(
        yaml_limits: &str,
        counters: Option<Arc<FakeCounters>>,
    ) -> (KeyLimits, Arc<FakeLink>) {
        let limits = KeyLimits::new(&auth(yaml_limits), EventBus::new());
        let link = Arc::new(FakeLink {
            counters,
            fallbacks: AtomicU64::new(0),
        });
        limits.set_cluster_link(Arc::clone(&link) as Arc<dyn ClusterLink>);
        (limits, link)
    }

    fn fallbacks(link: &FakeLink) -> u64 {
        link.fallbacks.load(Ordering::Acquire)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_shared_window_refuses_with_its_retry_after() {
        let counters = FakeCounters::new(Answer::Count);
        *counters.rate_full_for.lock().expect("full") = Some(Duration::from_millis(41_200));
        let (limits, link) = linked("        requests_per_minute: 5", Some(counters));
        let refusal = limits
            .admit("alice")
            .await
            .expect_err("the cluster is full");
        assert!(
            matches!(
                refusal,
                KeyRefusal::Rate {
                    limit: 5,
                    retry_after_secs: 42,
                    ..
                }
            ),
            "{refusal:?}"
        );
        assert_eq!(
            limits.views()[0].requests_last_minute,
            0,
            "not admitted here"
        );
        assert_eq!(fallbacks(&link), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_window_keeps_counting_while_the_shared_one_decides() {
        let counters = FakeCounters::new(Answer::Count);
        let (limits, link) = linked(
            "        requests_per_minute: 2",
            Some(Arc::clone(&counters)),
        );
        let _first = limits.admit("alice").await.expect("admitted");
        let _second = limits.admit("alice").await.expect("admitted");
        assert_eq!(counters.rate_asks.load(Ordering::Acquire), 2);
        assert_eq!(limits.views()[0].requests_last_minute, 2);
        // Redis goes away: the fallback starts from the two already counted here.
        counters.set_answer(Answer::Fail);
        let refusal = limits.admit("alice").await.expect_err("local window full");
        assert_eq!(refusal.reason(), "rate");
        assert_eq!(
            counters.rate_asks.load(Ordering::Acquire),
            2,
            "a full local window refuses without asking"
        );
        assert_eq!(fallbacks(&link), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_shared_counters_fall_back_to_the_local_decision_and_count_it() {
        let counters = FakeCounters::new(Answer::Hang);
        let (limits, link) = linked(
            "        requests_per_minute: 2\n        concurrency: 1",
            Some(Arc::clone(&counters)),
        );
        let first = limits.admit("alice").await.expect("decided locally");
        assert_eq!(fallbacks(&link), 1, "one fallback per request");
        assert_eq!(
            counters.slot_asks.load(Ordering::Acquire),
            0,
            "a request that fell back does not wait for Redis twice"
        );
        let refusal = limits
            .admit("alice")
            .await
            .expect_err("the local slot is held");
        assert_eq!(refusal.reason(), "concurrency");
        assert_eq!(fallbacks(&link), 2);
        drop(first);
        let refusal = limits
            .admit("alice")
            .await
            .expect_err("two in the local window");
        assert_eq!(refusal.reason(), "rate");
        assert_eq!(limits.views()[0].in_flight, 0);
        assert_eq!(limits.views()[0].queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_shared_counters_admit_on_the_local_slot() {
        let counters = FakeCounters::new(Answer::Fail);
        let (limits, link) = linked("        concurrency: 1", Some(Arc::clone(&counters)));
        let first = limits.admit("alice").await.expect("local slot");
        assert_eq!(counters.slot_asks.load(Ordering::Acquire), 1);
        assert_eq!(fallbacks(&link), 1);
        assert_eq!(limits.views()[0].in_flight, 1);
        let refusal = limits.admit("alice").await.expect_err("local slot held");
        assert_eq!(refusal.reason(), "concurrency");
        drop(first);
        // Redis is back: the shared slot is taken again, and released with the permit.
        counters.set_answer(Answer::Count);
        let second = limits.admit("alice").await.expect("both slots");
        assert_eq!(counters.slots_held.load(Ordering::Acquire), 1);
        drop(second);
        assert_eq!(counters.slots_held.load(Ordering::Acquire), 0);
        assert_eq!(fallbacks(&link), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_held_by_other_instances_refuse_after_the_queue_timeout() {
        let counters = FakeCounters::new(Answer::Count);
        counters.slots_held.store(2, Ordering::Release);
        let (limits, link) = linked("        concurrency: 2", Some(Arc::clone(&counters)));
        let refusal = limits
            .admit("alice")
            .await
            .expect_err("the cluster's slots are held");
        assert!(
            matches!(refusal, KeyRefusal::Concurrency { limit: 2, waited, .. } if waited == Duration::from_millis(50)),
            "{refusal:?}"
        );
        assert!(
            counters.slot_asks.load(Ordering::Acquire) > 1,
            "asked again while waiting"
        );
        assert_eq!(fallbacks(&link), 0);
        // The local slot taken while waiting was given back.
        let view = &limits.views()[0];
        assert_eq!((view.in_flight, view.queued), (0, 0));
        counters.slots_held.store(1, Ordering::Release);
        let _permit = limits.admit("alice").await.expect("one slot free");
        assert_eq!(counters.slots_held.load(Ordering::Acquire), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_elsewhere_admits_a_waiting_request() {
        let counters = FakeCounters::new(Answer::Count);
        counters.slots_held.store(1, Ordering::Release);
        let (limits, _link) = linked("        concurrency: 1", Some(Arc::clone(&counters)));
        let limits = Arc::new(limits);
        let waiting = tokio::spawn({
            let limits = Arc::clone(&limits);
            async move { limits.admit("alice").await }
        });
        counters.slot_refused.notified().await;
        assert_eq!(limits.views()[0].queued, 1);
        // The other instance's request ends.
        counters.slots_held.fetch_sub(1, Ordering::AcqRel);
        let permit = waiting.await.expect("task").expect("admitted");
        assert!(permit.is_some());
        assert_eq!(counters.slots_held.load(Ordering::Acquire), 1);
        drop(permit);
        assert_eq!(counters.slots_held.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_without_counters_decides_locally_and_counts_a_fallback() {
        let (limits, link) = linked("        requests_per_minute: 1", None);
        let _first = limits.admit("alice").await.expect("local");
        assert_eq!(fallbacks(&link), 1);
        assert_eq!(
            limits.admit("alice").await.expect_err("local").reason(),
            "rate"
        );
        // A key without rate or concurrency limits never asks.
        let (unlimited, link) = linked("        daily_budget_usd: 5", None);
        let _permit = unlimited.admit("alice").await.expect("admitted");
        assert_eq!(fallbacks(&link), 0);
    }
}
