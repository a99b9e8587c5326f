//! Download tickets: short-lived, single-use permissions to fetch one usage export with a plain
//! link, so a browser streams the export to disk instead of holding it in memory.
//!
//! With `web.auth_token` set every API call carries `Authorization: Bearer`, but a link the
//! browser follows cannot: the dashboard asks `POST /api/v1/usage/export/ticket?<export query>`
//! (authenticated like every call) for a ticket, then follows
//! `/api/v1/usage/export?<export query>&ticket=<ticket>`. A ticket is 256 random bits, valid
//! for [`DEFAULT_TICKET_TTL`], consumed by the first request that presents it (whether it is
//! then accepted or not), and accepted only by the export route with exactly the query it was
//! issued for. Only the ticket's masked form is ever logged.
//!
//! Owns: the outstanding tickets ([`DownloadTickets`], kept in [`crate::Shared`]) and the ticket
//! route's handler. Must not know what the export contains: the export route checks the ticket
//! in [`crate::dispatch`] instead of the token, then runs as usual.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;
use rand::RngCore;
use serde_json::json;

use crate::dispatch::{ok, Handled};
use crate::error::ApiError;

/// How long a ticket stays valid when the embedder sets nothing else.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(60);

/// Most tickets outstanding at once; past it the one closest to expiry is dropped. A dashboard
/// needs one per click, so this only bounds what a misbehaving script can make us hold.
const MAX_OUTSTANDING: usize = 256;

/// Query parameters that are not part of what a ticket is bound to.
const UNBOUND_PARAMETERS: [&str; 2] = ["ticket", "access_token"];

/// The export query a ticket is bound to: every parameter with a non-empty value (the export
/// treats an empty value as absent), sorted, without the credentials themselves.
type BoundQuery = BTreeMap<String, String>;

fn bound_query(query: &HashMap<String, String>) -> BoundQuery {
    query
        .iter()
        .filter(|(key, value)| {
            !UNBOUND_PARAMETERS.contains(&key.as_str()) && !value.trim().is_empty()
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

struct Outstanding {
    query: BoundQuery,
    expires_at: Instant,
}

/// The outstanding download tickets.
pub(crate) struct DownloadTickets {
    ttl: Duration,
    outstanding: Mutex<HashMap<String, Outstanding>>,
}

/// A ticket just issued.
#[derive(Debug)]
pub(crate) struct IssuedTicket {
    /// The ticket itself (64 hex digits).
    pub(crate) ticket: String,
    /// The export link that redeems it: the bound query plus `ticket`.
    pub(crate) url: String,
}

/// Why a presented ticket is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TicketRefusal {
    /// Never issued, or already used.
    Unknown,
    /// Issued, but its time ran out.
    Expired,
    /// Issued for another export query.
    OtherQuery,
}

impl From<TicketRefusal> for ApiError {
    fn from(refusal: TicketRefusal) -> ApiError {
        match refusal {
            TicketRefusal::Unknown => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_ticket",
                "unknown or already used download ticket: ask POST /api/v1/usage/export/ticket \
                 for a new one",
            ),
            TicketRefusal::Expired => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "ticket_expired",
                "the download ticket expired: ask POST /api/v1/usage/export/ticket for a new one",
            ),
            TicketRefusal::OtherQuery => ApiError::new(
                StatusCode::FORBIDDEN,
                "ticket_query_mismatch",
                "the download ticket was issued for another export query",
            ),
        }
    }
}

