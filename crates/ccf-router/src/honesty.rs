//! Relay honesty: per-endpoint scores of how far what an upstream reports can be trusted.
//!
//! After every successful request the forwarding engine compares what the endpoint reported with
//! what was asked and sent, one [`HonestySignal`] at a time: the model it answered with
//! (substitution), the input tokens it billed against a local estimate (inflated or deflated
//! usage), and, for a stream, whether the content deltas arrived paced like generated text or in
//! one burst (a relay that buffers a whole answer and replays it as a "stream"). Each comparison
//! is a [`SignalVerdict`]; [`HonestyBoard::record`] folds them into per-endpoint scores.
//!
//! Scores are exponentially weighted averages in `[0, 1]` (1 = every recent check passed): each
//! check moves a signal's score towards 1 (passed) or 0 (flagged) by [`SCORE_ALPHA`]. The
//! overall score is the lowest signal score, so one signal that keeps failing is enough. Between
//! checks a score's distance from 1 halves every [`RECOVERY_HALF_LIFE`]: a demoted endpoint gets
//! little traffic, and without this it could never earn its place back.
//!
//! With demotion on, an endpoint is demoted once its overall score is below the threshold after
//! at least [`MIN_CHECKS_FOR_DEMOTION`] checked requests, and restored once the score climbs back
//! above the threshold plus a margin (hysteresis, so it does not flap). The board only decides;
//! the router applies the decision ([`crate::Router::set_demoted`]).
//!
//! Pure like the rest of the crate: time is passed in, nothing is spawned, nothing is logged.
//! Flag examples hold the request id and what was asked versus reported (model names, token
//! counts, delta timing), never prompt text or credentials.

use std::time::{Duration, Instant, SystemTime};

use ccf_config::Config;

/// Weight of one new check in a signal's score.
pub const SCORE_ALPHA: f64 = 0.2;
/// Checked requests an endpoint needs before its score can demote it.
pub const MIN_CHECKS_FOR_DEMOTION: u64 = 5;
/// Time for a score's distance from 1 to halve without new checks.
pub const RECOVERY_HALF_LIFE: Duration = Duration::from_secs(30 * 60);
/// A demoted endpoint is restored at `threshold + RESTORE_MARGIN * (1 - threshold)`.
pub const RESTORE_MARGIN: f64 = 0.2;
/// Usage is only called wrong when reported and estimated input tokens differ by more than this
/// many tokens too: on small requests the estimate's fixed overheads dominate its error.
pub const USAGE_MIN_ABSOLUTE_DIFFERENCE: u64 = 200;
/// A stream is judged for bursts only with at least this many content deltas.
pub const BURST_MIN_DELTAS: u32 = 8;
/// A gap between two content deltas shorter than this is *tight*. Generated text arrives tens
/// of milliseconds apart per delta; a replayed buffer arrives in microseconds.
pub const BURST_TIGHT_GAP: Duration = Duration::from_millis(1);
/// A stream is a burst when at least this share of its gaps between deltas are tight. Counting
/// gaps (rather than averaging the span) keeps a burst a burst when a scheduling stall or a
/// network hiccup splits it in a few pieces, and an honest stream honest when a network read
/// delivers a few deltas together.
pub const BURST_TIGHT_SHARE: f64 = 0.9;

/// Default of `routing.honesty_threshold`.
pub const DEFAULT_THRESHOLD: f64 = 0.5;
/// Default of `routing.usage_tolerance`.
pub const DEFAULT_USAGE_TOLERANCE: f64 = 2.5;

/// How honesty is checked and acted on; from the `routing.*` section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HonestySettings {
    /// `routing.relay_honesty`: check responses at all.
    pub enabled: bool,
    /// `routing.demote_dishonest`: demote endpoints whose score falls below the threshold.
    pub demote: bool,
    /// `routing.honesty_threshold`: the overall score below which an endpoint is demoted.
    pub threshold: f64,
    /// `routing.usage_tolerance`: reported input tokens may be this many times more (or less)
    /// than the local estimate before usage is called wrong.
    pub usage_tolerance: f64,
}

