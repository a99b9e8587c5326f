//! The thin loop that connects [`App`] to a real terminal and a running [`Forwarder`].
//!
//! One task owns the terminal. It waits on four things at once: terminal input (crossterm's
//! event stream), the forwarder's event bus, a tick every `tui.update_interval`, and a short frame
//! deadline armed only when something changed. Nothing redraws while nothing happens, so an idle
//! UI wakes once per tick. Keys redraw at once; bursts of request events are batched into one
//! frame per [`FRAME`].
//!
//! "Cost today" comes from the usage store: a task owned by the loop (aborted when it ends) asks
//! the store for today's summary rows every [`COST_TODAY_EVERY`] and hands the total over a
//! `watch` channel, so a slow database never holds up a frame.
//!
//! The terminal is restored when the loop ends for any reason (quit, the caller's shutdown, an
//! error: a drop guard) and on panic (ratatui's panic hook, installed by `ratatui::try_init`).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ccf_store::{DayZone, SummaryQuery, UsageStore};
use ccf_webhooks::Webhooks;
use tokio::sync::watch;

use ccf_proxy::{Forwarder, ForwarderEvent};
use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::app::{Action, App, AppInfo, Snapshot};
use crate::control::perform;
use crate::logs::LogBuffer;

/// Shortest time between two redraws caused by forwarder events.
pub const FRAME: Duration = Duration::from_millis(100);

/// Why the terminal UI stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The user pressed `q` or Ctrl+C: the caller should shut the forwarder down.
    Quit,
    /// The caller's shutdown future resolved (the forwarder is stopping anyway).
    Shutdown,
    /// Terminal input ended.
    InputClosed,
}

/// Why the terminal UI failed.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The terminal could not be set up, read or drawn on.
    #[error("terminal error: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Restores the terminal and sends log lines back to the caller's other output when dropped.
struct RestoreGuard {
    logs: LogBuffer,
}

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        ratatui::restore();
        self.logs.set_attached(false);
    }
}

/// How often "cost today" is read from the usage store.
pub const COST_TODAY_EVERY: Duration = Duration::from_secs(5);

/// Today's cost in nano-USD as `store` counts it: the sum of today's `usage_summary` rows, today
/// being a day of `day_zone` (the store's own zone, from the same `timezone`). Final requests
/// are the only ones with a cost, and the summary counts every final request once, whichever
/// forwarder wrote it.
pub async fn cost_today(store: &dyn UsageStore, day_zone: DayZone) -> Option<i64> {
    let today = day_zone.today().format("%Y-%m-%d").to_string();
    let rows = store
        .summary(&SummaryQuery {
            start_date: Some(today.clone()),
            end_date: Some(today),
            ..SummaryQuery::default()
        })
        .await
        .ok()?;
    Some(rows.iter().map(|row| row.total_cost_nano_usd).sum())
}

