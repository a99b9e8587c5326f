//! Table tests: each case is a list of steps, each step an action and the expected rendering of
//! its outcome. Times are whole seconds after `t0`; events render as short lines.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ccf_config::{Endpoint, StrategyType};

use super::*;

use crate::test_support::{endpoint, Spec, AUTO, MANUAL};

const FASTEST: RouterSettings = RouterSettings {
    auto_switch: true,
    cooldown: Duration::from_secs(600),
    strategy: StrategyType::Fastest,
};

/// Three groups: A (priority 1, a1 a2), B (priority 2, b1 b2), C (priority 3, c1).
const ABC: &[Spec] = &[
    ("a1", "A", 1, 1),
    ("a2", "A", 1, 2),
    ("b1", "B", 2, 1),
    ("b2", "B", 2, 2),
    ("c1", "C", 3, 1),
];

/// A scenario: actions and the expected rendering of each outcome.
type Steps = &'static [(Act, &'static str)];

#[derive(Debug, Clone, Copy)]
enum Act {
    /// Move the clock to `t0 + secs`.
    At(u64),
    /// Mark endpoints unhealthy.
    Down(&'static [&'static str]),
    /// Mark endpoints healthy.
    Up(&'static [&'static str]),
    Plan,
    Fail(&'static str),
    /// Real traffic on the group succeeded.
    Served(&'static str),
    Latency(&'static str, u64),
    Probe(&'static str, u64),
    /// Block until `t0 + secs`.
    Block(&'static str, u64),
    Activate(&'static str),
    Force(&'static str),
    Pause(&'static str, Option<u64>),
    Resume(&'static str),
    SetPriority(&'static str, u32),
    Prefer(&'static str),
    ActiveGroup,
    Groups,
    Endpoints,
    NextChange,
}

struct Harness {
    router: Router,
    t0: Instant,
    now: Instant,
    down: BTreeSet<String>,
}

impl Harness {
    fn new(specs: &[Spec], settings: RouterSettings) -> Self {
        let endpoints: Vec<Endpoint> = specs.iter().copied().map(endpoint).collect();
        let t0 = Instant::now();
        Harness {
            router: Router::new(&endpoints, settings),
            t0,
            now: t0,
            down: BTreeSet::new(),
        }
    }

    fn secs(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.t0).as_secs()
    }

    fn event(&self, event: &RouterEvent) -> String {
        let name = |group: &Option<String>| group.clone().unwrap_or_else(|| "-".into());
        match event {
            RouterEvent::ActiveGroupChanged { from, to } => {
                format!("active {} -> {}", name(from), name(to))
            }
            RouterEvent::GroupActivated { group, forced } => {
                format!("activated {group}{}", if *forced { " forced" } else { "" })
            }
            RouterEvent::GroupPaused { group, until } => match until {
                Some(until) => format!("paused {group} until {}", self.secs(*until)),
                None => format!("paused {group}"),
            },
            RouterEvent::GroupResumed { group } => format!("resumed {group}"),
            RouterEvent::GroupCooldown { group, until } => {
                format!("cooldown {group} until {}", self.secs(*until))
            }
            RouterEvent::GroupCooldownEnded { group } => format!("cooldown ended {group}"),
            RouterEvent::GroupNeedsAttention { group } => format!("attention {group}"),
            RouterEvent::PriorityChanged { endpoint, priority } => {
                format!("priority {endpoint}={priority}")
            }
            RouterEvent::EndpointBlocked { endpoint, until } => {
                format!("blocked {endpoint} until {}", self.secs(*until))
            }
            RouterEvent::EndpointDemoted { endpoint, demoted } => {
                format!("demoted {endpoint}={demoted}")
            }
        }
    }

    fn events(&self, events: &[RouterEvent]) -> String {
        events
            .iter()
            .map(|event| self.event(event))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn outcome(&self, result: Result<Vec<RouterEvent>, RouterError>) -> String {
        match result {
            Ok(events) if events.is_empty() => "ok".to_string(),
            Ok(events) => format!("ok | {}", self.events(&events)),
            Err(error) => format!("err: {error}"),
        }
    }

    fn run(&mut self, act: Act) -> String {
        let down = self.down.clone();
        let healthy = move |name: &str| !down.contains(name);
        let now = self.now;
        match act {
            Act::At(secs) => {
                self.now = self.t0 + Duration::from_secs(secs);
                String::new()
            }
            Act::Down(names) => {
                self.down.extend(names.iter().map(|name| name.to_string()));
                String::new()
            }
            Act::Up(names) => {
                for name in names {
                    self.down.remove(*name);
                }
                String::new()
            }
            Act::Plan => {
                let plan = self.router.plan(&healthy, now);
                let endpoints: Vec<String> = plan
                    .endpoints
                    .iter()
                    .map(|e| format!("{}{}", e.name, if e.healthy { "" } else { "?" }))
                    .collect();
                let mut text = format!(
                    "{}: {}",
                    plan.group.as_deref().unwrap_or("-"),
                    endpoints.join(" ")
                );
                if !plan.events.is_empty() {
                    text = format!("{} | {}", text.trim_end(), self.events(&plan.events));
                }
                text.trim_end().to_string()
            }
            Act::Fail(group) => {
                let events = self.router.record_group_failure(group, now);
                self.events(&events)
            }
            Act::Latency(name, ms) => {
                self.router.record_latency(name, Duration::from_millis(ms));
                String::new()
            }
            Act::Probe(name, ms) => {
                self.router
                    .record_probe_latency(name, Duration::from_millis(ms));
                String::new()
            }
            Act::Block(name, secs) => {
                let events = self
                    .router
                    .block_until(name, self.t0 + Duration::from_secs(secs));
                self.events(&events)
            }
            Act::Served(group) => {
                let events = self.router.record_group_success(group, now);
                self.events(&events)
            }
            Act::Activate(group) => {
                let result = self.router.activate(group, false, &healthy, now);
                self.outcome(result)
            }
            Act::Force(group) => {
                let result = self.router.activate(group, true, &healthy, now);
                self.outcome(result)
            }
            Act::Pause(group, secs) => {
                let result = self
                    .router
                    .pause(group, secs.map(Duration::from_secs), &healthy, now);
                self.outcome(result)
            }
            Act::Resume(group) => {
                let result = self.router.resume(group, &healthy, now);
                self.outcome(result)
            }
            Act::SetPriority(name, priority) => {
                let result = self.router.set_priority(name, priority);
                self.outcome(result)
            }
            Act::Prefer(name) => {
                let result = self.router.prefer_endpoint(name);
                self.outcome(result)
            }
            Act::ActiveGroup => self
                .router
                .active_group(&healthy, now)
                .unwrap_or_else(|| "-".into()),
            Act::Groups => self
                .router
                .groups(&healthy, now)
                .iter()
                .map(|view| self.group_view(view))
                .collect::<Vec<_>>()
                .join(", "),
            Act::Endpoints => self
                .router
                .endpoints(&healthy, now)
                .iter()
                .map(|view| self.endpoint_view(view))
                .collect::<Vec<_>>()
                .join(", "),
            Act::NextChange => match self.router.next_change_at(now) {
                Some(at) => format!("at {}", self.secs(at)),
                None => "none".to_string(),
            },
        }
    }

    /// `A active 2/2 [a,f,p,r]` plus `until N` (pause end), `cd Ns`, `attention`, `forced`.
    fn group_view(&self, view: &GroupView) -> String {
        let status = match view.status {
            GroupStatus::Active => "active",
            GroupStatus::Paused => "paused",
            GroupStatus::Cooldown => "cooldown",
            GroupStatus::NoHealthyEndpoints => "unhealthy",
            GroupStatus::Available => "available",
        };
        let mut text = format!(
            "{}({}) {status} {}/{}",
            view.name, view.priority, view.healthy_endpoints, view.total_endpoints
        );
        if let Some(until) = view.paused_until {
            text += &format!(" until {}", self.secs(until));
        }
        if view.in_cooldown {
            let until = view.cooldown_until.map_or(0, |until| self.secs(until));
            text += &format!(" cd {}s to {until}", view.cooldown_remaining.as_secs());
        }
        if view.needs_attention {
            text += " attention";
        }
        if view.forced {
            text += " forced";
        }
        let can: Vec<&str> = [
            (view.can_activate, "a"),
            (view.can_force_activate, "f"),
            (view.can_pause, "p"),
            (view.can_resume, "r"),
        ]
        .iter()
        .filter(|(can, _)| *can)
        .map(|(_, letter)| *letter)
        .collect();
        // The redundant booleans must agree with the status.
        // A group in cooldown is active only as the last resort, and shows its cooldown.
        assert_eq!(
            view.is_active,
            view.status == GroupStatus::Active
                || (view.status == GroupStatus::Cooldown && view.is_active)
        );
        assert_eq!(
            view.in_cooldown && !view.paused,
            view.status == GroupStatus::Cooldown
        );
        assert_eq!(view.paused, view.status == GroupStatus::Paused);
        text + &format!(" [{}]", can.join(","))
    }

    fn endpoint_view(&self, view: &EndpointView) -> String {
        let ms = |duration: Option<Duration>| {
            duration.map_or("-".to_string(), |d| {
                format!("{}", (d.as_secs_f64() * 1000.0).round())
            })
        };
        format!(
            "{}@{}#{} p{}/{} lat={} probe={} score={} blocked={} {}",
            view.name,
            view.group,
            view.index,
            view.priority,
            view.config_priority,
            ms(view.latency_ewma),
            ms(view.probe_latency),
            ms(view.score),
            view.blocked_until
                .map_or("-".to_string(), |until| self.secs(until).to_string()),
            if view.healthy { "up" } else { "down" }
        )
    }
}

/// Runs `steps` on a fresh router and compares every step's rendered outcome.
fn check(case: &str, specs: &[Spec], settings: RouterSettings, steps: &[(Act, &str)]) {
    let mut harness = Harness::new(specs, settings);
    for (number, (act, expected)) in steps.iter().enumerate() {
        let actual = harness.run(*act);
        assert_eq!(actual, *expected, "case `{case}`, step {number} ({act:?})");
    }
}

use Act::*;

#[test]
fn orders_endpoints_by_priority_with_ties_in_config_order() {
    let specs: &[Spec] = &[
        ("x3", "G", 1, 3),
        ("x1", "G", 1, 1),
        ("t2", "G", 1, 2),
        ("s2", "G", 1, 2),
        ("z0", "G", 1, 0),
    ];
    check(
        "priority",
        specs,
        AUTO,
        &[(Plan, "G: z0 x1 t2 s2 x3 | active - -> G")],
    );
    check(
        "priority overrides re-order",
        specs,
        AUTO,
        &[
            (SetPriority("x3", 0), "ok | priority x3=0"),
            (SetPriority("x3", 0), "ok"),
            (Plan, "G: x3 z0 x1 t2 s2 | active - -> G"),
        ],
    );
}

#[test]
fn orders_endpoints_by_latency_with_the_fastest_strategy() {
    let specs: &[Spec] = &[
        ("f1", "G", 1, 1),
        ("f2", "G", 1, 2),
        ("f3", "G", 1, 3),
        ("f4", "G", 1, 4),
        ("f5", "G", 1, 0),
    ];
    let cases: &[(&str, Steps)] = &[
        (
            "unmeasured endpoints follow in priority order",
            &[(Plan, "G: f5 f1 f2 f3 f4 | active - -> G")],
        ),
        (
            "measured first, ascending; unmeasured after by priority",
            &[
                (Latency("f3", 200), ""),
                (Latency("f4", 100), ""),
                (Plan, "G: f4 f3 f5 f1 f2 | active - -> G"),
            ],
        ),
        (
            "ewma with alpha 0.3",
            &[
                (Latency("f1", 100), ""),
                (Latency("f1", 200), ""),
                (Latency("f2", 125), ""),
                (Latency("f3", 135), ""),
                // f1 = 0.3*200 + 0.7*100 = 130 lies between f2 and f3
                (Plan, "G: f2 f1 f3 f5 f4 | active - -> G"),
                (
                    Endpoints,
                    "f1@G#0 p1/1 lat=130 probe=- score=130 blocked=- up, \
                     f2@G#1 p2/2 lat=125 probe=- score=125 blocked=- up, \
                     f3@G#2 p3/3 lat=135 probe=- score=135 blocked=- up, \
                     f4@G#3 p4/4 lat=- probe=- score=- blocked=- up, \
                     f5@G#4 p0/0 lat=- probe=- score=- blocked=- up",
                ),
            ],
        ),
        (
            "probe blends 0.7 real + 0.3 probe; probe alone counts; latest probe wins",
            &[
                (Latency("f1", 100), ""),
                (Probe("f1", 500), ""),   // 0.7*100 + 0.3*500 = 220
                (Probe("f2", 300), ""),   // 300
                (Latency("f3", 210), ""), // 210
                (Probe("f4", 900), ""),
                (Probe("f4", 215), ""), // 215
                (Plan, "G: f3 f4 f1 f2 f5 | active - -> G"),
            ],
        ),
        (
            "equal scores fall back to priority then index",
            &[
                (Latency("f2", 100), ""),
                (Latency("f1", 100), ""),
                (Plan, "G: f1 f2 f5 f3 f4 | active - -> G"),
            ],
        ),
        (
            "unknown endpoints are ignored",
            &[
                (Latency("nope", 1), ""),
                (Probe("nope", 1), ""),
                (Plan, "G: f5 f1 f2 f3 f4 | active - -> G"),
            ],
        ),
    ];
    for (case, steps) in cases {
        check(case, specs, FASTEST, steps);
    }
}

#[test]
fn filters_unhealthy_endpoints_and_falls_back_to_all_when_none_is_healthy() {
    let cases: &[(&str, Steps)] = &[
        (
            "unhealthy endpoints are left out",
            &[(Down(&["a1"]), ""), (Plan, "A: a2 | active - -> A")],
        ),
        (
            "auto: a group without healthy endpoints is passed over",
            &[
                (Down(&["a1", "a2"]), ""),
                (Plan, "B: b1 b2 | active - -> B"),
            ],
        ),
        (
            "nothing healthy anywhere: the preferred group, all endpoints, marked unhealthy",
            &[
                (Down(&["a1", "a2", "b1", "b2", "c1"]), ""),
                (Plan, "A: a1? a2? | active - -> A"),
                (Up(&["c1"]), ""),
                (Plan, "C: c1 | active A -> C"),
            ],
        ),
        (
            "auto: the preferred group comes back when it recovers",
            &[
                (Down(&["a1", "a2"]), ""),
                (Plan, "B: b1 b2 | active - -> B"),
                (Up(&["a2"]), ""),
                (Plan, "A: a2 | active B -> A"),
                (Plan, "A: a2"),
            ],
        ),
    ];
    for (case, steps) in cases {
        check(case, ABC, AUTO, steps);
    }
}

#[test]
fn skips_rate_limited_endpoints_and_fully_blocked_groups() {
    let cases: &[(&str, Steps)] = &[
        (
            "a blocked endpoint is left out until the block ends",
            &[
                (Block("a1", 30), "blocked a1 until 30"),
                (Plan, "A: a2 | active - -> A"),
                (At(29), ""),
                (Plan, "A: a2"),
                (At(30), ""),
                (Plan, "A: a1 a2"),
            ],
        ),
        (
            "blocked healthy endpoints do not count: the unhealthy rest is tried",
            &[
                (Down(&["a2"]), ""),
                (Block("a1", 30), "blocked a1 until 30"),
                (Plan, "B: b1 b2 | active - -> B"),
                (Down(&["b1", "b2", "c1"]), ""),
                (Plan, "A: a2? | active B -> A"),
            ],
        ),
        (
            "auto: a fully blocked group is skipped without cooldown",
            &[
                (Block("a1", 30), "blocked a1 until 30"),
                (Block("a2", 60), "blocked a2 until 60"),
                (Plan, "B: b1 b2 | active - -> B"),
                (
                    Groups,
                    "A(1) available 2/2 [a,p], B(2) active 2/2 [p], C(3) available 1/1 [a,p]",
                ),
                (NextChange, "at 30"),
                (At(30), ""),
                (Plan, "A: a1 | active B -> A"),
            ],
        ),
        (
            "auto: everything blocked gives no group",
            &[
                (Block("a1", 30), "blocked a1 until 30"),
                (Block("a2", 30), "blocked a2 until 30"),
                (Block("b1", 30), "blocked b1 until 30"),
                (Block("b2", 30), "blocked b2 until 30"),
                (Block("c1", 20), "blocked c1 until 20"),
                (Plan, "-:"),
                (NextChange, "at 20"),
                (At(20), ""),
                (Plan, "C: c1 | active - -> C"),
            ],
        ),
        (
            "the latest block wins, so a block can be lifted",
            &[
                (Block("a1", 60), "blocked a1 until 60"),
                (Block("a1", 0), "blocked a1 until 0"),
                (Plan, "A: a1 a2 | active - -> A"),
                (Block("nope", 60), ""),
            ],
        ),
    ];
    for (case, steps) in cases {
        check(case, ABC, AUTO, steps);
    }
}

#[test]
fn manual_mode_keeps_a_fully_blocked_active_group() {
    check(
        "manual blocked",
        ABC,
        MANUAL,
        &[
            (Block("a1", 30), "blocked a1 until 30"),
            (Block("a2", 30), "blocked a2 until 30"),
            (Plan, "A: | active - -> A"),
            (NextChange, "at 30"),
            (At(30), ""),
            (Plan, "A: a1 a2"),
        ],
    );
}

#[test]
fn auto_mode_fails_over_cools_down_and_returns() {
    let cases: &[(&str, Steps)] = &[
        (
            "fails over to the next group and comes back when the cooldown expires",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (At(10), ""),
                (Fail("A"), "cooldown A until 610"),
                (Plan, "B: b1 b2 | active A -> B"),
                (Groups, "A(1) cooldown 2/2 cd 600s to 610 [p], B(2) active 2/2 [p], C(3) available 1/1 [a,p]"),
                (NextChange, "at 610"),
                (At(609), ""),
                (Plan, "B: b1 b2"),
                (At(610), ""),
                (Plan, "A: a1 a2 | cooldown ended A; active B -> A"),
                (NextChange, "none"),
            ],
        ),
        (
            "cascades through every group to none",
            &[
                (Fail("A"), "cooldown A until 600"),
                (Plan, "B: b1 b2 | active - -> B"),
                (Fail("B"), "cooldown B until 600"),
                (At(5), ""),
                (Fail("C"), "cooldown C until 605"),
                // Nothing is available: the preferred group is tried anyway, still cooling.
                (Plan, "A: a1 a2 | active B -> A"),
                (NextChange, "at 600"),
                (At(600), ""),
                (Plan, "A: a1 a2 | cooldown ended A; cooldown ended B"),
            ],
        ),
        (
            "a probe passing does not end a cooldown: only its time or real traffic does",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (At(10), ""),
                // The storm made a1 and a2 unhealthy; the failed request cooled the group.
                (Down(&["a1", "a2"]), ""),
                (Fail("A"), "cooldown A until 610"),
                (Plan, "B: b1 b2 | active A -> B"),
                // Half a second later `/v1/models` answers 200 again: healthy, still cooling.
                (Up(&["a1", "a2"]), ""),
                (At(11), ""),
                (Plan, "B: b1 b2"),
                (Groups, "A(1) cooldown 2/2 cd 599s to 610 [p], B(2) active 2/2 [p], C(3) available 1/1 [a,p]"),
                (At(300), ""),
                (Plan, "B: b1 b2"),
                (At(610), ""),
                (Plan, "A: a1 a2 | cooldown ended A; active B -> A"),
            ],
        ),
        (
            "a cooling group is the last resort, and its real traffic succeeding ends the cooldown",
            &[
                (Fail("A"), "cooldown A until 600"),
                (Plan, "B: b1 b2 | active - -> B"),
                (Pause("B", None), "ok | paused B; active B -> C"),
                (Plan, "C: c1"),
                (Pause("C", None), "ok | paused C; active C -> A"),
                (Plan, "A: a1 a2"),
                (Groups, "A(1) cooldown 2/2 cd 600s to 600 [p], B(2) paused 2/2 [a,r], C(3) paused 1/1 [a,r]"),
                (Served("nope"), ""),
                (Served("B"), ""),
                (At(30), ""),
                (Served("A"), "cooldown ended A"),
                (Served("A"), ""),
                (Resume("B"), "ok | resumed B"),
                (Plan, "A: a1 a2"),
            ],
        ),
        (
            "a paused group is never the last resort, and blocked endpoints are left out",
            &[
                (Fail("A"), "cooldown A until 600"),
                (Fail("B"), "cooldown B until 600"),
                (Block("c1", 100), "blocked c1 until 100"),
                (Pause("A", None), "ok | paused A; active - -> B"),
                (Plan, "B: b1 b2"),
                (Block("b1", 100), "blocked b1 until 100"),
                (Block("b2", 100), "blocked b2 until 100"),
                (Plan, "-: | active B -> -"),
                (NextChange, "at 100"),
            ],
        ),
        (
            "the last resort prefers a cooling group with a healthy endpoint",
            &[
                (Fail("A"), "cooldown A until 600"),
                (Fail("B"), "cooldown B until 600"),
                (Fail("C"), "cooldown C until 600"),
                (Down(&["a1", "a2"]), ""),
                (Plan, "B: b1 b2 | active - -> B"),
                (Down(&["b1", "b2", "c1"]), ""),
                (Plan, "A: a1? a2? | active B -> A"),
            ],
        ),
        (
            "a repeated failure extends the cooldown",
            &[
                (Fail("A"), "cooldown A until 600"),
                (At(100), ""),
                (Fail("A"), "cooldown A until 700"),
                (At(650), ""),
                (ActiveGroup, "B"),
            ],
        ),
        (
            "unknown group failures are ignored",
            &[(Fail("nope"), ""), (Plan, "A: a1 a2 | active - -> A")],
        ),
        (
            "cooldown blocks activation even with force",
            &[
                (Fail("A"), "cooldown A until 600"),
                (At(120), ""),
                (Activate("A"), "err: group `A` is in cooldown for another 480s"),
                (Force("A"), "err: group `A` is in cooldown for another 480s"),
                (At(600), ""),
                (Activate("A"), "ok | cooldown ended A; activated A; active - -> A"),
            ],
        ),
    ];
    for (case, steps) in cases {
        check(case, ABC, AUTO, steps);
    }
}

#[test]
fn auto_mode_honours_and_clears_operator_pins() {
    let cases: &[(&str, Steps)] = &[
        (
            "activating a lower group pins it",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (Activate("C"), "ok | activated C; active A -> C"),
                (Plan, "C: c1"),
                (Groups, "A(1) available 2/2 [a,p], B(2) available 2/2 [a,p], C(3) active 1/1 [p]"),
            ],
        ),
        (
            "a failure clears the pin and the preferred group returns",
            &[
                (Activate("C"), "ok | activated C; active - -> C"),
                (Fail("C"), "cooldown C until 600"),
                (Plan, "A: a1 a2 | active C -> A"),
                (At(600), ""),
                (Plan, "A: a1 a2 | cooldown ended C"),
            ],
        ),
        (
            "pausing the pinned group clears the pin; resuming does not restore it",
            &[
                (Activate("B"), "ok | activated B; active - -> B"),
                (Pause("B", None), "ok | paused B; active B -> A"),
                (Resume("B"), "ok | resumed B"),
                (Plan, "A: a1 a2"),
            ],
        ),
        (
            "a fully blocked pinned group is passed over but stays pinned",
            &[
                (Activate("B"), "ok | activated B; active - -> B"),
                (Block("b1", 10), "blocked b1 until 10"),
                (Block("b2", 10), "blocked b2 until 10"),
                (Plan, "A: a1 a2 | active B -> A"),
                (At(10), ""),
                (Plan, "B: b1 b2 | active A -> B"),
            ],
        ),
        (
            "a forced pin on an unhealthy group sticks and is shown as forced",
            &[
                (Down(&["c1"]), ""),
                (Activate("C"), "err: group `C` has no healthy endpoints: activate it with force to use it anyway"),
                (Force("C"), "ok | activated C forced; active - -> C"),
                (Plan, "C: c1?"),
                (Groups, "A(1) available 2/2 [a,p], B(2) available 2/2 [a,p], C(3) active 0/1 forced [p]"),
                (Activate("A"), "ok | activated A; active C -> A"),
                (Groups, "A(1) active 2/2 [p], B(2) available 2/2 [a,p], C(3) unhealthy 0/1 [f,p]"),
            ],
        ),
        (
            "force on a group with healthy endpoints is a normal activation",
            &[(Force("B"), "ok | activated B; active - -> B")],
        ),
    ];
    for (case, steps) in cases {
        check(case, ABC, AUTO, steps);
    }
}

#[test]
fn manual_mode_starts_on_the_preferred_healthy_group_and_sticks() {
    let cases: &[(&str, Steps)] = &[
        (
            "starts on the lowest-priority group",
            &[(Plan, "A: a1 a2 | active - -> A")],
        ),
        (
            "skips a priority-1 group without healthy endpoints at startup",
            &[
                (Down(&["a1", "a2"]), ""),
                (Plan, "B: b1 b2 | active - -> B"),
                (Up(&["a1", "a2"]), ""),
                (Plan, "B: b1 b2"),
            ],
        ),
        (
            "nothing healthy at startup: the lowest-priority group, tried anyway",
            &[
                (Down(&["a1", "a2", "b1", "b2", "c1"]), ""),
                (Plan, "A: a1? a2? | active - -> A"),
                (Up(&["c1"]), ""),
                (Plan, "A: a1? a2?"),
            ],
        ),
        (
            "a view before the first evaluation shows the choice it would make",
            &[
                (Down(&["a1", "a2"]), ""),
                (ActiveGroup, "B"),
                (Up(&["a1", "a2"]), ""),
                (ActiveGroup, "A"),
                (Plan, "A: a1 a2 | active - -> A"),
                (Down(&["a1", "a2"]), ""),
                (ActiveGroup, "A"),
            ],
        ),
        (
            "the first operator action makes the startup choice first",
            &[
                (Pause("C", None), "ok | paused C; active - -> A"),
                (Plan, "A: a1 a2"),
            ],
        ),
        (
            "a failure marks the group and does not switch",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (Fail("A"), "attention A"),
                (Fail("A"), ""),
                (Plan, "A: a1 a2"),
                (NextChange, "none"),
                (Groups, "A(1) active 2/2 attention [p], B(2) available 2/2 [a,p], C(3) available 1/1 [a,p]"),
                (Activate("B"), "ok | activated B; active A -> B"),
                (Activate("A"), "ok | activated A; active B -> A"),
                (Groups, "A(1) active 2/2 [p], B(2) available 2/2 [a,p], C(3) available 1/1 [a,p]"),
            ],
        ),
        (
            "health changes never switch groups",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (Down(&["a1", "a2"]), ""),
                (Plan, "A: a1? a2?"),
            ],
        ),
    ];
    for (case, steps) in cases {
        check(case, ABC, MANUAL, steps);
    }
}

#[test]
fn manual_mode_pause_and_resume() {
    let cases: &[(&str, Steps)] = &[
        (
            "pausing the active group moves to the next healthy available group",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (Down(&["b1", "b2"]), ""),
                (
                    Pause("A", Some(60)),
                    "ok | paused A until 60; active A -> C",
                ),
                (Plan, "C: c1"),
                (At(60), ""),
                (Plan, "C: c1 | resumed A"),
            ],
        ),
        (
            "resuming another group does not switch",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (Pause("B", None), "ok | paused B"),
                (Resume("B"), "ok | resumed B"),
                (Plan, "A: a1 a2"),
            ],
        ),
        (
            "no healthy fallback: no group until the paused one is resumed",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (Down(&["b1", "b2", "c1"]), ""),
                (Pause("A", None), "ok | paused A; active A -> -"),
                (Plan, "-:"),
                (
                    Groups,
                    "A(1) paused 2/2 [a,r], B(2) unhealthy 0/2 [f,p], C(3) unhealthy 0/1 [f,p]",
                ),
                (Resume("A"), "ok | resumed A; active - -> A"),
            ],
        ),
        (
            "no healthy fallback with a timed pause: back when it ends",
            &[
                (Down(&["b1", "b2", "c1"]), ""),
                (Pause("A", Some(30)), "ok | paused A until 30"),
                (Pause("A", Some(30)), "ok | paused A until 30"),
                (Plan, "-:"),
                (NextChange, "at 30"),
                (At(30), ""),
                (Plan, "A: a1 a2 | resumed A; active - -> A"),
            ],
        ),
        (
            "activating a paused group clears its pause",
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (Pause("B", None), "ok | paused B"),
                (Activate("B"), "ok | resumed B; activated B; active A -> B"),
            ],
        ),
    ];
    for (case, steps) in cases {
        check(case, ABC, MANUAL, steps);
    }
}

#[test]
fn operator_actions_report_errors() {
    let steps: &[(Act, &str)] = &[
        (Activate("nope"), "err: unknown group `nope`"),
        (Force("nope"), "err: unknown group `nope`"),
        (Pause("nope", None), "err: unknown group `nope`"),
        (Resume("nope"), "err: unknown group `nope`"),
        (Resume("A"), "err: group `A` is not paused"),
        (SetPriority("nope", 1), "err: unknown endpoint `nope`"),
        (Prefer("nope"), "err: unknown endpoint `nope`"),
        (Down(&["b1", "b2"]), ""),
        (
            Activate("B"),
            "err: group `B` has no healthy endpoints: activate it with force to use it anyway",
        ),
        // errors change nothing, not even the first evaluation
        (Plan, "A: a1 a2 | active - -> A"),
    ];
    check("auto errors", ABC, AUTO, steps);
    check("manual errors", ABC, MANUAL, steps);
}

#[test]
fn timed_pauses_expire_lazily() {
    let cases: &[(&str, RouterSettings, Steps)] = &[
        (
            "auto: a timed pause of the preferred group",
            AUTO,
            &[
                (Plan, "A: a1 a2 | active - -> A"),
                (
                    Pause("A", Some(30)),
                    "ok | paused A until 30; active A -> B",
                ),
                (
                    Groups,
                    "A(1) paused 2/2 until 30 [a,r], B(2) active 2/2 [p], C(3) available 1/1 [a,p]",
                ),
                (NextChange, "at 30"),
                (At(29), ""),
                (Plan, "B: b1 b2"),
                (At(30), ""),
                (Resume("A"), "err: group `A` is not paused"),
                (
                    Groups,
                    "A(1) active 2/2 [p], B(2) available 2/2 [a,p], C(3) available 1/1 [a,p]",
                ),
                (Plan, "A: a1 a2 | resumed A; active B -> A"),
            ],
        ),
        (
            "auto: resume makes the preferred group active again",
            AUTO,
            &[
                (Pause("A", None), "ok | paused A; active - -> B"),
                (NextChange, "none"),
                (Resume("A"), "ok | resumed A; active B -> A"),
            ],
        ),
        (
            "a zero duration pauses until resumed",
            AUTO,
            &[
                (Pause("A", Some(0)), "ok | paused A; active - -> B"),
                (At(100_000), ""),
                (Plan, "B: b1 b2"),
            ],
        ),
        (
            "a pause longer than the clock can represent is indefinite",
            AUTO,
            &[(Pause("A", Some(u64::MAX)), "ok | paused A; active - -> B")],
        ),
        (
            "an expired pause is reported by the next action",
            MANUAL,
            &[
                (
                    Pause("B", Some(10)),
                    "ok | paused B until 10; active - -> A",
                ),
                (At(11), ""),
                (Pause("C", None), "ok | resumed B; paused C"),
            ],
        ),
    ];
    for (case, settings, steps) in cases {
        check(case, ABC, *settings, steps);
    }
}

#[test]
fn prefer_endpoint_follows_the_p_flag_rule() {
    let specs: &[Spec] = &[
        ("a0", "A", 1, 0),
        ("a1", "A", 1, 1),
        ("a2", "A", 1, 2),
        ("a5", "A", 1, 5),
        ("b1", "B", 2, 1),
    ];
    check(
        "-p a5",
        specs,
        AUTO,
        &[
            (
                Prefer("a5"),
                "ok | priority a0=2; priority a1=3; priority a5=1; priority b1=3",
            ),
            (Plan, "A: a5 a0 a2 a1 | active - -> A"),
            (
                Endpoints,
                "a0@A#0 p2/0 lat=- probe=- score=- blocked=- up, \
                 a1@A#1 p3/1 lat=- probe=- score=- blocked=- up, \
                 a2@A#2 p2/2 lat=- probe=- score=- blocked=- up, \
                 a5@A#3 p1/5 lat=- probe=- score=- blocked=- up, \
                 b1@B#4 p3/1 lat=- probe=- score=- blocked=- up",
            ),
            // preferring again: the preferred one stays 1, nobody else is <= 1
            (Prefer("a5"), "ok"),
        ],
    );
    check(
        "-p on an endpoint already at 1",
        specs,
        AUTO,
        &[(Prefer("a1"), "ok | priority a0=2; priority b1=3")],
    );
    check(
        "set_priority overrides a -p",
        specs,
        AUTO,
        &[
            (
                Prefer("a5"),
                "ok | priority a0=2; priority a1=3; priority a5=1; priority b1=3",
            ),
            (SetPriority("a5", 9), "ok | priority a5=9"),
            (Plan, "A: a0 a2 a1 a5 | active - -> A"),
        ],
    );
}

#[test]
fn next_change_is_the_earliest_future_instant() {
    check(
        "next change",
        ABC,
        AUTO,
        &[
            (NextChange, "none"),
            (Block("a1", 50), "blocked a1 until 50"),
            (
                Pause("C", Some(40)),
                "ok | paused C until 40; active - -> A",
            ),
            (Fail("B"), "cooldown B until 600"),
            (NextChange, "at 40"),
            (At(40), ""),
            (NextChange, "at 50"),
            (At(50), ""),
            (NextChange, "at 600"),
            (At(600), ""),
            (NextChange, "none"),
        ],
    );
}

#[test]
fn group_views_follow_status_precedence() {
    check(
        "paused beats cooldown; cooldown beats active",
        ABC,
        AUTO,
        &[
            (Fail("A"), "cooldown A until 600"),
            (Pause("A", None), "ok | paused A; active - -> B"),
            (Down(&["c1"]), ""),
            (
                Groups,
                "A(1) paused 2/2 cd 600s to 600 [r], B(2) active 2/2 [p], C(3) unhealthy 0/1 [f,p]",
            ),
            (Resume("A"), "ok | resumed A"),
            (Groups, "A(1) cooldown 2/2 cd 600s to 600 [p], B(2) active 2/2 [p], C(3) unhealthy 0/1 [f,p]"),
        ],
    );
    check(
        "active beats no healthy endpoints",
        ABC,
        AUTO,
        &[
            (Down(&["a1", "a2", "b1", "b2", "c1"]), ""),
            (
                Groups,
                "A(1) active 0/2 [p], B(2) unhealthy 0/2 [f,p], C(3) unhealthy 0/1 [f,p]",
            ),
        ],
    );
}

#[test]
fn groups_are_sorted_by_priority_then_first_appearance() {
    let specs: &[Spec] = &[
        ("z1", "Z", 2, 1),
        ("y1", "Y", 1, 1),
        ("x1", "X", 2, 1),
        // a later endpoint of Z with another group priority does not move the group
        ("z2", "Z", 0, 1),
        // a duplicate name is ignored
        ("y1", "X", 2, 0),
    ];
    check(
        "sort",
        specs,
        AUTO,
        &[
            (
                Groups,
                "Y(1) active 1/1 [p], Z(2) available 2/2 [a,p], X(2) available 1/1 [a,p]",
            ),
            (
                Endpoints,
                "z1@Z#0 p1/1 lat=- probe=- score=- blocked=- up, \
                 y1@Y#1 p1/1 lat=- probe=- score=- blocked=- up, \
                 x1@X#2 p1/1 lat=- probe=- score=- blocked=- up, \
                 z2@Z#3 p1/1 lat=- probe=- score=- blocked=- up",
            ),
            (Fail("Y"), "cooldown Y until 600"),
            (Plan, "Z: z1 z2 | active - -> Z"),
        ],
    );
}

#[test]
fn an_empty_router_routes_nowhere() {
    for settings in [AUTO, MANUAL] {
        check(
            "empty",
            &[],
            settings,
            &[
                (Plan, "-:"),
                (Groups, ""),
                (Endpoints, ""),
                (ActiveGroup, "-"),
                (NextChange, "none"),
                (Activate("A"), "err: unknown group `A`"),
            ],
        );
    }
}

#[test]
fn planned_endpoints_carry_group_and_config_index() {
    let endpoints: Vec<Endpoint> = ABC.iter().copied().map(endpoint).collect();
    let mut router = Router::new(&endpoints, AUTO);
    let now = Instant::now();
    router.record_group_failure("A", now);
    let plan = router.plan(&|_| true, now);
    assert_eq!(
        plan.endpoints,
        vec![
            PlannedEndpoint {
                name: "b1".into(),
                group: "B".into(),
                index: 2,
                healthy: true
            },
            PlannedEndpoint {
                name: "b2".into(),
                group: "B".into(),
                index: 3,
                healthy: true
            },
        ]
    );
}

#[test]
fn settings_come_from_the_config() {
    let yaml = "
group:
  cooldown: 90s
  auto_switch_between_groups: false
strategy:
  type: fastest
endpoints:
  - name: one
    url: https://one.invalid
    group: G
    group-priority: 2
    priority: 3
";
    let config = Config::from_yaml_str(yaml).expect("valid config");
    let settings = RouterSettings::from_config(&config);
    assert_eq!(
        settings,
        RouterSettings {
            auto_switch: false,
            cooldown: Duration::from_secs(90),
            strategy: StrategyType::Fastest
        }
    );
    let router = Router::from_config(&config);
    assert!(!router.is_auto());
    assert_eq!(router.settings(), &settings);
    let views = router.groups(&|_| true, Instant::now());
    assert_eq!(views.len(), 1);
    assert_eq!((views[0].name.as_str(), views[0].priority), ("G", 2));
    assert_eq!(RouterSettings::default(), AUTO);
}

#[test]
fn a_huge_cooldown_does_not_overflow_the_clock() {
    let endpoints: Vec<Endpoint> = ABC.iter().copied().map(endpoint).collect();
    let mut router = Router::new(
        &endpoints,
        RouterSettings {
            cooldown: Duration::MAX,
            ..AUTO
        },
    );
    let now = Instant::now();
    let events = router.record_group_failure("A", now);
    assert!(matches!(&events[..], [RouterEvent::GroupCooldown { until, .. }] if *until > now));
    assert_eq!(router.active_group(&|_| true, now).as_deref(), Some("B"));
    assert!(router.next_change_at(now).is_some());
}

/// xorshift64*: a small deterministic generator for the random-sequence test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn pick<'a>(&mut self, names: &[&'a str]) -> &'a str {
        names[self.below(names.len() as u64) as usize]
    }
}