impl Default for HonestySettings {
    fn default() -> Self {
        HonestySettings {
            enabled: true,
            demote: false,
            threshold: DEFAULT_THRESHOLD,
            usage_tolerance: DEFAULT_USAGE_TOLERANCE,
        }
    }
}

impl HonestySettings {
    /// The settings of this configuration.
    pub fn from_config(config: &Config) -> Self {
        HonestySettings {
            enabled: config.routing.relay_honesty.0,
            demote: config.routing.demote_dishonest,
            threshold: config.routing.honesty_threshold,
            usage_tolerance: config.routing.usage_tolerance,
        }
    }

    /// The score a demoted endpoint must reach to be restored.
    pub fn restore_level(&self) -> f64 {
        self.threshold + RESTORE_MARGIN * (1.0 - self.threshold)
    }
}

/// What is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HonestySignal {
    /// The response's model is not the one the request asked for.
    ModelSubstitution,
    /// The reported input tokens disagree with the local estimate beyond the tolerance.
    UsageMismatch,
    /// A stream's content deltas arrived in one burst.
    BurstStream,
}

impl HonestySignal {
    /// Every signal, in display order.
    pub const ALL: [HonestySignal; 3] = [
        HonestySignal::ModelSubstitution,
        HonestySignal::UsageMismatch,
        HonestySignal::BurstStream,
    ];

    /// The stable snake_case name (API, metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            HonestySignal::ModelSubstitution => "model_substitution",
            HonestySignal::UsageMismatch => "usage_mismatch",
            HonestySignal::BurstStream => "burst_stream",
        }
    }
}

/// The result of comparing one signal on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalVerdict {
    /// Which signal.
    pub signal: HonestySignal,
    /// The comparison failed.
    pub flagged: bool,
    /// What was compared, worded only when shown ([`Observation::asked`],
    /// [`Observation::reported`]).
    pub observed: Observation,
}

/// What one comparison looked at, kept as names and numbers. Most checks pass and are never
/// shown; wording every verdict when it was made cost about 1,500 instructions per request
/// (issue 19), so the words are made when a flag example or a log line shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The model asked for (or sent in its place by a `model_map`) and the model answered with.
    Model {
        /// The model asked for or sent.
        asked: String,
        /// The model the answer named.
        answered: String,
    },
    /// The input tokens the endpoint reported against the local estimate.
    Usage {
        /// Input tokens reported (fresh, cache read and cache write together).
        reported: u64,
        /// The local estimate.
        estimated: u64,
        /// The estimate is only a lower bound: images and documents were not counted.
        lower_bound: bool,
    },
    /// A stream's content deltas: how many, how many gaps between them were tight, and the
    /// time from the first to the last.
    Stream {
        /// Content deltas.
        deltas: u32,
        /// Gaps shorter than [`BURST_TIGHT_GAP`].
        tight_gaps: u32,
        /// From the first delta to the last.
        span: Duration,
    },
}

impl Observation {
    /// What was asked or expected (a model name, an estimated token count, a paced stream).
    pub fn asked(&self) -> String {
        match self {
            Observation::Model { asked, .. } => asked.clone(),
            Observation::Usage {
                estimated,
                lower_bound: false,
                ..
            } => format!("~{estimated} input tokens (local estimate)"),
            Observation::Usage {
                estimated,
                lower_bound: true,
                ..
            } => format!(
                "at least ~{estimated} input tokens (local estimate; images and documents not \
                 counted)"
            ),
            Observation::Stream { .. } => "a paced stream".to_string(),
        }
    }

    /// What the endpoint reported or did.
    pub fn reported(&self) -> String {
        match self {
            Observation::Model { answered, .. } => answered.clone(),
            Observation::Usage { reported, .. } => format!("{reported} input tokens"),
            Observation::Stream {
                deltas,
                tight_gaps,
                span,
            } => format!(
                "{deltas} content deltas in {} µs, {tight_gaps} of {} gaps under {} µs",
                span.as_micros(),
                deltas.saturating_sub(1),
                BURST_TIGHT_GAP.as_micros()
            ),
        }
    }
}

