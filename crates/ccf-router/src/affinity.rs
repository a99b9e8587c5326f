//! Prompt-cache affinity: keep a conversation on the endpoint that holds its prompt cache.
//!
//! Anthropic's prompt cache lives on the upstream (account or relay) that wrote it, so a turn
//! that lands elsewhere pays the cache write again instead of a cache read (about 12x the price
//! per token for the 5-minute cache). The [`AffinityTable`] remembers, per session, the endpoint
//! that served its previous turn (a *binding*) for as long as that endpoint's cache can still
//! hold the prefix: `routing.affinity_ttl` (5 minutes by default) after the last turn, or one
//! hour when the request asked for the 1-hour cache. [`Router::arrange`] puts the bound endpoint
//! first in a plan while it is a healthy candidate of the active group; when it is not (it
//! failed, became unhealthy, left the active group), the request goes wherever the plan says and
//! the binding follows it: the session moves once and stays there, even after the old endpoint
//! recovers (no ping-pong).
//!
//! Sessions are identified by a 64-bit [`SessionKey`] computed by the caller (the proxy hashes
//! a session header, `metadata.user_id` or the prompt); no prompt text is ever stored. The table
//! is bounded: at most `capacity` bindings; when full, expired bindings go first, then the one
//! closest to expiring.
//!
//! It also keeps the numbers that show what affinity is worth: per session and per endpoint,
//! input, cache-write and cache-read tokens (the cache-read ratio), and the cache-read tokens of
//! *held* turns (turns that routing without affinity would have sent to another endpoint), by
//! model and cache TTL, so the caller can price the saving (see `docs/routing.md`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use ccf_config::Config;

use crate::state::instant_after;
use crate::{PlannedEndpoint, RoutePlan, Router};

/// Default binding lifetime after a turn: the 5-minute prompt cache.
pub const DEFAULT_AFFINITY_TTL: Duration = Duration::from_secs(5 * 60);
/// Binding lifetime after a turn that asked for the 1-hour prompt cache.
pub const LONG_AFFINITY_TTL: Duration = Duration::from_secs(60 * 60);
/// Default bound on the number of bindings (and per-session statistics) kept.
pub const DEFAULT_AFFINITY_CAPACITY: usize = 10_000;
/// Most models kept apart in one session's held-token tally; more are added to the last entry.
const MAX_MODELS_PER_SESSION: usize = 8;

/// How session affinity behaves (`routing.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinitySettings {
    /// `routing.session_affinity`: prefer the bound endpoint (statistics are kept either way).
    pub enabled: bool,
    /// Binding lifetime after a turn (`routing.affinity_ttl`, default 5 minutes).
    pub ttl: Duration,
    /// Binding lifetime after a turn that asked for the 1-hour cache (never shorter than `ttl`).
    pub long_ttl: Duration,
    /// Most bindings kept at once (`routing.affinity_max_sessions`).
    pub capacity: usize,
}

impl Default for AffinitySettings {
    /// On, 5 minutes, 1 hour, 10 000 sessions.
    fn default() -> Self {
        AffinitySettings {
            enabled: true,
            ttl: DEFAULT_AFFINITY_TTL,
            long_ttl: LONG_AFFINITY_TTL,
            capacity: DEFAULT_AFFINITY_CAPACITY,
        }
    }
}

impl AffinitySettings {
    /// The settings of this configuration's `routing` section.
    pub fn from_config(config: &Config) -> Self {
        let routing = &config.routing;
        let ttl = routing.affinity_ttl.get();
        AffinitySettings {
            enabled: routing.session_affinity.0,
            ttl,
            long_ttl: LONG_AFFINITY_TTL.max(ttl),
            capacity: usize::try_from(routing.affinity_max_sessions)
                .unwrap_or(usize::MAX)
                .max(1),
        }
    }

    fn ttl_for(&self, long: bool) -> Duration {
        if long {
            self.long_ttl
        } else {
            self.ttl
        }
    }
}

/// A session's identity: a 64-bit hash, shown as 16 hex digits. Never the text it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(pub u64);

impl SessionKey {
    /// The text [`Display`](fmt::Display) writes, made without the formatting machinery (it is
    /// stored on every request's record; `to_string` cost about 300 instructions, issue 19).
    pub fn text(&self) -> String {
        ccf_types::hex16_string(self.0)
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ccf_types::write_hex16(f, self.0)
    }
}

/// Where a session's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSource {
    /// An explicit session header (`x-claude-code-session-id`, `x-session-id`).
    Header,
    /// The body's `metadata.user_id`.
    UserId,
    /// A hash of the system prompt and the first user message.
    Prompt,
}

/// What routing knows about the session of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRequest {
    /// The session.
    pub key: SessionKey,
    /// Where its identity came from.
    pub source: SessionSource,
    /// The request asked for the 1-hour cache (`cache_control.ttl: "1h"` somewhere in the body).
    pub long_ttl: bool,
}

/// What [`Router::arrange`] did to a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionDecision {
    /// The bound endpoint put (or kept) first, when affinity applied.
    pub preferred: Option<String>,
    /// `preferred` is not what the plan would have tried first: affinity changed the route, and
    /// a turn served there is a *held* turn.
    pub held: bool,
    /// Endpoints moved to the end of the plan because their quota is predicted to run out.
    pub drained: Vec<String>,
}

/// A session changed endpoint: its previous turn was served by `from`, this one by `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityMove {
    /// The session.
    pub session: SessionKey,
    /// The endpoint it was bound to.
    pub from: String,
    /// The endpoint it is bound to now.
    pub to: String,
}

