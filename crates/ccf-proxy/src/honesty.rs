//! Relay honesty on the request path: the per-request [`HonestyWatch`] that watches a relayed
//! answer, and the engine's [`Honesty`] scoreboard it reports to.
//!
//! The watch is made at admission for `POST /v1/messages` when `routing.relay_honesty` is on. It
//! holds the request's model and the local estimate of its input tokens and, for a successful
//! SSE answer, notes per body frame when content deltas arrived: the first and the
//! last arrival and a count, found by scanning the frame for `"content_block_delta"` (no
//! allocation, no parsing; compressed streams are not timed). When the answer ended well, the
//! watch compares what the endpoint reported with what was asked and sent, and the scoreboard
//! ([`ccf_router::honesty::HonestyBoard`]) folds the verdicts into the endpoint's scores.
//!
//! Honest upstreams must never be flagged, so each check leaves out what it cannot know: the
//! usage estimate (`ccf_tokens::estimate_parsed_request`) drops earlier turns' thinking as the
//! API does and, when the request carries images or documents of unknown size, is only a lower
//! bound (only under-reporting is judged); and stream pacing is not judged when the relay was
//! backpressured by a slow client (frames that waited for the client arrive back to back
//! whatever the upstream's pace).
//!
//! The local token estimate is one pass over the text of the tree admission parsed the body into
//! anyway (for the request's fields and session): made there, it costs no second parse of the
//! body and leaves nothing heavy for the end of the answer. Before issue 19 part 12 the estimate
//! parsed the body again when the answer ended, so as not to delay the upstream request. The
//! trade, measured (docs/benchmarks.md, part 12): a request's CPU for this work falls by 41 % for
//! a 9 KB Claude Code body (46 → 27 µs) and 28 % for 500 KB (3.2 → 2.3 ms), and its upstream
//! request leaves later by 13 µs and 1.4 ms, against an upstream's time to first token of
//! seconds.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use ccf_config::Config;
use ccf_lifecycle::{models_match, RequestId};
use ccf_router::honesty::{
    EndpointHonesty, HonestyBoard, HonestyCheck, HonestySettings, HonestySignal, SignalVerdict,
    BURST_MIN_DELTAS, BURST_TIGHT_GAP,
};
use ccf_tokens::tree::Json;
use ccf_tokens::{Extraction, InputEstimate};
use tracing::{info, warn};

use crate::monitoring::Metrics;

/// The path whose answers are checked.
const MESSAGES_PATH: &str = "/v1/messages";

/// What marks a content delta in an SSE frame: the event's JSON `type`. The `event:` line has no
/// quotes, and the same word inside generated text is escaped (`\"content_block_delta\"`), so
/// each delta event matches exactly once.
const CONTENT_DELTA_MARKER: &[u8] = b"\"content_block_delta\"";

/// The engine's honesty scoreboard.
pub(crate) struct Honesty {
    board: Mutex<HonestyBoard>,
}

impl Honesty {
    /// A scoreboard for the configuration's endpoints.
    pub(crate) fn new(config: &Config) -> Self {
        Honesty {
            board: Mutex::new(HonestyBoard::new(
                config
                    .endpoints
                    .iter()
                    .map(|endpoint| endpoint.name.as_str()),
                HonestySettings::from_config(config),
            )),
        }
    }

    fn board(&self) -> MutexGuard<'_, HonestyBoard> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watch for this request, when its answer is to be checked: `routing.relay_honesty` is on
    /// and it is a `POST /v1/messages`. `body` is the request body's parse (none when it is not
    /// JSON): its input tokens are estimated here.
    pub(crate) fn watch(
        config: &Config,
        request_id: RequestId,
        parts: &http::request::Parts,
        body: Option<&Json<'_>>,
        request_model: Option<&str>,
    ) -> Option<HonestyWatch> {
        if !config.routing.relay_honesty.0
            || parts.method != http::Method::POST
            || parts.uri.path() != MESSAGES_PATH
        {
            return None;
        }
        Some(HonestyWatch {
            request_id,
            request_model: request_model
                .filter(|model| !model.trim().is_empty())
                .map(str::to_string),
            sent_model: None,
            input_estimate: body.and_then(|body| {
                ccf_tokens::estimate_parsed_request(body, config.token_counting.estimation_ratio)
                    .ok()
            }),
            usage_tolerance: config.routing.usage_tolerance,
            stream: None,
        })
    }

