//! cc-forwarder webhooks (`webhooks:` in the configuration): routing, health, budget, quota and
//! reload events sent as signed JSON to HTTP receivers.
//!
//! One dispatcher task subscribes to the engine's event bus ([`ccf_proxy::EventBus`]) and turns
//! the events a receiver subscribed to into [`Notification`]s (`notification.rs`); each receiver
//! has its own bounded queue and delivery task (`delivery.rs`: tries with exponential back-off,
//! a timeout per try, signing in `signing.rs`), so a slow receiver delays nobody else and the
//! request path never waits for a webhook: publishing on the bus is all the engine does. What
//! cannot be delivered is counted (per receiver, in [`WebhookStats`] and in the
//! `ccf_webhook_deliveries_total` metric): refused or given up (`failed`), pushed out of a full
//! queue (`dropped`), or lost because the dispatcher fell behind the bus (`failed` too).
//!
//! A successful reload (seen on the bus as `ConfigReloaded`) replaces the receiver list: a
//! receiver unchanged at the same position keeps its queue and counters, any other starts
//! afresh. Requests go out on the engine's upstream client stack (hyper-util, rustls;
//! `proxy.*` and `tls.ca_file` apply), built from the running configuration.
//!
//! This crate must not know the admin API's JSON (the admin crate maps [`WebhookStats`]) nor
//! anything of the request path. Main types: [`Webhooks`] (the shared state, cheap to clone),
//! [`WebhookTask`] (owns the tasks), [`DeliveryPolicy`].

mod delivery;
mod notification;
mod signing;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use ccf_config::{Config, Webhook, WebhookEvent};
use ccf_proxy::monitoring::WebhookMetrics;
use ccf_proxy::{Forwarder, ForwarderEvent, UpstreamClient};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use delivery::{classify, DeliveryPolicy, TryOutcome};
pub use notification::Notification;
pub use signing::{signature, EVENT_HEADER, SIGNATURE_HEADER};

/// Connect timeout of webhook requests (the per-try timeout bounds the whole try anyway).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one receiver has seen so far (a snapshot for the admin API and the dashboard).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookStats {
    /// Position in `webhooks[]` (also the metric's `webhook` label).
    pub index: usize,
    /// The URL with any password and query values masked.
    pub url: String,
    /// The events it subscribed to.
    pub events: Vec<WebhookEvent>,
    /// Deliveries are signed (`secret` set).
    pub signed: bool,
    /// Notifications the receiver accepted (`2xx`).
    pub delivered: u64,
    /// Notifications not delivered: refused (`4xx`), given up after the last try, or lost
    /// because the dispatcher fell behind the event bus.
    pub failed: u64,
    /// Notifications pushed out of the full queue before a try.
    pub dropped: u64,
    /// Tries that failed (each retry counts), delivered or not in the end.
    pub failed_tries: u64,
    /// Notifications waiting now (not counting one being tried).
    pub queued: usize,
    /// When the last try ended.
    pub last_attempt: Option<SystemTime>,
    /// The status of the last try, if the receiver answered.
    pub last_status: Option<u16>,
    /// Why the last failed try failed (kept after later successes, with
    /// [`WebhookStats::last_error_at`]).
    pub last_error: Option<String>,
    /// When that failure happened.
    pub last_error_at: Option<SystemTime>,
}

/// The webhook dispatcher's shared state; cheap to clone. [`Webhooks::stats`] reads it from any
/// thread.
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("receivers", &self.targets().len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    instance_id: String,
    policy: DeliveryPolicy,
    metrics: WebhookMetrics,
    targets: Mutex<Vec<Arc<Target>>>,
    /// The running configuration's credentials, masked in free text that goes out.
    secrets: Mutex<Vec<String>>,
    client: Mutex<Option<UpstreamClient>>,
}

/// The running dispatcher and delivery tasks; [`WebhookTask::stop`] ends them (queued
/// notifications are abandoned). Dropping it stops them too.
#[derive(Debug)]
pub struct WebhookTask {
    webhooks: Webhooks,
    stop: CancellationToken,
    dispatcher: Option<JoinHandle<()>>,
}

impl Drop for WebhookTask {
    fn drop(&mut self) {
        self.stop.cancel();
        for target in self.webhooks.targets() {
            target.stop.cancel();
        }
    }
}

impl WebhookTask {
    /// The shared state, for the admin API.
    pub fn webhooks(&self) -> Webhooks {
        self.webhooks.clone()
    }

    /// Stops the dispatcher and every delivery task and waits for the dispatcher.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for target in self.webhooks.targets() {
            target.stop.cancel();
        }
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.await;
        }
    }
}

