//! The words a request's state is written in: [`Status`], [`ErrorState`] and [`FailureReason`].
//!
//! Their `as_str` forms are the reference's database and UI vocabulary; `Display`, `FromStr` and
//! serde all use that same form, so a value read back from a store row parses to what was written.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A word that is not part of one of this crate's vocabularies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {vocabulary} `{value}`")]
pub struct UnknownWord {
    /// Which vocabulary was being parsed (`status`, `error state`, `failure reason`).
    pub vocabulary: &'static str,
    /// The text that matched none of its words.
    pub value: String,
}

/// Declares a fieldless enum whose variants each have one fixed snake_case word.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $word)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and displayed word.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($word => Ok($name::$variant),)+
                    _ => Err(UnknownWord { vocabulary: $what, value: text.to_string() }),
                }
            }
        }
    };
}

vocabulary! {
    /// The business status of a request (the database `status` column).
    ///
    /// `pending -> forwarding (again on retry or failover) -> processing -> completed`, and
    /// `failed` / `cancelled` from any state that is not final. Retry and suspension are not
    /// statuses here: they are the separate [`ErrorState`] dimension.
    Status, "status" {
        /// Received, no endpoint chosen yet.
        Pending => "pending",
        /// Sent (or about to be sent) to an endpoint; set again on each failover.
        Forwarding => "forwarding",
        /// The upstream accepted the request; the response is flowing to the client.
        Processing => "processing",
        /// Final: the response reached its end.
        Completed => "completed",
        /// Final: the request failed (before or during the response).
        Failed => "failed",
        /// Final: the client went away (HTTP 499).
        Cancelled => "cancelled",
    }
}

impl Status {
    /// Whether no transition leaves this status.
    pub const fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

vocabulary! {
    /// The error dimension of a request still in flight: why it is not simply progressing.
    ///
    /// Set by `retrying` / `suspended`, cleared by `forwarding`, `resumed`, `processing` and by
    /// every final transition (a final record never carries one).
    ErrorState, "error state" {
        /// A failed attempt is being retried (after a backoff or on the next endpoint).
        Retry => "retry",
        /// Held until an operator or self-healing makes an endpoint available.
        Suspended => "suspended",
    }
}

vocabulary! {
    /// Why an attempt or a request failed, in the reference's `failure_reason` vocabulary.
    FailureReason, "failure reason" {
        /// 429 or another rate-limit answer.
        RateLimited => "rate_limited",
        /// 5xx from the upstream.
        ServerError => "server_error",
        /// The connection failed or broke.
        NetworkError => "network_error",
        /// A connect, header or idle timeout.
        Timeout => "timeout",
        /// A 4xx (or other status) that is final for the request.
        HttpError => "http_error",
        /// 401/403: the endpoint rejected its credentials.
        AuthError => "auth_error",
        /// The response stream broke or carried an `error` event after it started.
        StreamError => "stream_error",
        /// No healthy endpoint to send the request to.
        NoHealthy => "no_healthy",
        /// Every endpoint was tried and failed.
        EndpointExhausted => "endpoint_exhausted",
        /// The client went away; finishing with it records a cancellation.
        ClientCancelled => "client_cancelled",
        /// Anything else.
        UnknownError => "unknown_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T>(all: &[T], expected: &[&str])
    where
        T: Copy + fmt::Debug + PartialEq + fmt::Display + FromStr + Serialize,
        T::Err: fmt::Debug,
    {
        let words: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(words, expected);
        for value in all {
            let word = value.to_string();
            assert_eq!(word.parse::<T>().ok(), Some(*value));
            assert_eq!(serde_json::to_string(value).unwrap(), format!("\"{word}\""));
        }
    }

    #[test]
    fn words_are_the_reference_vocabulary_and_round_trip() {
        check(
            Status::ALL,
            &[
                "pending",
                "forwarding",
                "processing",
                "completed",
                "failed",
                "cancelled",
            ],
        );
        check(ErrorState::ALL, &["retry", "suspended"]);
        check(
            FailureReason::ALL,
            &[
                "rate_limited",
                "server_error",
                "network_error",
                "timeout",
                "http_error",
                "auth_error",
                "stream_error",
                "no_healthy",
                "endpoint_exhausted",
                "client_cancelled",
                "unknown_error",
            ],
        );
    }

    #[test]
    fn unknown_words_are_rejected_with_their_vocabulary() {
        let error = "retry".parse::<Status>().unwrap_err();
        assert_eq!(error.to_string(), "unknown status `retry`");
        assert!("Pending".parse::<Status>().is_err());
        assert!("".parse::<FailureReason>().is_err());
        let from_json: Result<FailureReason, _> = serde_json::from_str("\"parsing_error\"");
        assert!(from_json.is_err());
    }

    #[test]
    fn only_completed_failed_and_cancelled_are_final() {
        let finals: Vec<Status> = Status::ALL
            .iter()
            .copied()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [Status::Completed, Status::Failed, Status::Cancelled]
        );
    }
}