impl DownloadTickets {
    /// No tickets yet; each one issued lives `ttl`.
    pub(crate) fn new(ttl: Duration) -> DownloadTickets {
        DownloadTickets {
            ttl,
            outstanding: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Outstanding>> {
        self.outstanding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long a ticket lives.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for the export `query`, issued at `now`.
    pub(crate) fn issue(&self, query: &HashMap<String, String>, now: Instant) -> IssuedTicket {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let ticket: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let query = bound_query(query);
        let mut link = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in &query {
            link.append_pair(key, value);
        }
        link.append_pair("ticket", &ticket);
        let url = format!("/api/v1/usage/export?{}", link.finish());

        let mut outstanding = self.lock();
        outstanding.retain(|_, entry| entry.expires_at > now);
        if outstanding.len() >= MAX_OUTSTANDING {
            let soonest = outstanding
                .iter()
                .min_by_key(|(_, entry)| entry.expires_at)
                .map(|(key, _)| key.clone());
            if let Some(soonest) = soonest {
                outstanding.remove(&soonest);
            }
        }
        outstanding.insert(
            ticket.clone(),
            Outstanding {
                query,
                expires_at: now + self.ttl,
            },
        );
        IssuedTicket { ticket, url }
    }

    /// Uses `ticket` for the export `query` at `now`. The ticket is gone afterwards, whether it
    /// was accepted or not: a second presentation is always [`TicketRefusal::Unknown`].
    pub(crate) fn redeem(
        &self,
        ticket: &str,
        query: &HashMap<String, String>,
        now: Instant,
    ) -> Result<(), TicketRefusal> {
        let entry = self.lock().remove(ticket);
        let refusal = match entry {
            None => TicketRefusal::Unknown,
            Some(entry) if now >= entry.expires_at => TicketRefusal::Expired,
            Some(entry) if entry.query != bound_query(query) => TicketRefusal::OtherQuery,
            Some(_) => return Ok(()),
        };
        tracing::info!(
            ticket = %ccf_types::mask_secret(ticket),
            reason = ?refusal,
            "usage export download ticket refused"
        );
        Err(refusal)
    }

    /// How many tickets are outstanding (expired ones included until the next issue).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// `POST /api/v1/usage/export/ticket?<export query>`: a ticket for that export.
pub(crate) fn issue_ticket(tickets: &DownloadTickets, query: &HashMap<String, String>) -> Handled {
    let issued = tickets.issue(query, Instant::now());
    ok(json!({
        "success": true,
        "data": {
            "ticket": issued.ticket,
            "url": issued.url,
            "expires_in_seconds": tickets.ttl().as_secs(),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn a_ticket_is_accepted_once_for_its_own_query() {
        let tickets = DownloadTickets::new(Duration::from_secs(60));
        let now = Instant::now();
        let export = query(&[("format", "csv"), ("start_date", "2026-12-01T00:00:00Z")]);
        let issued = tickets.issue(&export, now);
        assert_eq!(issued.ticket.len(), 64);
        assert!(issued.ticket.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            issued.url,
            format!(
                "/api/v1/usage/export?format=csv&start_date=2026-12-01T00%3A00%3A00Z&ticket={}",
                issued.ticket
            )
        );
        // The link carries the ticket itself, and an empty parameter or `access_token` changes
        // nothing about the query it is bound to.
        let mut presented = export.clone();
        presented.insert("ticket".into(), issued.ticket.clone());
        presented.insert("model".into(), String::new());
        presented.insert("access_token".into(), "x".into());
        assert_eq!(
            tickets.redeem(&issued.ticket, &presented, now + Duration::from_secs(59)),
            Ok(())
        );
        assert_eq!(
            tickets.redeem(&issued.ticket, &presented, now),
            Err(TicketRefusal::Unknown)
        );
    }

    #[test]
    fn tickets_expire_at_their_ttl() {
        let tickets = DownloadTickets::new(Duration::from_secs(60));
        let now = Instant::now();
        let export = query(&[("format", "json")]);
        let first = tickets.issue(&export, now);
        let second = tickets.issue(&export, now);
        assert_ne!(first.ticket, second.ticket);
        assert_eq!(
            tickets.redeem(&first.ticket, &export, now + Duration::from_secs(60)),
            Err(TicketRefusal::Expired)
        );
        assert_eq!(
            tickets.redeem(&second.ticket, &export, now + Duration::from_millis(59_999)),
            Ok(())
        );
    }

    #[test]
    fn a_ticket_for_another_query_is_refused_and_used_up() {
        let tickets = DownloadTickets::new(Duration::from_secs(60));
        let now = Instant::now();
        let issued = tickets.issue(&query(&[("format", "csv"), ("model", "a")]), now);
        for other in [
            query(&[("format", "csv")]),
            query(&[("format", "csv"), ("model", "b")]),
            query(&[("format", "csv"), ("model", "a"), ("group", "g")]),
        ] {
            let fresh = tickets.issue(&query(&[("format", "csv"), ("model", "a")]), now);
            assert_eq!(
                tickets.redeem(&fresh.ticket, &other, now),
                Err(TicketRefusal::OtherQuery),
                "{other:?}"
            );
        }
        assert_eq!(
            tickets.redeem(&issued.ticket, &query(&[("format", "json")]), now),
            Err(TicketRefusal::OtherQuery)
        );
        assert_eq!(
            tickets.redeem(
                &issued.ticket,
                &query(&[("format", "csv"), ("model", "a")]),
                now
            ),
            Err(TicketRefusal::Unknown)
        );
        assert_eq!(
            tickets.redeem("made-up", &query(&[]), now),
            Err(TicketRefusal::Unknown)
        );
    }

    /// Records every event's fields as text: the smallest subscriber that shows what a log line
    /// would contain.
    #[derive(Default, Clone)]
    struct Recorded(std::sync::Arc<Mutex<Vec<String>>>);

    struct FieldText<'a>(&'a mut String);

    impl tracing::field::Visit for FieldText<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl tracing::Subscriber for Recorded {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut line = String::new();
            event.record(&mut FieldText(&mut line));
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_refused_ticket_is_logged_masked_only() {
        let tickets = DownloadTickets::new(Duration::from_secs(60));
        let now = Instant::now();
        let export = query(&[("format", "csv")]);
        let recorded = Recorded::default();
        let issued = tracing::subscriber::with_default(recorded.clone(), || {
            let issued = tickets.issue(&export, now);
            let wrong = query(&[("format", "json")]);
            assert_eq!(
                tickets.redeem(&issued.ticket, &wrong, now),
                Err(TicketRefusal::OtherQuery)
            );
            assert_eq!(
                tickets.redeem(&issued.ticket, &export, now),
                Err(TicketRefusal::Unknown)
            );
            issued
        });
        let lines = recorded
            .0
            .lock()
            .map(|lines| lines.clone())
            .unwrap_or_default();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let masked = format!("ticket={}***", &issued.ticket[..4]);
        for line in &lines {
            assert!(!line.contains(&issued.ticket), "unmasked ticket in {line}");
            assert!(line.contains(&masked), "{line}");
        }
        assert!(lines[0].contains("reason=OtherQuery"), "{lines:?}");
        assert!(lines[1].contains("reason=Unknown"), "{lines:?}");
    }

    #[test]
    fn outstanding_tickets_are_bounded_and_expired_ones_pruned() {
        let tickets = DownloadTickets::new(Duration::from_secs(60));
        let start = Instant::now();
        let export = query(&[]);
        let oldest = tickets.issue(&export, start);
        for i in 1..MAX_OUTSTANDING {
            tickets.issue(&export, start + Duration::from_millis(i as u64));
        }
        assert_eq!(tickets.len(), MAX_OUTSTANDING);
        let newest = tickets.issue(&export, start + Duration::from_secs(1));
        assert_eq!(tickets.len(), MAX_OUTSTANDING);
        assert_eq!(
            tickets.redeem(&oldest.ticket, &export, start + Duration::from_secs(1)),
            Err(TicketRefusal::Unknown)
        );
        // Once every earlier one has expired, issuing drops them all.
        tickets.issue(&export, start + Duration::from_millis(60_500));
        assert_eq!(tickets.len(), 2);
        assert_eq!(
            tickets.redeem(
                &newest.ticket,
                &export,
                start + Duration::from_millis(60_500)
            ),
            Ok(())
        );
    }
}