impl SignalVerdict {
    /// Compares the model asked for with the model reported; `matches` is the caller's
    /// comparison (aliases match their dated ids, see `ccf_lifecycle::models_match`).
    pub fn model(
        requested: impl Into<String>,
        responded: impl Into<String>,
        matches: bool,
    ) -> SignalVerdict {
        SignalVerdict {
            signal: HonestySignal::ModelSubstitution,
            flagged: !matches,
            observed: Observation::Model {
                asked: requested.into(),
                answered: responded.into(),
            },
        }
    }

    /// Compares reported input tokens (input + cache read + cache creation) with the local
    /// estimate: flagged when their ratio is outside `[1 / tolerance, tolerance]` and they
    /// differ by more than [`USAGE_MIN_ABSOLUTE_DIFFERENCE`] tokens.
    pub fn usage(reported: u64, estimated: u64, tolerance: f64) -> SignalVerdict {
        SignalVerdict {
            signal: HonestySignal::UsageMismatch,
            flagged: usage_disagrees(reported, estimated, tolerance),
            observed: Observation::Usage {
                reported,
                estimated,
                lower_bound: false,
            },
        }
    }

    /// Compares reported input tokens with a local estimate that is only a lower bound (the
    /// request carries images or documents whose size is unknown locally): flagged only when
    /// the report is below the bound beyond the tolerance, as [`usage_disagrees`] measures it.
    /// Reporting more is never flagged: the unknown content can account for any amount.
    pub fn usage_at_least(reported: u64, known: u64, tolerance: f64) -> SignalVerdict {
        SignalVerdict {
            signal: HonestySignal::UsageMismatch,
            flagged: reported < known && usage_disagrees(reported, known, tolerance),
            observed: Observation::Usage {
                reported,
                estimated: known,
                lower_bound: true,
            },
        }
    }

    /// Judges a stream by its content deltas: how many arrived, how many of the gaps between
    /// them were shorter than [`BURST_TIGHT_GAP`], and the time from the first to the last.
    pub fn stream(deltas: u32, tight_gaps: u32, span: Duration) -> SignalVerdict {
        SignalVerdict {
            signal: HonestySignal::BurstStream,
            flagged: is_burst(deltas, tight_gaps),
            observed: Observation::Stream {
                deltas,
                tight_gaps,
                span,
            },
        }
    }
}

/// Whether reported and estimated input tokens disagree beyond `tolerance` (a ratio >= 1; a
/// smaller or non-finite value is treated as [`DEFAULT_USAGE_TOLERANCE`]) and beyond
/// [`USAGE_MIN_ABSOLUTE_DIFFERENCE`].
pub fn usage_disagrees(reported: u64, estimated: u64, tolerance: f64) -> bool {
    let tolerance = if tolerance.is_finite() && tolerance >= 1.0 {
        tolerance
    } else {
        DEFAULT_USAGE_TOLERANCE
    };
    if reported.abs_diff(estimated) <= USAGE_MIN_ABSOLUTE_DIFFERENCE {
        return false;
    }
    // Both sides are at least 1 so the ratio is finite; precision loss above 2^53 tokens is moot.
    let ratio = reported.max(1) as f64 / estimated.max(1) as f64;
    ratio > tolerance || ratio < 1.0 / tolerance
}

/// Whether a stream of `deltas` content deltas, `tight_gaps` of whose gaps were shorter than
/// [`BURST_TIGHT_GAP`], is a burst.
pub fn is_burst(deltas: u32, tight_gaps: u32) -> bool {
    if deltas < BURST_MIN_DELTAS {
        return false;
    }
    let gaps = f64::from(deltas - 1);
    f64::from(tight_gaps.min(deltas - 1)) >= BURST_TIGHT_SHARE * gaps
}

/// The checks made on one finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HonestyCheck {
    /// The request's id (shown in flag examples).
    pub request_id: String,
    /// When the request finished (wall clock, shown in flag examples).
    pub at: SystemTime,
    /// One verdict per signal that could be compared (a request without a model, a
    /// non-streaming answer, ... compare fewer).
    pub verdicts: Vec<SignalVerdict>,
}