/// Aborts the cost task when the loop ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the terminal UI on stdout until the user quits, `shutdown` resolves, or input ends.
/// Takes over the terminal (raw mode, alternate screen) and gives it back before returning.
/// `store` is the usage store when usage tracking is on ("cost today" is read from it);
/// `webhooks` holds the webhook dispatcher's state once it runs (its delivery counters are shown).
pub async fn run(
    forwarder: Forwarder,
    logs: LogBuffer,
    info: AppInfo,
    store: Option<Arc<dyn UsageStore>>,
    webhooks: Arc<OnceLock<Webhooks>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, TuiError> {
    let config = forwarder.config();
    let interval = config
        .tui
        .update_interval
        .get()
        .max(Duration::from_millis(100));
    // Subscribe first, so no event between the first snapshot and the loop is missed. Request
    // changes come through the lossless subscription (a final outcome is never dropped, however
    // slow the terminal); the broadcast bus only says when routing or health changed.
    let mut bus = forwarder.events().subscribe();
    let mut requests = forwarder.events().subscribe_requests();
    let day_zone = DayZone::from_config(config.timezone.as_deref());
    let (cost_sender, mut cost_receiver) = watch::channel::<Option<i64>>(None);
    let _cost_task = store.map(|store| {
        AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(COST_TODAY_EVERY);
            loop {
                every.tick().await;
                let cost = cost_today(store.as_ref(), day_zone).await;
                if cost_sender.send(cost).is_err() {
                    return;
                }
            }
        }))
    });
    let mut app = App::new(config, info, logs.clone(), Instant::now());
    app.refresh(
        capture(&forwarder, &webhooks),
        Instant::now(),
        SystemTime::now(),
    );

    logs.set_attached(true);
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(error) => {
            ratatui::restore();
            logs.set_attached(false);
            return Err(TuiError::Terminal(error));
        }
    };
    let _guard = RestoreGuard { logs: logs.clone() };
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut frame_deadline: Option<tokio::time::Instant> = None;
    let mut needs_snapshot = false;
    let mut bus_open = true;
    tokio::pin!(shutdown);

    terminal.draw(|frame| app.render(frame))?;
    let exit = loop {
        let deadline = frame_deadline;
        let mut redraw = false;
        tokio::select! {
            () = &mut shutdown => break Exit::Shutdown,
            event = input.next() => match event {
                Some(Ok(Event::Key(key))) => {
                    for action in app.handle_key(key) {
                        if action == Action::Quit {
                            return Ok(Exit::Quit);
                        }
                        if let Some(notice) = perform(&forwarder, &action) {
                            app.notify(notice);
                        }
                        needs_snapshot = true;
                    }
                    if needs_snapshot {
                        app.refresh(capture(&forwarder, &webhooks), Instant::now(), SystemTime::now());
                        needs_snapshot = false;
                    }
                    redraw = true;
                }
                Some(Ok(Event::Resize(..))) => redraw = true,
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(TuiError::Terminal(error)),
                None => break Exit::InputClosed,
            },
            received = bus.recv(), if bus_open => {
                let mut next = Some(received);
                while let Some(received) = next.take() {
                    match received {
                        Ok(ForwarderEvent::Request(_)) => {}
                        Ok(_) => needs_snapshot = true,
                        Err(RecvError::Lagged(_)) => needs_snapshot = true,
                        Err(RecvError::Closed) => bus_open = false,
                    }
                    // Take what else is queued now, so a burst costs one frame.
                    next = match bus.try_recv() {
                        Ok(event) => Some(Ok(event)),
                        Err(TryRecvError::Lagged(skipped)) => Some(Err(RecvError::Lagged(skipped))),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => None,
                    };
                }
                if frame_deadline.is_none() {
                    frame_deadline = Some(tokio::time::Instant::now() + FRAME);
                }
            }
            event = requests.recv() => {
                app.on_request(event.record());
                while let Some(event) = requests.try_recv() {
                    app.on_request(event.record());
                }
                if frame_deadline.is_none() {
                    frame_deadline = Some(tokio::time::Instant::now() + FRAME);
                }
            }
            () = wait_until(deadline) => {
                frame_deadline = None;
                redraw = true;
            }
            _ = tick.tick() => {
                needs_snapshot = true;
                redraw = true;
            }
            Ok(()) = cost_receiver.changed() => {
                app.set_cost_today(*cost_receiver.borrow_and_update());
                redraw = true;
            }
        }
        if redraw {
            if needs_snapshot {
                app.refresh(
                    capture(&forwarder, &webhooks),
                    Instant::now(),
                    SystemTime::now(),
                );
                needs_snapshot = false;
            }
            terminal.draw(|frame| app.render(frame))?;
        }
    };
    Ok(exit)
}

/// The forwarder's state and, once the dispatcher runs, the webhook counters.
fn capture(forwarder: &Forwarder, webhooks: &OnceLock<Webhooks>) -> Snapshot {
    Snapshot::capture(forwarder).with_webhooks(webhooks.get())
}

async fn wait_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether a terminal UI can run: stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}