/// Token counts of finished turns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTokens {
    /// Finished turns counted.
    pub turns: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cache-write tokens (both TTLs).
    pub cache_creation_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
}

impl CacheTokens {
    /// Cache reads over every input-side token (input + cache writes + cache reads); `None`
    /// before any input token was seen.
    pub fn cache_read_ratio(&self) -> Option<f64> {
        let total = self
            .input_tokens
            .saturating_add(self.cache_creation_tokens)
            .saturating_add(self.cache_read_tokens);
        (total > 0).then(|| self.cache_read_tokens as f64 / total as f64)
    }

    fn add(&mut self, turn: &TurnTokens) {
        self.turns = self.turns.saturating_add(1);
        self.input_tokens = self.input_tokens.saturating_add(turn.input_tokens);
        self.cache_creation_tokens = self
            .cache_creation_tokens
            .saturating_add(turn.cache_creation_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(turn.cache_read_tokens);
    }
}

/// The usage of one finished turn, as the upstream reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnTokens {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cache-write tokens (both TTLs).
    pub cache_creation_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
}

/// Cache-read tokens of held turns for one model: what would have been cache writes elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldTokens {
    /// The model billed (`""` when unknown, or for models past the per-session limit).
    pub model: String,
    /// Held cache reads of turns that asked for the 5-minute cache.
    pub cache_read_5m: u64,
    /// Held cache reads of turns that asked for the 1-hour cache.
    pub cache_read_1h: u64,
}

fn add_held(held: &mut Vec<HeldTokens>, model: &str, tokens: u64, long_ttl: bool) {
    let position = match held.iter().position(|entry| entry.model == model) {
        Some(position) => position,
        None if held.len() < MAX_MODELS_PER_SESSION => {
            held.push(HeldTokens {
                model: model.to_string(),
                ..HeldTokens::default()
            });
            held.len() - 1
        }
        None => held.len() - 1,
    };
    let entry = &mut held[position];
    if long_ttl {
        entry.cache_read_1h = entry.cache_read_1h.saturating_add(tokens);
    } else {
        entry.cache_read_5m = entry.cache_read_5m.saturating_add(tokens);
    }
}

#[derive(Debug, Clone)]
struct Binding {
    endpoint: String,
    source: SessionSource,
    expires_at: Instant,
    last_turn_at: Instant,
    long_ttl: bool,
    moves: u32,
    last_move_from: Option<String>,
    tokens: CacheTokens,
    held_turns: u64,
    held: Vec<HeldTokens>,
}

/// Whole-table counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AffinityTotals {
    /// Sessions bound for the first time (or again after their binding expired).
    pub bound: u64,
    /// Sessions that changed endpoint while bound.
    pub moves: u64,
    /// Bindings that reached their TTL.
    pub expired: u64,
    /// Bindings dropped to stay within the capacity.
    pub evicted: u64,
    /// Turns that affinity kept on their endpoint against the plan's first choice.
    pub held_turns: u64,
}

/// One session as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    /// The session's key (16 hex digits).
    pub session: SessionKey,
    /// Where its identity came from.
    pub source: SessionSource,
    /// The endpoint it is bound to.
    pub endpoint: String,
    /// Time left before the binding expires.
    pub expires_in: Duration,
    /// Time since its last turn was served.
    pub idle: Duration,
    /// The binding uses the 1-hour cache TTL.
    pub long_ttl: bool,
    /// Times it changed endpoint.
    pub moves: u32,
    /// The endpoint it last moved away from.
    pub moved_from: Option<String>,
    /// Its finished turns' tokens.
    pub tokens: CacheTokens,
    /// `tokens.cache_read_ratio()`.
    pub cache_read_ratio: Option<f64>,
    /// Turns affinity held on the bound endpoint.
    pub held_turns: u64,
    /// Cache-read tokens of those turns, by model and TTL (to price the saving).
    pub held: Vec<HeldTokens>,
}

/// One endpoint's cache numbers as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointCacheView {
    /// Endpoint name.
    pub endpoint: String,
    /// Every finished turn it served (with or without a session).
    pub tokens: CacheTokens,
    /// `tokens.cache_read_ratio()`.
    pub cache_read_ratio: Option<f64>,
    /// Sessions bound to it now.
    pub bound_sessions: usize,
    /// Turns affinity held on it.
    pub held_turns: u64,
    /// Cache-read tokens of those turns, by model and TTL.
    pub held: Vec<HeldTokens>,
}

/// The affinity table as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityView {
    /// `routing.session_affinity`.
    pub enabled: bool,
    /// Binding lifetime after a turn.
    pub ttl: Duration,
    /// Binding lifetime after a 1-hour-cache turn.
    pub long_ttl: Duration,
    /// Most bindings kept.
    pub capacity: usize,
    /// Bindings alive now.
    pub active_sessions: usize,
    /// Whole-table counters.
    pub totals: AffinityTotals,
    /// Per endpoint, by name.
    pub endpoints: Vec<EndpointCacheView>,
    /// Live sessions, most recent turn first (at most the `limit` asked for).
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Clone, Default)]
struct EndpointCache {
    tokens: CacheTokens,
    held_turns: u64,
    held: Vec<HeldTokens>,
}

/// The bindings and the cache statistics. See the module docs.
#[derive(Debug, Clone)]
pub struct AffinityTable {
    settings: AffinitySettings,
    bindings: HashMap<SessionKey, Binding>,
    /// Every binding's `(expires_at, key)`: the expiry sweep and the eviction order.
    by_expiry: BTreeSet<(Instant, SessionKey)>,
    endpoints: BTreeMap<String, EndpointCache>,
    totals: AffinityTotals,
}