/// A flagged check, kept as the endpoint's last example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagExample {
    /// The request.
    pub request_id: String,
    /// Which signal.
    pub signal: HonestySignal,
    /// What was asked or expected.
    pub asked: String,
    /// What the endpoint reported.
    pub reported: String,
    /// When (wall clock).
    pub at: SystemTime,
}

/// One signal's score on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalScore {
    /// Moving average in `[0, 1]`; 1 = trusted.
    pub score: f64,
    /// Requests on which the signal was compared.
    pub checks: u64,
    /// Of those, how many were flagged.
    pub flags: u64,
}

impl Default for SignalScore {
    fn default() -> Self {
        SignalScore {
            score: 1.0,
            checks: 0,
            flags: 0,
        }
    }
}

impl SignalScore {
    fn decayed(mut self, elapsed: Duration) -> SignalScore {
        self.score = recover(self.score, elapsed);
        self
    }

    fn add(&mut self, flagged: bool) {
        let sample = if flagged { 0.0 } else { 1.0 };
        self.score = SCORE_ALPHA * sample + (1.0 - SCORE_ALPHA) * self.score;
        self.checks += 1;
        if flagged {
            self.flags += 1;
        }
    }
}

/// Moves `score` towards 1 as [`RECOVERY_HALF_LIFE`] says for `elapsed`.
fn recover(score: f64, elapsed: Duration) -> f64 {
    let half_lives = elapsed.as_secs_f64() / RECOVERY_HALF_LIFE.as_secs_f64();
    1.0 - (1.0 - score) * 0.5_f64.powf(half_lives)
}

/// One endpoint's honesty as shown to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointHonesty {
    /// Endpoint name.
    pub endpoint: String,
    /// The lowest signal score.
    pub score: f64,
    /// Requests checked.
    pub checks: u64,
    /// Requests with at least one flagged signal.
    pub flagged_requests: u64,
    /// Model substitution.
    pub model_substitution: SignalScore,
    /// Usage disagreement.
    pub usage_mismatch: SignalScore,
    /// Burst streams.
    pub burst_stream: SignalScore,
    /// The latest flagged check.
    pub last_flag: Option<FlagExample>,
    /// The score is below the threshold with enough checks (whether or not demotion is on).
    pub below_threshold: bool,
    /// Demoted: tried after the honest endpoints of its group.
    pub demoted: bool,
}

impl EndpointHonesty {
    /// The score of one signal.
    pub fn signal(&self, signal: HonestySignal) -> &SignalScore {
        match signal {
            HonestySignal::ModelSubstitution => &self.model_substitution,
            HonestySignal::UsageMismatch => &self.usage_mismatch,
            HonestySignal::BurstStream => &self.burst_stream,
        }
    }
}

/// One endpoint's scores at an instant: the numbers of an [`EndpointHonesty`].
#[derive(Debug, Clone, Copy)]
struct EndpointScores {
    /// The lowest signal score.
    score: f64,
    signals: [SignalScore; 3],
}

/// A demotion decision for the router.
#[derive(Debug, Clone, PartialEq)]
pub struct DemotionChange {
    /// The endpoint.
    pub endpoint: String,
    /// `true`: demote it; `false`: restore it.
    pub demoted: bool,
    /// Its overall score when decided.
    pub score: f64,
}

#[derive(Debug, Clone)]
struct EndpointState {
    name: String,
    signals: [SignalScore; 3],
    checks: u64,
    flagged_requests: u64,
    last_flag: Option<FlagExample>,
    /// When the scores were last brought up to date.
    updated: Option<Instant>,
    demoted: bool,
}

impl EndpointState {
    fn new(name: &str) -> Self {
        EndpointState {
            name: name.to_string(),
            signals: [SignalScore::default(); 3],
            checks: 0,
            flagged_requests: 0,
            last_flag: None,
            updated: None,
            demoted: false,
        }
    }

    fn signals_at(&self, now: Instant) -> [SignalScore; 3] {
        let elapsed = self.updated.map_or(Duration::ZERO, |updated| {
            now.saturating_duration_since(updated)
        });
        self.signals.map(|signal| signal.decayed(elapsed))
    }