impl Webhooks {
    /// Starts the dispatcher on the current runtime for `forwarder`'s configuration, signing
    /// bodies with `instance_id`. Events published after this returns are seen.
    pub fn spawn(forwarder: Forwarder, instance_id: String, policy: DeliveryPolicy) -> WebhookTask {
        let webhooks = Webhooks {
            shared: Arc::new(Shared {
                instance_id,
                policy,
                metrics: forwarder.metrics().webhook_metrics(),
                targets: Mutex::new(Vec::new()),
                secrets: Mutex::new(Vec::new()),
                client: Mutex::new(None),
            }),
        };
        webhooks.apply(&forwarder.config());
        // Subscribed before the task starts, so nothing published from here on is missed. Only
        // the events that are not request changes: request traffic never wakes the dispatcher.
        let receiver = forwarder.events().subscribe_control();
        let stop = CancellationToken::new();
        let dispatcher = tokio::spawn(dispatch(
            webhooks.clone(),
            forwarder,
            receiver,
            stop.clone(),
        ));
        WebhookTask {
            webhooks,
            stop,
            dispatcher: Some(dispatcher),
        }
    }

    /// Every receiver's counters, in `webhooks[]` order.
    pub fn stats(&self) -> Vec<WebhookStats> {
        self.targets().iter().map(|target| target.stats()).collect()
    }

    fn targets(&self) -> Vec<Arc<Target>> {
        self.shared
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes `config`'s receiver list, credentials and client settings.
    fn apply(&self, config: &Config) {
        let shared = &self.shared;
        *shared
            .secrets
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = secrets_of(config);
        match ccf_proxy::build_upstream_client(config, CONNECT_TIMEOUT) {
            Ok(client) => {
                *shared.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(client);
            }
            // The engine built the same client from this configuration, so this is unexpected.
            Err(error) => warn!("webhooks keep their previous HTTP client: {error}"),
        }
        let mut targets = shared
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::with_capacity(config.webhooks.len());
        for (index, webhook) in config.webhooks.iter().enumerate() {
            match targets.get(index) {
                Some(kept) if kept.webhook == *webhook => next.push(Arc::clone(kept)),
                _ => {
                    let target = Arc::new(Target::new(index, webhook.clone()));
                    shared.metrics.set_queue_depth(&target.label, 0);
                    tokio::spawn(deliver(Arc::clone(shared), Arc::clone(&target)));
                    next.push(target);
                }
            }
        }
        for old in targets.iter() {
            if !next.iter().any(|target| Arc::ptr_eq(target, old)) {
                old.stop.cancel();
                if old.index >= next.len() {
                    shared.metrics.forget(&old.label);
                }
            }
        }
        *targets = next;
    }

    fn enqueue(&self, notification: &Notification) {
        for target in self.targets() {
            if !target.webhook.wants(notification.event) {
                continue;
            }
            let (depth, dropped) = {
                let mut queue = target.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let mut dropped = None;
                if queue.len() >= self.shared.policy.queue_capacity.max(1) {
                    dropped = queue.pop_front();
                }
                queue.push_back(notification.clone());
                (queue.len(), dropped)
            };
            if let Some(dropped) = dropped {
                target.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .metrics
                    .count(&target.label, dropped.event.as_str(), "dropped", 1);
                debug!(
                    webhook = target.index,
                    "webhook queue full: oldest notification dropped"
                );
            }
            self.shared.metrics.set_queue_depth(&target.label, depth);
            target.ready.notify_one();
        }
    }

    /// The dispatcher missed `lost` events: each receiver counts them as failed.
    fn count_lost(&self, lost: u64) {
        let error = format!("{lost} events lost: the webhook dispatcher fell behind the event bus");
        warn!("{error}");
        for target in self.targets() {
            target.failed.fetch_add(lost, Ordering::Relaxed);
            self.shared
                .metrics
                .count(&target.label, "unknown", "lost", lost);
            target.record_error(None, error.clone());
        }
    }
}

/// One receiver: its configuration, queue, counters and the delivery task's stop signal.
struct Target {
    index: usize,
    label: String,
    webhook: Webhook,
    queue: Mutex<VecDeque<Notification>>,
    ready: Notify,
    stop: CancellationToken,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    failed_tries: AtomicU64,
    last: Mutex<LastTry>,
}

#[derive(Default)]
struct LastTry {
    at: Option<SystemTime>,
    status: Option<u16>,
    error: Option<String>,
    error_at: Option<SystemTime>,
}

impl Target {
    fn new(index: usize, webhook: Webhook) -> Target {
        Target {
            index,
            label: index.to_string(),
            webhook,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            stop: CancellationToken::new(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_tries: AtomicU64::new(0),
            last: Mutex::new(LastTry::default()),
        }
    }

    fn stats(&self) -> WebhookStats {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        WebhookStats {
            index: self.index,
            url: self.webhook.masked_url(),
            events: self.webhook.events.clone(),
            signed: self.webhook.secret.is_some(),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed_tries: self.failed_tries.load(Ordering::Relaxed),
            queued: self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            last_attempt: last.at,
            last_status: last.status,
            last_error: last.error.clone(),
            last_error_at: last.error_at,
        }
    }

    fn record_try(&self, status: Option<u16>) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.at = Some(SystemTime::now());
        last.status = status;
    }