    /// Folds one request's checks into `endpoint`'s scores with the settings of `config` (they
    /// follow configuration reloads); returns the demotions and restorations to apply.
    #[cfg(test)]
    pub(crate) fn record(
        &self,
        config: &Config,
        endpoint: &str,
        check: HonestyCheck,
        now: Instant,
    ) -> Vec<ccf_router::honesty::DemotionChange> {
        let mut board = self.board();
        Self::follow_settings(&mut board, config);
        board.record(endpoint, check, now)
    }

    fn follow_settings(board: &mut HonestyBoard, config: &Config) {
        let settings = HonestySettings::from_config(config);
        if *board.settings() != settings {
            board.set_settings(settings);
        }
    }

    /// Every endpoint's scores at `now`.
    pub(crate) fn view(&self, now: Instant) -> Vec<EndpointHonesty> {
        self.board().view(now)
    }

    /// Sets `ccf_endpoint_honesty_score` for every endpoint checked so far, as its scores stand
    /// at `now` (those of [`Honesty::view`]). Called when `/metrics` is read: setting the four
    /// gauges after every check cost about 630 instructions per request (issue 19), and a score
    /// read at the scrape is the one the dashboard shows at that moment.
    pub(crate) fn export_scores(&self, metrics: &Metrics, now: Instant) {
        for endpoint in self.view(now).iter().filter(|endpoint| endpoint.checks > 0) {
            metrics.set_honesty_score(&endpoint.endpoint, "overall", endpoint.score);
            for signal in HonestySignal::ALL {
                metrics.set_honesty_score(
                    &endpoint.endpoint,
                    signal.as_str(),
                    endpoint.signal(signal).score,
                );
            }
        }
    }

    /// Whether each endpoint is demoted.
    pub(crate) fn demotions(&self) -> Vec<(String, bool)> {
        self.board().demotions()
    }

    /// Logs the flagged verdicts of `check`, folds it into `endpoint`'s scores, exports the
    /// scores to `/metrics` and logs the demotions and restorations it caused. Returns whether
    /// the router must be brought in step with [`Honesty::demotions`] (the caller applies them):
    /// when this check demoted or restored an endpoint, or any endpoint is demoted (a
    /// configuration reload may have rebuilt its routing state). With no endpoint demoted before
    /// or after, the router has nothing to learn and is not locked.
    pub(crate) fn record_check(
        &self,
        config: &Config,
        endpoint: &str,
        check: HonestyCheck,
    ) -> bool {
        for verdict in check.verdicts.iter().filter(|verdict| verdict.flagged) {
            info!(
                endpoint,
                request_id = %check.request_id,
                signal = verdict.signal.as_str(),
                asked = %verdict.observed.asked(),
                reported = %verdict.observed.reported(),
                "relay honesty check flagged"
            );
        }
        let now = Instant::now();
        // One lock for the fold and what is read back. The scores reach `/metrics` when it is
        // read ([`Honesty::export_scores`]), not after every check.
        let (changes, any_demoted) = {
            let mut board = self.board();
            Self::follow_settings(&mut board, config);
            let changes = board.record(endpoint, check, now);
            (changes, board.any_demoted())
        };
        for change in &changes {
            if change.demoted {
                warn!(
                    endpoint = %change.endpoint,
                    score = change.score,
                    "relay honesty score fell below routing.honesty_threshold: endpoint demoted"
                );
            } else {
                info!(
                    endpoint = %change.endpoint,
                    score = change.score,
                    "relay honesty score recovered: endpoint restored"
                );
            }
        }
        !changes.is_empty() || any_demoted
    }
}

/// When a stream's content deltas arrived.
#[derive(Debug, Clone, Copy, Default)]
struct DeltaTiming {
    first: Option<Instant>,
    last: Option<Instant>,
    deltas: u32,
    /// Gaps between consecutive deltas shorter than [`BURST_TIGHT_GAP`] (the deltas of one
    /// frame arrived together: their gaps are tight).
    tight_gaps: u32,
}

/// Watches one request's answer for the honesty checks.
pub(crate) struct HonestyWatch {
    request_id: RequestId,
    request_model: Option<String>,
    /// The model sent in place of `request_model` by the answering endpoint's `model_map`.
    sent_model: Option<String>,
    /// The request's input tokens as estimated locally; none when its body is not a JSON object.
    input_estimate: Option<InputEstimate>,
    usage_tolerance: f64,
    /// Set for an uncompressed SSE answer: its deltas are timed.
    stream: Option<DeltaTiming>,
}