impl Default for AffinityTable {
    fn default() -> Self {
        AffinityTable::new(AffinitySettings::default())
    }
}

impl AffinityTable {
    /// An empty table.
    pub fn new(settings: AffinitySettings) -> AffinityTable {
        AffinityTable {
            settings,
            bindings: HashMap::new(),
            by_expiry: BTreeSet::new(),
            endpoints: BTreeMap::new(),
            totals: AffinityTotals::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> AffinitySettings {
        self.settings
    }

    /// Replaces the settings (hot reload). Live bindings keep their expiry; a smaller capacity
    /// applies at the next new binding.
    pub fn set_settings(&mut self, settings: AffinitySettings) {
        self.settings = AffinitySettings {
            capacity: settings.capacity.max(1),
            ..settings
        };
    }

    /// Drops every binding (statistics stay): the operator asked for all traffic to move
    /// ([`crate::Router::prefer_endpoint`]), so the next turn of every session follows the new
    /// order and binds there.
    pub fn release_all(&mut self) {
        self.bindings.clear();
        self.by_expiry.clear();
    }

    /// Drops the bindings to `endpoint` (statistics stay) and returns how many there were: the
    /// operator demoted it ([`crate::Router::set_priority`] with a larger number, or a reload
    /// that raises it), which is an explicit "move", so its sessions follow the new order on
    /// their next turn instead of keeping their prompt cache there.
    pub fn release_endpoint(&mut self, endpoint: &str) -> usize {
        let keys: Vec<SessionKey> = self
            .bindings
            .iter()
            .filter(|(_, binding)| binding.endpoint == endpoint)
            .map(|(key, _)| *key)
            .collect();
        for key in &keys {
            self.remove(*key);
        }
        keys.len()
    }

    /// Sessions bound to `endpoint` at `now` (expired bindings not counted).
    pub fn bound_to(&self, endpoint: &str, now: Instant) -> usize {
        self.bindings
            .values()
            .filter(|binding| binding.endpoint == endpoint && now < binding.expires_at)
            .count()
    }

    /// Bindings alive (not yet swept; expired ones are dropped lazily).
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// No binding at all.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// The endpoint `key` is bound to at `now`, if its binding has not expired.
    pub fn bound_endpoint(&self, key: SessionKey, now: Instant) -> Option<&str> {
        self.bindings
            .get(&key)
            .filter(|binding| now < binding.expires_at)
            .map(|binding| binding.endpoint.as_str())
    }

    /// A turn of `session` was answered with success by `endpoint` at `now`: binds the session
    /// (or refreshes its binding) for the TTL the request asked for. Returns the move when the
    /// session was bound to another endpoint.
    pub fn served(
        &mut self,
        session: &SessionRequest,
        endpoint: &str,
        now: Instant,
    ) -> Option<AffinityMove> {
        self.sweep(now);
        let expires_at = instant_after(now, self.settings.ttl_for(session.long_ttl));
        if let Some(binding) = self.bindings.get_mut(&session.key) {
            self.by_expiry.remove(&(binding.expires_at, session.key));
            let mut moved = None;
            if binding.endpoint != endpoint {
                let from = std::mem::replace(&mut binding.endpoint, endpoint.to_string());
                binding.moves = binding.moves.saturating_add(1);
                binding.last_move_from = Some(from.clone());
                self.totals.moves = self.totals.moves.saturating_add(1);
                moved = Some(AffinityMove {
                    session: session.key,
                    from,
                    to: endpoint.to_string(),
                });
                // The new endpoint holds no cache yet: this turn's TTL alone counts.
                binding.expires_at = expires_at;
                binding.long_ttl = session.long_ttl;
            } else if expires_at >= binding.expires_at {
                binding.expires_at = expires_at;
                binding.long_ttl = session.long_ttl;
            }
            binding.source = session.source;
            binding.last_turn_at = now;
            self.by_expiry.insert((binding.expires_at, session.key));
            return moved;
        }
        while self.bindings.len() >= self.settings.capacity {
            let Some(&(_, oldest)) = self.by_expiry.iter().next() else {
                break;
            };
            self.remove(oldest);
            self.totals.evicted = self.totals.evicted.saturating_add(1);
        }
        self.bindings.insert(
            session.key,
            Binding {
                endpoint: endpoint.to_string(),
                source: session.source,
                expires_at,
                last_turn_at: now,
                long_ttl: session.long_ttl,
                moves: 0,
                last_move_from: None,
                tokens: CacheTokens::default(),
                held_turns: 0,
                held: Vec::new(),
            },
        );
        self.by_expiry.insert((expires_at, session.key));
        self.totals.bound = self.totals.bound.saturating_add(1);
        None
    }

    /// A turn finished on `endpoint` with these tokens; `held` when affinity kept it there
    /// against the plan's first choice (its cache reads are then counted as saved, by `model`
    /// and the TTL the request asked for). Counted for the endpoint always, and for the session
    /// while it is bound.
    pub fn record_turn(
        &mut self,
        session: Option<&SessionRequest>,
        endpoint: &str,
        model: &str,
        tokens: TurnTokens,
        held: bool,
    ) {
        let long_ttl = session.is_some_and(|session| session.long_ttl);
        let held_reads = if held { tokens.cache_read_tokens } else { 0 };
        let cache = self.endpoints.entry(endpoint.to_string()).or_default();
        cache.tokens.add(&tokens);
        if held {
            cache.held_turns = cache.held_turns.saturating_add(1);
            add_held(&mut cache.held, model, held_reads, long_ttl);
            self.totals.held_turns = self.totals.held_turns.saturating_add(1);
        }
        if let Some(binding) = session.and_then(|session| self.bindings.get_mut(&session.key)) {
            binding.tokens.add(&tokens);
            if held {
                binding.held_turns = binding.held_turns.saturating_add(1);
                add_held(&mut binding.held, model, held_reads, long_ttl);
            }
        }
    }

    /// Drops bindings whose TTL has passed.
    pub fn sweep(&mut self, now: Instant) {
        while let Some(&(expires_at, key)) = self.by_expiry.iter().next() {
            if expires_at > now {
                break;
            }
            self.remove(key);
            self.totals.expired = self.totals.expired.saturating_add(1);
        }
    }

    fn remove(&mut self, key: SessionKey) {
        if let Some(binding) = self.bindings.remove(&key) {
            self.by_expiry.remove(&(binding.expires_at, key));
        }
    }

    /// The table at `now`: settings, totals, per-endpoint numbers and up to `limit` live
    /// sessions, most recent turn first.
    pub fn view(&self, now: Instant, limit: usize) -> AffinityView {
        let live = || {
            self.bindings
                .iter()
                .filter(move |(_, binding)| now < binding.expires_at)
        };
        let mut sessions: Vec<SessionView> = live()
            .map(|(key, binding)| SessionView {
                session: *key,
                source: binding.source,
                endpoint: binding.endpoint.clone(),
                expires_in: binding.expires_at.saturating_duration_since(now),
                idle: now.saturating_duration_since(binding.last_turn_at),
                long_ttl: binding.long_ttl,
                moves: binding.moves,
                moved_from: binding.last_move_from.clone(),
                tokens: binding.tokens,
                cache_read_ratio: binding.tokens.cache_read_ratio(),
                held_turns: binding.held_turns,
                held: binding.held.clone(),
            })
            .collect();
        sessions.sort_by(|a, b| a.idle.cmp(&b.idle).then(a.session.cmp(&b.session)));
        sessions.truncate(limit);
        let mut bound: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, binding) in live() {
            *bound.entry(binding.endpoint.as_str()).or_default() += 1;
        }
        let mut names: BTreeSet<&str> = self.endpoints.keys().map(String::as_str).collect();
        names.extend(bound.keys().copied());
        let endpoints = names
            .into_iter()
            .map(|name| {
                let cache = self.endpoints.get(name).cloned().unwrap_or_default();
                EndpointCacheView {
                    endpoint: name.to_string(),
                    tokens: cache.tokens,
                    cache_read_ratio: cache.tokens.cache_read_ratio(),
                    bound_sessions: bound.get(name).copied().unwrap_or(0),
                    held_turns: cache.held_turns,
                    held: cache.held,
                }
            })
            .collect();
        AffinityView {
            enabled: self.settings.enabled,
            ttl: self.settings.ttl,
            long_ttl: self.settings.long_ttl,
            capacity: self.settings.capacity,
            active_sessions: live().count(),
            totals: self.totals,
            endpoints,
            sessions,
        }
    }
}

impl Router {
    /// Puts a plan in session order (call it after any other re-ranking of the plan):
    ///
    /// 1. with affinity on, the endpoint `session` is bound to goes first when it is one of the
    ///    plan's healthy candidates and its quota is not exhausted;
    /// 2. the other endpoints whose quota is predicted to run out before its reset
    ///    ([`crate::QuotaBook::draining`]) move to the end, in their order; with no session,
    ///    or a session not bound, that includes every endpoint: new sessions go elsewhere.
    ///
    /// Nothing is removed: drained endpoints stay as a last resort.
    pub fn arrange(
        &mut self,
        plan: &mut RoutePlan,
        session: Option<&SessionRequest>,
        now: Instant,
    ) -> SessionDecision {
        let mut decision = SessionDecision::default();
        let preferred_position = session
            .filter(|_| self.affinity.settings.enabled)
            .and_then(|session| self.affinity.bound_endpoint(session.key, now))
            .and_then(|bound| {
                plan.endpoints.iter().position(|planned| {
                    planned.name == bound && planned.healthy && !self.quota.exhausted(bound, now)
                })
            });
        // Reordered in place, and names copied only for what changed: this runs for every
        // request, and nearly always changes nothing (issue 19).
        if let Some(position) = preferred_position {
            decision.held = plan.endpoints[0].name != plan.endpoints[position].name;
            decision.preferred = Some(plan.endpoints[position].name.clone());
            // The bound endpoint first, the ones it passed in their order.
            plan.endpoints[..=position].rotate_right(1);
        }
        let others = &mut plan.endpoints[usize::from(preferred_position.is_some())..];
        let is_draining =
            |planned: &PlannedEndpoint| self.quota.draining(&planned.name, now).is_some();
        let draining = others.iter().filter(|planned| is_draining(planned)).count();
        // Every candidate draining and none preferred: the order stays as planned.
        let every_candidate_drains = preferred_position.is_none() && draining == others.len();
        if draining > 0 && !every_candidate_drains {
            // Stable: the drained move to the end in their order, the others keep theirs.
            others.sort_by_key(|planned| is_draining(planned));
            decision.drained = others[others.len() - draining..]
                .iter()
                .map(|planned| planned.name.clone())
                .collect();
        }
        decision
    }

