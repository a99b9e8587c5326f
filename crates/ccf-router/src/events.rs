//! Routing events: every change in routing state is reported as a [`RouterEvent`] by the method
//! that made it (an evaluation, an operator action, a traffic outcome, a reload). The router
//! never publishes them itself; the caller forwards them to the event bus, the admin live stream
//! and the TUI. Adding a kind of change means adding a variant here and returning it from the
//! method that causes it.

use std::time::Instant;

/// A change in routing state, returned by the method that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterEvent {
    /// Requests now go to another group (or to none).
    ActiveGroupChanged {
        /// The previous active group.
        from: Option<String>,
        /// The new active group.
        to: Option<String>,
    },
    /// An operator activated a group.
    GroupActivated {
        /// The group.
        group: String,
        /// Activated with no healthy endpoint.
        forced: bool,
    },
    /// An operator paused a group.
    GroupPaused {
        /// The group.
        group: String,
        /// End of a timed pause; `None` means until resumed.
        until: Option<Instant>,
    },
    /// A pause ended (operator resume, activation or timed pause expiry).
    GroupResumed {
        /// The group.
        group: String,
    },
    /// A group failed and is out of rotation until `until` (auto mode).
    GroupCooldown {
        /// The group.
        group: String,
        /// End of the cooldown.
        until: Instant,
    },
    /// A cooldown expired, or real traffic on the group succeeded (never a probe).
    GroupCooldownEnded {
        /// The group.
        group: String,
    },
    /// Every endpoint of the active group failed in manual mode; an operator should switch.
    GroupNeedsAttention {
        /// The group.
        group: String,
    },
    /// An endpoint's effective priority changed.
    PriorityChanged {
        /// The endpoint.
        endpoint: String,
        /// Its new priority.
        priority: u32,
    },
    /// An endpoint is rate limited and skipped until `until`.
    EndpointBlocked {
        /// The endpoint.
        endpoint: String,
        /// End of the block.
        until: Instant,
    },
    /// An endpoint was demoted for a low honesty score (`demoted: true`) or restored.
    EndpointDemoted {
        /// The endpoint.
        endpoint: String,
        /// Demoted now; `false` when restored.
        demoted: bool,
    },
}