    /// The signals at `now` and the endpoint's score, the lowest of them.
    fn scores_at(&self, now: Instant) -> EndpointScores {
        let signals = self.signals_at(now);
        EndpointScores {
            score: signals
                .iter()
                .map(|signal| signal.score)
                .fold(1.0, f64::min),
            signals,
        }
    }

    fn score_at(&self, now: Instant) -> f64 {
        self.scores_at(now).score
    }

    fn below(&self, threshold: f64, now: Instant) -> bool {
        self.checks >= MIN_CHECKS_FOR_DEMOTION && self.score_at(now) < threshold
    }
}

fn position(signal: HonestySignal) -> usize {
    match signal {
        HonestySignal::ModelSubstitution => 0,
        HonestySignal::UsageMismatch => 1,
        HonestySignal::BurstStream => 2,
    }
}

/// Every endpoint's honesty scores and demotion state.
#[derive(Debug, Clone)]
pub struct HonestyBoard {
    settings: HonestySettings,
    endpoints: Vec<EndpointState>,
}

impl HonestyBoard {
    /// A board for these endpoint names, every score 1, nothing demoted.
    pub fn new<'a>(
        endpoints: impl IntoIterator<Item = &'a str>,
        settings: HonestySettings,
    ) -> Self {
        let mut states: Vec<EndpointState> = Vec::new();
        for name in endpoints {
            if !states.iter().any(|state| state.name == name) {
                states.push(EndpointState::new(name));
            }
        }
        HonestyBoard {
            settings,
            endpoints: states,
        }
    }

    /// The settings the board runs with.
    pub fn settings(&self) -> &HonestySettings {
        &self.settings
    }

    /// Runs with new settings (a configuration reload); scores are kept. The next
    /// [`HonestyBoard::evaluate`] applies them.
    pub fn set_settings(&mut self, settings: HonestySettings) {
        self.settings = settings;
    }

    /// Folds one request's checks into `endpoint`'s scores, then re-evaluates every endpoint's
    /// demotion (scores of endpoints without traffic recover with time, so a check anywhere is
    /// when they are looked at again). Returns the demotions and restorations to apply. A check
    /// without verdicts only re-evaluates; an endpoint not seen before (added by a configuration
    /// reload) is added.
    pub fn record(
        &mut self,
        endpoint: &str,
        check: HonestyCheck,
        now: Instant,
    ) -> Vec<DemotionChange> {
        if !check.verdicts.is_empty() && !self.endpoints.iter().any(|state| state.name == endpoint)
        {
            self.endpoints.push(EndpointState::new(endpoint));
        }
        if let Some(state) = self
            .endpoints
            .iter_mut()
            .find(|state| state.name == endpoint)
            .filter(|_| !check.verdicts.is_empty())
        {
            state.signals = state.signals_at(now);
            state.updated = Some(now);
            state.checks += 1;
            let mut flagged_any = false;
            for verdict in check.verdicts {
                state.signals[position(verdict.signal)].add(verdict.flagged);
                if verdict.flagged {
                    flagged_any = true;
                    state.last_flag = Some(FlagExample {
                        request_id: check.request_id.clone(),
                        signal: verdict.signal,
                        asked: verdict.observed.asked(),
                        reported: verdict.observed.reported(),
                        at: check.at,
                    });
                }
            }
            if flagged_any {
                state.flagged_requests += 1;
            }
        }
        self.evaluate(now)
    }

    /// Demotes endpoints below the threshold and restores those back above the restore level.
    /// With demotion off, nothing is demoted and endpoints demoted before are restored.
    pub fn evaluate(&mut self, now: Instant) -> Vec<DemotionChange> {
        let threshold = self.settings.threshold;
        let restore_level = self.settings.restore_level();
        let mut changes = Vec::new();
        for state in &mut self.endpoints {
            let score = state.score_at(now);
            let demoted = if !self.settings.demote {
                false
            } else if state.demoted {
                score < restore_level
            } else {
                state.below(threshold, now)
            };
            if demoted != state.demoted {
                state.demoted = demoted;
                changes.push(DemotionChange {
                    endpoint: state.name.clone(),
                    demoted,
                    score,
                });
            }
        }
        changes
    }

    /// Whether each endpoint is demoted, so the router can be kept in step (a configuration
    /// reload may rebuild an endpoint's routing state).
    pub fn demotions(&self) -> Vec<(String, bool)> {
        self.endpoints
            .iter()
            .map(|state| (state.name.clone(), state.demoted))
            .collect()
    }

    /// Whether any endpoint is demoted.
    pub fn any_demoted(&self) -> bool {
        self.endpoints.iter().any(|state| state.demoted)
    }

    /// Every endpoint's scores at `now`, in the order given to [`HonestyBoard::new`].
    pub fn view(&self, now: Instant) -> Vec<EndpointHonesty> {
        self.endpoints
            .iter()
            .map(|state| self.view_of(state, now))
            .collect()
    }

    fn view_of(&self, state: &EndpointState, now: Instant) -> EndpointHonesty {
        let EndpointScores {
            score,
            signals: [model_substitution, usage_mismatch, burst_stream],
        } = state.scores_at(now);
        EndpointHonesty {
            endpoint: state.name.clone(),
            score,
            checks: state.checks,
            flagged_requests: state.flagged_requests,
            model_substitution,
            usage_mismatch,
            burst_stream,
            last_flag: state.last_flag.clone(),
            below_threshold: state.below(self.settings.threshold, now),
            demoted: state.demoted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(demote: bool) -> HonestySettings {
        HonestySettings {
            demote,
            ..HonestySettings::default()
        }
    }

    fn check(verdicts: Vec<SignalVerdict>) -> HonestyCheck {
        HonestyCheck {
            request_id: "req-1".into(),
            at: SystemTime::UNIX_EPOCH,
            verdicts,
        }
    }

    fn substituted() -> SignalVerdict {
        SignalVerdict::model("claude-opus-4-1", "claude-3-haiku-20240307", false)
    }

    fn honest_model() -> SignalVerdict {
        SignalVerdict::model("claude-opus-4-1", "claude-opus-4-1-20250805", true)
    }

    #[test]
    fn usage_is_wrong_only_beyond_both_the_ratio_and_the_absolute_difference() {
        let check = |reported: u64, estimated: u64, expected: bool| {
            assert_eq!(
                usage_disagrees(reported, estimated, 2.5),
                expected,
                "reported {reported} vs estimated {estimated}"
            );
        };
        check(1000, 1000, false);
        check(2400, 1000, false); // within the ratio
        check(2600, 1000, true); // inflated
        check(300, 1000, true); // deflated
        check(450, 1000, false);
        check(200, 10, false); // tiny request: the difference is within the absolute floor
        check(5000, 10, true);
        check(0, 0, false);
        check(201, 0, true);
        // A nonsense tolerance falls back to the default.
        assert!(usage_disagrees(2600, 1000, f64::NAN));
        assert!(!usage_disagrees(2400, 1000, 0.5));
    }

    #[test]
    fn a_lower_bound_estimate_flags_only_under_reporting() {
        // Ten small images and a PDF: the API reports far more than the text alone.
        assert!(!SignalVerdict::usage_at_least(40_000, 60, 2.5).flagged);
        assert!(!SignalVerdict::usage_at_least(900, 60, 2.5).flagged);
        // Less than the text alone, beyond the tolerance: flagged.
        assert!(SignalVerdict::usage_at_least(100, 5_000, 2.5).flagged);
        assert!(!SignalVerdict::usage_at_least(4_000, 5_000, 2.5).flagged);
    }

    #[test]
    fn a_stream_is_a_burst_only_with_enough_deltas_arriving_almost_all_at_once() {
        let check = |deltas: u32, tight_gaps: u32, expected: bool| {
            assert_eq!(
                is_burst(deltas, tight_gaps),
                expected,
                "{deltas} deltas, {tight_gaps} tight gaps"
            );
        };
        check(40, 39, true);
        check(40, 36, true); // a few stalls inside a burst
        check(40, 35, false);
        check(40, 5, false); // a paced stream with a few coalesced reads
        check(8, 7, true);
        check(8, 6, false);
        check(7, 6, false); // too few deltas to judge
        check(0, 0, false);
        check(10, 1000, true); // more tight gaps than gaps cannot happen, but is safe
    }

    #[test]
    fn repeated_substitution_lowers_the_score_and_honest_answers_do_not() {
        let start = Instant::now();
        let mut board = HonestyBoard::new(["honest", "relay"], settings(false));
        for _ in 0..5 {
            board.record("relay", check(vec![substituted()]), start);
            board.record("honest", check(vec![honest_model()]), start);
        }
        let view = board.view(start);
        let (honest, relay) = (&view[0], &view[1]);
        assert_eq!(honest.score, 1.0);
        assert_eq!(honest.model_substitution.flags, 0);
        assert_eq!(honest.last_flag, None);
        assert!(
            (relay.score - 0.8_f64.powi(5)).abs() < 1e-9,
            "{}",
            relay.score
        );
        assert_eq!(relay.model_substitution.checks, 5);
        assert_eq!(relay.model_substitution.flags, 5);
        assert_eq!(relay.flagged_requests, 5);
        assert_eq!(relay.usage_mismatch.checks, 0);
        assert!(relay.below_threshold);
        assert!(!relay.demoted, "demotion is off");
        let flag = relay.last_flag.as_ref().expect("a flag example");
        assert_eq!(flag.signal, HonestySignal::ModelSubstitution);
        assert_eq!(flag.asked, "claude-opus-4-1");
        assert_eq!(flag.reported, "claude-3-haiku-20240307");
    }

    #[test]
    fn observations_are_worded_when_shown() {
        let usage = SignalVerdict::usage(2600, 1000, 2.5);
        assert!(usage.flagged);
        assert_eq!(
            usage.observed.asked(),
            "~1000 input tokens (local estimate)"
        );
        assert_eq!(usage.observed.reported(), "2600 input tokens");
        let bound = SignalVerdict::usage_at_least(100, 1000, 2.5);
        assert!(bound.flagged);
        assert_eq!(
            bound.observed.asked(),
            "at least ~1000 input tokens (local estimate; images and documents not counted)"
        );
        let stream = SignalVerdict::stream(40, 39, Duration::from_micros(1500));
        assert!(stream.flagged);
        assert_eq!(stream.observed.asked(), "a paced stream");
        assert_eq!(
            stream.observed.reported(),
            "40 content deltas in 1500 µs, 39 of 39 gaps under 1000 µs"
        );
        let model = substituted();
        assert_eq!(model.observed.asked(), "claude-opus-4-1");
        assert_eq!(model.observed.reported(), "claude-3-haiku-20240307");
    }

    #[test]
    fn the_overall_score_is_the_worst_signal() {
        let now = Instant::now();
        let mut board = HonestyBoard::new(["relay"], settings(false));
        board.record(
            "relay",
            check(vec![
                honest_model(),
                SignalVerdict::usage(9000, 1000, 2.5),
                SignalVerdict::stream(20, 2, Duration::from_millis(400)),
            ]),
            now,
        );
        let view = &board.view(now)[0];
        assert_eq!(view.model_substitution.score, 1.0);
        assert_eq!(view.burst_stream.score, 1.0);
        assert!((view.usage_mismatch.score - 0.8).abs() < 1e-9);
        assert_eq!(view.score, view.usage_mismatch.score);
        assert_eq!(view.checks, 1);
    }

    #[test]
    fn demotes_after_enough_checks_and_restores_with_hysteresis() {
        let start = Instant::now();
        let mut board = HonestyBoard::new(["relay"], settings(true));
        let mut changes = Vec::new();
        for _ in 0..4 {
            changes.extend(board.record("relay", check(vec![substituted()]), start));
        }
        // 0.8^4 = 0.41 is below 0.5, but four checks are not enough.
        assert!(changes.is_empty(), "{changes:?}");
        let changes = board.record("relay", check(vec![substituted()]), start);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].demoted);
        assert!(board.view(start)[0].demoted);

        // Honest answers bring it back, but only above 0.5 + 0.2 * 0.5 = 0.6.
        let mut restored_after = None;
        for round in 1..=10 {
            let changes = board.record("relay", check(vec![honest_model()]), start);
            let score = board.view(start)[0].score;
            if let Some(change) = changes.first() {
                assert!(!change.demoted);
                assert!(score >= 0.6, "restored at {score}");
                restored_after = Some(round);
                break;
            }
            assert!(score < 0.6, "still demoted at {score}");
        }
        assert!(restored_after.is_some(), "never restored");
    }

    #[test]
    fn scores_recover_with_time_and_a_demoted_idle_endpoint_is_restored() {
        let start = Instant::now();
        let mut board = HonestyBoard::new(["relay", "honest"], settings(true));
        for _ in 0..8 {
            board.record("relay", check(vec![substituted()]), start);
        }
        assert!(board.view(start)[0].demoted);
        let low = board.view(start)[0].score;
        let later = start + RECOVERY_HALF_LIFE;
        let recovered = board.view(later)[0].score;
        assert!(((1.0 - recovered) - (1.0 - low) / 2.0).abs() < 1e-9);
        // Another endpoint's traffic re-evaluates the idle one.
        let much_later = start + RECOVERY_HALF_LIFE * 4;
        let changes = board.record("honest", check(vec![honest_model()]), much_later);
        assert_eq!(
            changes,
            vec![DemotionChange {
                endpoint: "relay".into(),
                demoted: false,
                score: board.view(much_later)[0].score,
            }]
        );
    }

    fn endpoint(name: &'static str, priority: u32) -> ccf_config::Endpoint {
        crate::test_support::endpoint((name, "main", 1, priority))
    }

    #[test]
    fn a_demoted_endpoint_is_tried_after_its_group_and_keeps_its_priority() {
        let now = Instant::now();
        let healthy = |_: &str| true;
        for strategy in [
            ccf_config::StrategyType::Priority,
            ccf_config::StrategyType::Fastest,
        ] {
            let settings = crate::RouterSettings {
                strategy,
                ..crate::RouterSettings::default()
            };
            let mut router =
                crate::Router::new(&[endpoint("relay", 1), endpoint("honest", 2)], settings);
            let order = |router: &mut crate::Router| -> Vec<String> {
                let plan = router.plan(&healthy, now);
                plan.endpoints
                    .into_iter()
                    .map(|planned| planned.name)
                    .collect()
            };
            assert_eq!(order(&mut router), ["relay", "honest"], "{strategy:?}");
            assert_eq!(
                router.set_demoted("relay", true),
                vec![crate::RouterEvent::EndpointDemoted {
                    endpoint: "relay".into(),
                    demoted: true
                }]
            );
            assert!(
                router.set_demoted("relay", true).is_empty(),
                "no change, no event"
            );
            assert_eq!(order(&mut router), ["honest", "relay"], "{strategy:?}");
            let view = router.endpoints(&healthy, now);
            assert!(view[0].demoted);
            assert_eq!(view[0].priority, 1, "the priority is kept");
            router.set_demoted("relay", false);
            assert_eq!(order(&mut router), ["relay", "honest"], "{strategy:?}");
            assert!(router.set_demoted("nobody", true).is_empty());
        }
    }

    #[test]
    fn checks_without_verdicts_change_nothing_and_new_endpoints_are_added() {
        let now = Instant::now();
        let mut board = HonestyBoard::new(["relay"], settings(true));
        assert!(board.record("relay", check(vec![]), now).is_empty());
        let view = &board.view(now)[0];
        assert_eq!(view.checks, 0);
        assert_eq!(view.score, 1.0);
        board.record("added", check(vec![substituted()]), now);
        let view = board.view(now);
        assert_eq!(view.len(), 2);
        assert_eq!(view[1].endpoint, "added");
        assert_eq!(view[1].checks, 1);
    }

    #[test]
    fn turning_demotion_off_restores_demoted_endpoints() {
        let now = Instant::now();
        let mut board = HonestyBoard::new(["relay"], settings(true));
        for _ in 0..6 {
            board.record("relay", check(vec![substituted()]), now);
        }
        assert!(board.view(now)[0].demoted);
        board.set_settings(settings(false));
        let changes = board.evaluate(now);
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].demoted);
        assert!(!board.view(now)[0].demoted);
        assert!(board.view(now)[0].below_threshold);
    }
}