    /// [`Router::plan`] then [`Router::arrange`] for `session`.
    pub fn plan_session(
        &mut self,
        session: Option<&SessionRequest>,
        healthy: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> (RoutePlan, SessionDecision) {
        let mut plan = self.plan(healthy, now);
        let decision = self.arrange(&mut plan, session, now);
        (plan, decision)
    }

    /// `session` got a success answer from `endpoint`: binds it there (see
    /// [`AffinityTable::served`]); returns the move when it was bound elsewhere.
    pub fn session_served(
        &mut self,
        session: &SessionRequest,
        endpoint: &str,
        now: Instant,
    ) -> Option<AffinityMove> {
        self.affinity.served(session, endpoint, now)
    }

    /// A turn finished on `endpoint` (see [`AffinityTable::record_turn`]).
    pub fn record_turn(
        &mut self,
        session: Option<&SessionRequest>,
        endpoint: &str,
        model: &str,
        tokens: TurnTokens,
        held: bool,
    ) {
        self.affinity
            .record_turn(session, endpoint, model, tokens, held);
    }

    /// The affinity table at `now` with up to `limit` sessions.
    pub fn affinity_view(&self, now: Instant, limit: usize) -> AffinityView {
        self.affinity.view(now, limit)
    }

    /// Sessions bound to `endpoint` at `now` (see [`AffinityTable::bound_to`]).
    pub fn sessions_bound_to(&self, endpoint: &str, now: Instant) -> usize {
        self.affinity.bound_to(endpoint, now)
    }

    /// The affinity settings in force.
    pub fn affinity_settings(&self) -> AffinitySettings {
        self.affinity.settings()
    }

    /// Replaces the affinity settings (hot reload); bindings and statistics are kept.
    pub fn set_affinity_settings(&mut self, settings: AffinitySettings) {
        self.affinity.set_settings(settings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_key_reads_as_sixteen_hex_digits() {
        for bits in [
            0,
            1,
            0xa,
            0xdead_beef,
            0x0123_4567_89ab_cdef,
            u64::MAX,
            1 << 63,
        ] {
            assert_eq!(SessionKey(bits).to_string(), format!("{bits:016x}"));
            assert_eq!(SessionKey(bits).text(), format!("{bits:016x}"));
        }
    }

    fn session(key: u64) -> SessionRequest {
        SessionRequest {
            key: SessionKey(key),
            source: SessionSource::Header,
            long_ttl: false,
        }
    }

    fn long_session(key: u64) -> SessionRequest {
        SessionRequest {
            long_ttl: true,
            ..session(key)
        }
    }

    fn table(capacity: usize) -> AffinityTable {
        AffinityTable::new(AffinitySettings {
            capacity,
            ..AffinitySettings::default()
        })
    }

    const MIN: Duration = Duration::from_secs(60);

    /// One step of a binding scenario: at `at` after the start, session `key` (1-hour cache
    /// when `long`) is served by `endpoint`; then `expect_bound` is what it is bound to, and
    /// `expect_move` the move reported.
    struct Step {
        at: Duration,
        key: u64,
        long: bool,
        endpoint: &'static str,
        expect_move: Option<&'static str>,
        expect_bound_after: Option<(Duration, Option<&'static str>)>,
    }

    fn check(name: &str, steps: &[Step]) {
        let start = Instant::now();
        let mut table = table(100);
        for (index, step) in steps.iter().enumerate() {
            let request = if step.long {
                long_session(step.key)
            } else {
                session(step.key)
            };
            let moved = table.served(&request, step.endpoint, start + step.at);
            assert_eq!(
                moved.map(|moved| moved.from),
                step.expect_move.map(str::to_string),
                "{name}: step {index} move"
            );
            if let Some((later, bound)) = step.expect_bound_after {
                assert_eq!(
                    table.bound_endpoint(SessionKey(step.key), start + step.at + later),
                    bound,
                    "{name}: step {index} bound {later:?} later"
                );
            }
        }
    }

    #[test]
    fn bindings_hold_refresh_expire_and_move() {
        check(
            "holds within the ttl",
            &[Step {
                at: Duration::ZERO,
                key: 1,
                long: false,
                endpoint: "a",
                expect_move: None,
                expect_bound_after: Some((4 * MIN, Some("a"))),
            }],
        );
        check(
            "expires after 5 minutes",
            &[Step {
                at: Duration::ZERO,
                key: 1,
                long: false,
                endpoint: "a",
                expect_move: None,
                expect_bound_after: Some((5 * MIN, None)),
            }],
        );
        check(
            "each turn refreshes the ttl",
            &[
                Step {
                    at: Duration::ZERO,
                    key: 1,
                    long: false,
                    endpoint: "a",
                    expect_move: None,
                    expect_bound_after: None,
                },
                Step {
                    at: 4 * MIN,
                    key: 1,
                    long: false,
                    endpoint: "a",
                    expect_move: None,
                    expect_bound_after: Some((4 * MIN, Some("a"))),
                },
            ],
        );
        check(
            "the 1-hour cache keeps the binding for an hour",
            &[Step {
                at: Duration::ZERO,
                key: 1,
                long: true,
                endpoint: "a",
                expect_move: None,
                expect_bound_after: Some((59 * MIN, Some("a"))),
            }],
        );
        check(
            "the 1-hour binding ends after the hour",
            &[Step {
                at: Duration::ZERO,
                key: 1,
                long: true,
                endpoint: "a",
                expect_move: None,
                expect_bound_after: Some((60 * MIN, None)),
            }],
        );
        check(
            "a 5-minute turn does not shorten a 1-hour binding",
            &[
                Step {
                    at: Duration::ZERO,
                    key: 1,
                    long: true,
                    endpoint: "a",
                    expect_move: None,
                    expect_bound_after: None,
                },
                Step {
                    at: MIN,
                    key: 1,
                    long: false,
                    endpoint: "a",
                    expect_move: None,
                    expect_bound_after: Some((30 * MIN, Some("a"))),
                },
            ],
        );
        check(
            "served elsewhere: moves once and stays",
            &[
                Step {
                    at: Duration::ZERO,
                    key: 1,
                    long: false,
                    endpoint: "a",
                    expect_move: None,
                    expect_bound_after: None,
                },
                Step {
                    at: MIN,
                    key: 1,
                    long: false,
                    endpoint: "b",
                    expect_move: Some("a"),
                    expect_bound_after: Some((Duration::ZERO, Some("b"))),
                },
                Step {
                    at: 2 * MIN,
                    key: 1,
                    long: false,
                    endpoint: "b",
                    expect_move: None,
                    expect_bound_after: Some((Duration::ZERO, Some("b"))),
                },
            ],
        );
        check(
            "after expiry the next turn binds afresh, no move",
            &[
                Step {
                    at: Duration::ZERO,
                    key: 1,
                    long: false,
                    endpoint: "a",
                    expect_move: None,
                    expect_bound_after: None,
                },
                Step {
                    at: 6 * MIN,
                    key: 1,
                    long: false,
                    endpoint: "b",
                    expect_move: None,
                    expect_bound_after: Some((Duration::ZERO, Some("b"))),
                },
            ],
        );
        check(
            "sessions are independent",
            &[
                Step {
                    at: Duration::ZERO,
                    key: 1,
                    long: false,
                    endpoint: "a",
                    expect_move: None,
                    expect_bound_after: None,
                },
                Step {
                    at: Duration::ZERO,
                    key: 2,
                    long: false,
                    endpoint: "b",
                    expect_move: None,
                    expect_bound_after: Some((MIN, Some("b"))),
                },
            ],
        );
    }

    #[test]
    fn capacity_evicts_the_binding_closest_to_expiry() {
        let start = Instant::now();
        let mut table = table(3);
        for key in 0..3 {
            table.served(&session(key), "a", start + Duration::from_secs(key));
        }
        table.served(&session(99), "a", start + Duration::from_secs(10));
        assert_eq!(table.len(), 3);
        let later = start + Duration::from_secs(11);
        assert_eq!(table.bound_endpoint(SessionKey(0), later), None);
        assert_eq!(table.bound_endpoint(SessionKey(1), later), Some("a"));
        assert_eq!(table.bound_endpoint(SessionKey(99), later), Some("a"));
        assert_eq!(table.view(later, 10).totals.evicted, 1);
        // Thousands of sessions never grow it past the capacity.
        for key in 1000..6000 {
            table.served(&session(key), "b", later);
        }
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn expired_bindings_are_swept_before_anything_is_evicted() {
        let start = Instant::now();
        let mut table = table(2);
        table.served(&session(1), "a", start);
        table.served(&long_session(2), "a", start);
        table.served(&session(3), "b", start + 6 * MIN);
        let view = table.view(start + 6 * MIN, 10);
        assert_eq!(view.totals.expired, 1);
        assert_eq!(view.totals.evicted, 0);
        assert_eq!(view.active_sessions, 2);
    }

    #[test]
    fn turns_count_per_endpoint_and_session_and_held_reads_by_model() {
        let start = Instant::now();
        let mut table = table(10);
        let one = long_session(1);
        table.served(&one, "a", start);
        let tokens = TurnTokens {
            input_tokens: 10,
            cache_creation_tokens: 10,
            cache_read_tokens: 80,
        };
        table.record_turn(Some(&one), "a", "claude-sonnet-4-5", tokens, true);
        table.record_turn(Some(&one), "a", "claude-sonnet-4-5", tokens, false);
        table.record_turn(None, "a", "claude-haiku-4-5", tokens, false);
        let view = table.view(start, 10);
        let endpoint = &view.endpoints[0];
        assert_eq!(endpoint.tokens.turns, 3);
        assert_eq!(endpoint.cache_read_ratio, Some(0.8));
        assert_eq!(endpoint.bound_sessions, 1);
        assert_eq!(
            endpoint.held,
            vec![HeldTokens {
                model: "claude-sonnet-4-5".into(),
                cache_read_5m: 0,
                cache_read_1h: 80,
            }]
        );
        let session_view = &view.sessions[0];
        assert_eq!(session_view.tokens.turns, 2);
        assert_eq!(session_view.held_turns, 1);
        assert_eq!(session_view.session.to_string(), "0000000000000001");
        assert_eq!(view.totals.held_turns, 1);
    }

    // ---- the plan hook ----

    /// Endpoints `a` (priority 1), `b` (2), `c` (3) in one group, plus `z` in a second group.
    fn router(enabled: bool) -> Router {
        use crate::test_support::endpoint;
        let mut router = Router::new(
            &[
                endpoint(("a", "main", 1, 1)),
                endpoint(("b", "main", 1, 2)),
                endpoint(("c", "main", 1, 3)),
                endpoint(("z", "backup", 2, 1)),
            ],
            crate::RouterSettings::default(),
        );
        router.set_affinity_settings(AffinitySettings {
            enabled,
            ..AffinitySettings::default()
        });
        router
    }

    /// One turn: the endpoints marked down, the plan's order, then the endpoint that serves.
    fn turn(
        router: &mut Router,
        session: Option<&SessionRequest>,
        down: &[&str],
        now: Instant,
    ) -> (Vec<String>, SessionDecision) {
        let healthy = |name: &str| !down.contains(&name);
        let (plan, decision) = router.plan_session(session, &healthy, now);
        (
            plan.endpoints.iter().map(|e| e.name.clone()).collect(),
            decision,
        )
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn affinity_beats_priority_while_the_bound_endpoint_is_healthy() {
        let start = Instant::now();
        let mut router = router(true);
        let one = session(1);
        router.session_served(&one, "b", start);
        let (order, decision) = turn(&mut router, Some(&one), &[], start + MIN);
        assert_eq!(order, names(&["b", "a", "c"]));
        assert_eq!(decision.preferred.as_deref(), Some("b"));
        assert!(decision.held, "priority alone would pick a");
        // Another session is routed by priority.
        let (order, decision) = turn(&mut router, Some(&session(2)), &[], start + MIN);
        assert_eq!(order, names(&["a", "b", "c"]));
        assert_eq!(decision, SessionDecision::default());
        // Bound to the plan's first choice anyway: preferred, not held.
        router.session_served(&session(3), "a", start);
        let (_, decision) = turn(&mut router, Some(&session(3)), &[], start + MIN);
        assert_eq!(decision.preferred.as_deref(), Some("a"));
        assert!(!decision.held);
    }

    #[test]
    fn a_failed_bound_endpoint_moves_the_session_once_with_no_ping_pong() {
        let start = Instant::now();
        let mut router = router(true);
        let one = session(1);
        router.session_served(&one, "a", start);
        // a is down: the plan skips it, b serves, the session moves.
        let (order, decision) = turn(&mut router, Some(&one), &["a"], start + MIN);
        assert_eq!(order, names(&["b", "c"]));
        assert_eq!(decision.preferred, None);
        let moved = router.session_served(&one, "b", start + MIN);
        assert_eq!(
            moved,
            Some(AffinityMove {
                session: SessionKey(1),
                from: "a".into(),
                to: "b".into()
            })
        );
        // a recovers: the session stays on b, turn after turn.
        for minute in 2..6 {
            let now = start + minute * MIN;
            let (order, decision) = turn(&mut router, Some(&one), &[], now);
            assert_eq!(order[0], "b", "minute {minute}");
            assert!(decision.held);
            assert_eq!(router.session_served(&one, "b", now), None);
        }
        let view = router.affinity_view(start + 6 * MIN, 10);
        assert_eq!(view.totals.moves, 1);
        assert_eq!(view.sessions[0].moves, 1);
        assert_eq!(view.sessions[0].moved_from.as_deref(), Some("a"));
    }

    #[test]
    fn preferring_an_endpoint_releases_every_binding_but_promoting_another_does_not() {
        let start = Instant::now();
        let mut router = router(true);
        let one = session(1);
        router.session_served(&one, "c", start);
        router.set_priority("b", 0).expect("b exists");
        let (order, decision) = turn(&mut router, Some(&one), &[], start + MIN);
        assert_eq!(
            order[0], "c",
            "promoting another endpoint steers new sessions only"
        );
        assert!(decision.held);
        router.prefer_endpoint("a").expect("a exists");
        let (order, decision) = turn(&mut router, Some(&one), &[], start + 2 * MIN);
        assert_eq!(order[0], "a", "prefer moves bound sessions too");
        assert!(!decision.held);
    }

    #[test]
    fn demoting_the_bound_endpoint_releases_its_bindings_only() {
        let start = Instant::now();
        let mut router = router(true);
        let (one, two) = (session(1), session(2));
        router.session_served(&one, "c", start);
        router.session_served(&two, "b", start);
        // Same priority again: not a demotion.
        router.set_priority("c", 3).expect("c exists");
        assert_eq!(router.sessions_bound_to("c", start), 1);
        // The number raised: the operator said "move".
        router.set_priority("c", 7).expect("c exists");
        assert_eq!(router.sessions_bound_to("c", start), 0);
        let (order, decision) = turn(&mut router, Some(&one), &[], start + MIN);
        assert_eq!(
            order[0], "a",
            "the demoted endpoint's session follows the new order"
        );
        assert_eq!(decision.preferred, None);
        // A session bound elsewhere keeps its cache.
        let (order, decision) = turn(&mut router, Some(&two), &[], start + MIN);
        assert_eq!(order[0], "b");
        assert!(decision.held);
        // Lowering the number (a promotion) releases nothing.
        router.session_served(&one, "a", start + MIN);
        router.set_priority("a", 0).expect("a exists");
        assert_eq!(router.sessions_bound_to("a", start + MIN), 1);
        assert_eq!(router.affinity_view(start + MIN, 10).totals.moves, 0);
    }

    #[test]
    fn a_demotion_in_the_file_releases_the_bindings_on_reload() {
        use crate::test_support::endpoint;
        let start = Instant::now();
        let mut router = router(true);
        let (one, two) = (session(1), session(2));
        router.session_served(&one, "a", start);
        router.session_served(&two, "b", start);
        let reloaded = [
            endpoint(("a", "main", 1, 4)),
            endpoint(("b", "main", 1, 1)),
            endpoint(("c", "main", 1, 3)),
            endpoint(("z", "backup", 2, 1)),
        ];
        let healthy = |_: &str| true;
        router.reconfigure(
            &reloaded,
            crate::RouterSettings::default(),
            &|_| false,
            &healthy,
            start,
        );
        assert_eq!(router.sessions_bound_to("a", start), 0, "a was demoted");
        assert_eq!(router.sessions_bound_to("b", start), 1, "b was promoted");
        let (order, _) = turn(&mut router, Some(&one), &[], start + MIN);
        assert_eq!(order[0], "b");
    }

    #[test]
    fn an_expired_binding_routes_by_priority_again() {
        let start = Instant::now();
        let mut router = router(true);
        let one = session(1);
        router.session_served(&one, "c", start);
        let (order, _) = turn(&mut router, Some(&one), &[], start + 5 * MIN);
        assert_eq!(order, names(&["a", "b", "c"]));
        let long = long_session(2);
        router.session_served(&long, "c", start);
        let (order, _) = turn(&mut router, Some(&long), &[], start + 30 * MIN);
        assert_eq!(order[0], "c", "the 1-hour cache keeps it");
    }

    #[test]
    fn affinity_off_routes_by_priority_but_still_counts() {
        let start = Instant::now();
        let mut router = router(false);
        let one = session(1);
        router.session_served(&one, "c", start);
        let (order, decision) = turn(&mut router, Some(&one), &[], start + MIN);
        assert_eq!(order, names(&["a", "b", "c"]));
        assert_eq!(decision.preferred, None);
        assert!(!router.affinity_view(start, 10).enabled);
    }

    #[test]
    fn affinity_stays_inside_the_active_group() {
        let start = Instant::now();
        let mut router = router(true);
        let one = session(1);
        router.session_served(&one, "z", start);
        let (order, decision) = turn(&mut router, Some(&one), &[], start + MIN);
        assert_eq!(order, names(&["a", "b", "c"]));
        assert_eq!(decision.preferred, None);
    }

    fn low_and_burning(router: &mut Router, endpoint: &str, start: Instant) {
        for (second, remaining) in [(0u32, 30u64), (1, 20), (2, 10)] {
            router.record_quota(
                endpoint,
                &QuotaObservationFixture::requests(remaining, 60),
                start + Duration::from_secs(u64::from(second)),
            );
        }
    }

    struct QuotaObservationFixture;

    impl QuotaObservationFixture {
        fn requests(remaining: u64, reset_secs: u64) -> crate::QuotaObservation {
            crate::QuotaObservation {
                readings: vec![crate::QuotaReading {
                    dimension: crate::QuotaDimension::Requests,
                    limit: Some(100),
                    remaining: Some(remaining),
                    reset_in: Some(Duration::from_secs(reset_secs)),
                }],
                retry_after: None,
                subscription: None,
            }
        }
    }

    #[test]
    fn new_sessions_drain_away_from_an_endpoint_about_to_run_out_and_return_after_its_reset() {
        let start = Instant::now();
        let mut router = router(true);
        low_and_burning(&mut router, "a", start);
        let now = start + Duration::from_secs(3);
        let (order, decision) = turn(&mut router, Some(&session(7)), &[], now);
        assert_eq!(order, names(&["b", "c", "a"]));
        assert_eq!(decision.drained, names(&["a"]));
        let (order, _) = turn(&mut router, None, &[], now);
        assert_eq!(
            order,
            names(&["b", "c", "a"]),
            "requests without a session too"
        );
        // A session bound to a keeps its cache while a has quota left.
        let bound = session(8);
        router.session_served(&bound, "a", start);
        let (order, decision) = turn(&mut router, Some(&bound), &[], now);
        assert_eq!(order, names(&["a", "b", "c"]));
        assert_eq!(decision.preferred.as_deref(), Some("a"));
        // The reset passed: a takes new sessions again.
        let after_reset = start + Duration::from_secs(62);
        let (order, decision) = turn(&mut router, Some(&session(9)), &[], after_reset);
        assert_eq!(order, names(&["a", "b", "c"]));
        assert!(decision.drained.is_empty());
    }

    #[test]
    fn a_bound_endpoint_goes_first_and_every_other_one_draining_goes_after_it_in_order() {
        let start = Instant::now();
        let mut router = router(true);
        low_and_burning(&mut router, "a", start);
        low_and_burning(&mut router, "b", start);
        let bound = session(5);
        router.session_served(&bound, "c", start);
        let now = start + Duration::from_secs(3);
        let (order, decision) = turn(&mut router, Some(&bound), &[], now);
        assert_eq!(order, names(&["c", "a", "b"]));
        assert_eq!(decision.preferred.as_deref(), Some("c"));
        assert!(decision.held, "priority alone would pick a");
        assert_eq!(decision.drained, names(&["a", "b"]));
    }

    #[test]
    fn an_exhausted_bound_endpoint_is_not_preferred_and_all_draining_keeps_the_order() {
        let start = Instant::now();
        let mut router = router(true);
        let one = session(1);
        router.session_served(&one, "b", start);
        router.record_quota("b", &QuotaObservationFixture::requests(0, 60), start);
        let soon = start + Duration::from_secs(10);
        let (order, decision) = turn(&mut router, Some(&one), &[], soon);
        assert_eq!(order, names(&["a", "c", "b"]));
        assert_eq!(decision.preferred, None);
        for name in ["a", "c"] {
            router.record_quota(name, &QuotaObservationFixture::requests(0, 600), start);
        }
        let (order, decision) = turn(&mut router, None, &[], soon);
        assert_eq!(order, names(&["a", "b", "c"]));
        assert!(decision.drained.is_empty());
    }

    #[test]
    fn held_models_are_bounded_per_session() {
        let mut held = Vec::new();
        for model in 0..20 {
            add_held(&mut held, &format!("m{model}"), 1, false);
        }
        assert_eq!(held.len(), MAX_MODELS_PER_SESSION);
        assert_eq!(
            held.iter().map(|entry| entry.cache_read_5m).sum::<u64>(),
            20
        );
    }
}