#[test]
fn random_action_sequences_never_panic_or_repeat_an_endpoint() {
    let specs: &[Spec] = &[
        ("a1", "A", 1, 1),
        ("a2", "A", 1, 1),
        ("b1", "B", 1, 0),
        ("b2", "B", 1, 3),
        ("c1", "C", 3, 2),
        ("d1", "D", 2, 1),
        ("d2", "D", 2, 1),
    ];
    let endpoint_names = ["a1", "a2", "b1", "b2", "c1", "d1", "d2", "nope"];
    let group_names = ["A", "B", "C", "D", "nope"];
    let endpoints: Vec<Endpoint> = specs.iter().copied().map(endpoint).collect();
    for seed in 1..=64u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let settings = RouterSettings {
            auto_switch: seed % 2 == 0,
            cooldown: Duration::from_secs(rng.below(120)),
            strategy: if seed % 3 == 0 {
                StrategyType::Fastest
            } else {
                StrategyType::Priority
            },
        };
        let mut router = Router::new(&endpoints, settings);
        let t0 = Instant::now();
        let mut now = t0;
        let mut down: BTreeSet<&str> = BTreeSet::new();
        for _ in 0..400 {
            let snapshot = down.clone();
            let healthy = move |name: &str| !snapshot.contains(name);
            match rng.below(15) {
                0 => now += Duration::from_secs(rng.below(90)),
                1 => {
                    let name = rng.pick(&endpoint_names);
                    if !down.remove(name) {
                        down.insert(name);
                    }
                }
                2 => {
                    let _ = router.record_group_failure(rng.pick(&group_names), now);
                }
                3 => router.record_latency(
                    rng.pick(&endpoint_names),
                    Duration::from_millis(rng.below(5000)),
                ),
                4 => router.record_probe_latency(
                    rng.pick(&endpoint_names),
                    Duration::from_millis(rng.below(5000)),
                ),
                5 => {
                    let until = now + Duration::from_secs(rng.below(120));
                    let _ = router.block_until(rng.pick(&endpoint_names), until);
                }
                6 => {
                    let _ =
                        router.activate(rng.pick(&group_names), rng.below(2) == 0, &healthy, now);
                }
                7 => {
                    let duration = match rng.below(3) {
                        0 => None,
                        _ => Some(Duration::from_secs(rng.below(200))),
                    };
                    let _ = router.pause(rng.pick(&group_names), duration, &healthy, now);
                }
                8 => {
                    let _ = router.resume(rng.pick(&group_names), &healthy, now);
                }
                9 => {
                    let priority = rng.below(5) as u32;
                    let _ = router.set_priority(rng.pick(&endpoint_names), priority);
                }
                10 => {
                    let _ = router.prefer_endpoint(rng.pick(&endpoint_names));
                }
                11 => {
                    let views = router.groups(&healthy, now);
                    assert!(views.iter().filter(|view| view.is_active).count() <= 1);
                    let _ = router.endpoints(&healthy, now);
                }
                12 => {
                    if let Some(at) = router.next_change_at(now) {
                        assert!(at > now, "seed {seed}");
                    }
                }
                13 => {
                    let _ = router.record_group_success(rng.pick(&group_names), now);
                }
                _ => {
                    let expected = router.active_group(&healthy, now);
                    let plan = router.plan(&healthy, now);
                    assert_eq!(plan.group, expected, "seed {seed}: view and plan agree");
                    let names: BTreeSet<&str> =
                        plan.endpoints.iter().map(|e| e.name.as_str()).collect();
                    assert_eq!(names.len(), plan.endpoints.len(), "seed {seed}: duplicate");
                    let views = router.endpoints(&healthy, now);
                    for planned in &plan.endpoints {
                        assert_eq!(Some(&planned.group), plan.group.as_ref(), "seed {seed}");
                        let view = views
                            .iter()
                            .find(|view| view.name == planned.name)
                            .expect("planned endpoints exist");
                        assert!(
                            view.blocked_until.is_none(),
                            "seed {seed}: blocked endpoint planned"
                        );
                        assert_eq!(view.index, planned.index);
                    }
                    let all_healthy = plan.endpoints.iter().all(|e| e.healthy);
                    let none_healthy = plan.endpoints.iter().all(|e| !e.healthy);
                    assert!(
                        all_healthy || none_healthy,
                        "seed {seed}: mixed health flags"
                    );
                    if settings.auto_switch {
                        assert_eq!(
                            plan.group.is_none(),
                            plan.endpoints.is_empty(),
                            "seed {seed}"
                        );
                    }
                    if let Some(group) = &plan.group {
                        let views = router.groups(&healthy, now);
                        let view = views
                            .iter()
                            .find(|view| &view.name == group)
                            .expect("known");
                        assert!(view.is_active && !view.paused, "seed {seed}");
                        if view.in_cooldown {
                            // Only as the last resort: no available group has an unblocked
                            // endpoint.
                            assert!(settings.auto_switch, "seed {seed}");
                            let endpoint_views = router.endpoints(&healthy, now);
                            let usable = |name: &str| {
                                endpoint_views.iter().any(|endpoint| {
                                    endpoint.group == name && endpoint.blocked_until.is_none()
                                })
                            };
                            assert!(
                                views.iter().all(|other| other.paused
                                    || other.in_cooldown
                                    || !usable(&other.name)),
                                "seed {seed}: a cooling group planned while another is available"
                            );
                        }
                    }
                }
            }
        }
    }
}