    fn record_error(&self, status: Option<u16>, error: String) {
        let now = SystemTime::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.at = Some(now);
        last.status = status;
        last.error = Some(error);
        last.error_at = Some(now);
    }
}

/// The dispatcher: bus events to receivers' queues, and reloads to a new receiver list.
async fn dispatch(
    webhooks: Webhooks,
    forwarder: Forwarder,
    mut receiver: broadcast::Receiver<ForwarderEvent>,
    stop: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => break,
            received = receiver.recv() => received,
        };
        match received {
            Ok(event) => {
                if let ForwarderEvent::ConfigReloaded(status) = &event {
                    if status.ok {
                        webhooks.apply(&forwarder.config());
                    }
                }
                let notification = {
                    let secrets = webhooks
                        .shared
                        .secrets
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    Notification::from_event(&event, &secrets)
                };
                if let Some(notification) = notification {
                    webhooks.enqueue(&notification);
                }
            }
            Err(broadcast::error::RecvError::Lagged(lost)) => webhooks.count_lost(lost),
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// One receiver's delivery task: its queue in order, each notification tried until delivered,
/// refused or out of tries. Ends when the receiver is removed or the dispatcher stops.
async fn deliver(shared: Arc<Shared>, target: Arc<Target>) {
    loop {
        let (next, depth) = {
            let mut queue = target.queue.lock().unwrap_or_else(PoisonError::into_inner);
            (queue.pop_front(), queue.len())
        };
        shared.metrics.set_queue_depth(&target.label, depth);
        let Some(notification) = next else {
            tokio::select! {
                () = target.stop.cancelled() => return,
                () = target.ready.notified() => continue,
            }
        };
        let body = notification.body(&shared.instance_id);
        let event = notification.event.as_str();
        let mut failed_tries = 0u32;
        let done = loop {
            let client = shared
                .client
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let outcome = match client {
                Some(client) => {
                    tokio::select! {
                        () = target.stop.cancelled() => return,
                        outcome = delivery::send_once(
                            &client,
                            &target.webhook.url,
                            event,
                            target.webhook.secret.as_ref().map(|secret| secret.expose()),
                            body.clone(),
                            shared.policy.try_timeout,
                        ) => outcome,
                    }
                }
                None => TryOutcome::Retryable {
                    status: None,
                    error: "no HTTP client".to_string(),
                },
            };
            match outcome {
                TryOutcome::Delivered { status } => {
                    target.record_try(Some(status));
                    target.delivered.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.count(&target.label, event, "delivered", 1);
                    break true;
                }
                TryOutcome::Refused { status } => {
                    target.failed_tries.fetch_add(1, Ordering::Relaxed);
                    target.record_error(
                        Some(status),
                        format!("receiver answered {status}; not retried"),
                    );
                    break false;
                }
                TryOutcome::Retryable { status, error } => {
                    failed_tries += 1;
                    target.failed_tries.fetch_add(1, Ordering::Relaxed);
                    let error = {
                        let secrets = shared
                            .secrets
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        ccf_types::sweep_secrets(error, &secrets)
                    };
                    match shared.policy.backoff_after(failed_tries) {
                        Some(wait) => {
                            target.record_error(status, format!("{error}; retrying"));
                            shared.metrics.count(&target.label, event, "retried", 1);
                            tokio::select! {
                                () = target.stop.cancelled() => return,
                                () = tokio::time::sleep(wait) => {}
                            }
                        }
                        None => {
                            target.record_error(
                                status,
                                format!("{error}; gave up after {failed_tries} tries"),
                            );
                            break false;
                        }
                    }
                }
            }
        };
        if !done {
            target.failed.fetch_add(1, Ordering::Relaxed);
            shared.metrics.count(&target.label, event, "failed", 1);
            warn!(
                webhook = target.index,
                event, "webhook notification not delivered"
            );
        }
    }
}

/// The credentials of `config` (endpoint tokens and keys, inbound and admin tokens, the
/// outbound proxy's password, webhook secrets).
fn secrets_of(config: &Config) -> Vec<String> {
    let mut secrets: Vec<String> = Vec::new();
    for endpoint in &config.endpoints {
        secrets.extend(endpoint.token.iter().map(|s| s.expose().to_string()));
        secrets.extend(endpoint.api_key.iter().map(|s| s.expose().to_string()));
    }
    secrets.extend(config.web.auth_token.iter().map(|s| s.expose().to_string()));
    secrets.extend(config.proxy.password.iter().map(|s| s.expose().to_string()));
    secrets.extend(
        config
            .auth
            .named_tokens()
            .into_iter()
            .map(|(_, token)| token.expose().to_string()),
    );
    for webhook in &config.webhooks {
        secrets.extend(webhook.secret.iter().map(|s| s.expose().to_string()));
        secrets.extend(webhook.url.password().map(str::to_string));
    }
    secrets.retain(|secret| !secret.is_empty());
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A dispatcher state with one receiver of `events` and no delivery task, so queues only fill.
    fn with_receiver(capacity: usize, events: &[WebhookEvent]) -> (Webhooks, Arc<Target>) {
        let webhooks = Webhooks {
            shared: Arc::new(Shared {
                instance_id: "test:1".into(),
                policy: DeliveryPolicy {
                    queue_capacity: capacity,
                    ..DeliveryPolicy::default()
                },
                metrics: WebhookMetrics::default(),
                targets: Mutex::new(Vec::new()),
                secrets: Mutex::new(Vec::new()),
                client: Mutex::new(None),
            }),
        };
        let target = Arc::new(Target::new(
            0,
            Webhook {
                url: url::Url::parse("http://127.0.0.1:9/hook").expect("url"),
                events: events.to_vec(),
                secret: None,
            },
        ));
        webhooks
            .shared
            .targets
            .lock()
            .expect("lock")
            .push(Arc::clone(&target));
        (webhooks, target)
    }

    fn notification(event: WebhookEvent, n: u64) -> Notification {
        Notification {
            event,
            at: SystemTime::UNIX_EPOCH,
            data: json!({ "n": n }),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let (webhooks, target) = with_receiver(2, &[WebhookEvent::QuotaLow]);
        for n in 0..3 {
            webhooks.enqueue(&notification(WebhookEvent::QuotaLow, n));
        }
        let queued: Vec<Value> = target
            .queue
            .lock()
            .expect("lock")
            .iter()
            .map(|waiting| waiting.data["n"].clone())
            .collect();
        assert_eq!(queued, vec![json!(1), json!(2)]);
        let stats = webhooks.stats();
        assert_eq!(stats[0].dropped, 1);
        assert_eq!(stats[0].queued, 2);
        assert_eq!(stats[0].failed, 0);
    }

    #[test]
    fn events_a_receiver_did_not_subscribe_to_are_not_queued() {
        let (webhooks, target) = with_receiver(10, &[WebhookEvent::ConfigReloadFailed]);
        webhooks.enqueue(&notification(WebhookEvent::EndpointUnhealthy, 0));
        webhooks.enqueue(&notification(WebhookEvent::GroupSwitched, 1));
        assert!(target.queue.lock().expect("lock").is_empty());
        webhooks.enqueue(&notification(WebhookEvent::ConfigReloadFailed, 2));
        assert_eq!(target.queue.lock().expect("lock").len(), 1);
    }

    #[test]
    fn events_lost_by_a_lagging_dispatcher_count_as_failures_of_every_receiver() {
        let (webhooks, _target) = with_receiver(10, &[WebhookEvent::QuotaLow]);
        webhooks.count_lost(7);
        let stats = webhooks.stats();
        assert_eq!(stats[0].failed, 7);
        assert!(stats[0]
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("7 events lost")));
    }

    #[test]
    fn secrets_of_a_configuration_include_webhook_and_endpoint_credentials() {
        let config = Config::from_yaml_str(
            "endpoints:\n  - name: a\n    url: https://api.example.com\n    token: tok-endpoint-123456\n\
             webhooks:\n  - url: https://u:pw-hook-654321@hooks.example.com/\n    events: [quota_low]\n    secret: whsec-abcdef\n",
        )
        .expect("valid");
        let secrets = secrets_of(&config);
        for expected in ["tok-endpoint-123456", "pw-hook-654321", "whsec-abcdef"] {
            assert!(secrets.iter().any(|s| s == expected), "{expected}");
        }
    }
}