impl HonestyWatch {
    /// The attempt about to be sent carries `model` in place of the request's (an endpoint's
    /// `model_map`; `None`: unchanged): the answer's model is compared with what was sent.
    pub(crate) fn model_sent(&mut self, model: Option<&str>) {
        self.sent_model = model.map(str::to_string);
    }

    /// The answer is about to be relayed: time its content deltas when it is an SSE stream the
    /// frames of which can be read as they are (no content encoding).
    pub(crate) fn watch_answer(&mut self, is_event_stream: bool, content_encoding: Option<&str>) {
        let plain = content_encoding.map(str::trim).is_none_or(|encoding| {
            encoding.is_empty() || encoding.eq_ignore_ascii_case("identity")
        });
        if is_event_stream && plain {
            self.stream = Some(DeltaTiming::default());
        }
    }

    /// The client held the relay back (frames waited for it): arrival times say nothing about
    /// the upstream's pace any more, so this answer's pacing is not judged.
    pub(crate) fn relay_backpressured(&mut self) {
        self.stream = None;
    }

    /// One relayed body frame whose content deltas are not known otherwise (the body is not
    /// decoded as an event stream): they are counted by a scan for the delta marker.
    pub(crate) fn on_data(&mut self, data: &[u8]) {
        if self.stream.is_some() {
            self.on_deltas(count_content_deltas(data));
        }
    }

    /// One relayed body frame that completed `deltas` content delta events. Allocation-free:
    /// one clock read when there are any.
    pub(crate) fn on_deltas(&mut self, deltas: u32) {
        let Some(timing) = self.stream.as_mut() else {
            return;
        };
        if deltas == 0 {
            return;
        }
        let now = Instant::now();
        let mut tight = deltas - 1;
        if timing
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < BURST_TIGHT_GAP)
        {
            tight += 1;
        }
        timing.first.get_or_insert(now);
        timing.last = Some(now);
        timing.deltas = timing.deltas.saturating_add(deltas);
        timing.tight_gaps = timing.tight_gaps.saturating_add(tight);
    }

    /// The answer ended well: compares what the endpoint reported with what was asked and sent.
    pub(crate) fn finish(self, extraction: &Extraction) -> HonestyCheck {
        let mut verdicts = Vec::with_capacity(3);
        if let (Some(requested), Some(responded)) = (
            self.sent_model.or(self.request_model),
            extraction
                .model
                .as_deref()
                .filter(|model| !model.is_empty()),
        ) {
            let matches = models_match(&requested, responded);
            verdicts.push(SignalVerdict::model(requested, responded, matches));
        }
        if let Some(usage) = extraction.usage.as_ref().filter(|_| !extraction.partial) {
            if let Some(estimate) = self.input_estimate {
                let reported = usage
                    .input_tokens
                    .saturating_add(usage.cache_read_input_tokens)
                    .saturating_add(usage.cache_creation_input_tokens);
                let known = estimate.known_tokens;
                verdicts.push(if estimate.unknown_blocks == 0 {
                    SignalVerdict::usage(reported, known, self.usage_tolerance)
                } else {
                    SignalVerdict::usage_at_least(reported, known, self.usage_tolerance)
                });
            }
        }
        // Too few deltas say nothing about pacing: no verdict rather than a pass.
        if let Some(DeltaTiming {
            first: Some(first),
            last: Some(last),
            deltas,
            tight_gaps,
        }) = self
            .stream
            .filter(|timing| timing.deltas >= BURST_MIN_DELTAS)
        {
            verdicts.push(SignalVerdict::stream(
                deltas,
                tight_gaps,
                last.saturating_duration_since(first),
            ));
        }
        HonestyCheck {
            // `text()` writes the 20 bytes directly; `to_string` went through `fmt` (issue 19).
            request_id: self.request_id.text().as_str().to_owned(),
            at: SystemTime::now(),
            verdicts,
        }
    }
}

/// How many content delta events start in `data`: the marker's occurrences, found with
/// `memchr`'s vectorised search (a scan stopping at every quote cost ~9,000 instructions per
/// streamed answer, issue 19).
fn count_content_deltas(data: &[u8]) -> u32 {
    static MARKER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(CONTENT_DELTA_MARKER));
    u32::try_from(MARKER.find_iter(data).count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
