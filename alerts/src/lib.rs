//! Pantau's alerting (DESIGN.md §10): rules evaluated on observation time,
//! per (rule, sensor), after each reading is committed.
//!
//! This first part is pure, like `pantau-model`: a rule's severity
//! [`Ladder`] with its hysteresis, and the [`Tracker`] that turns a
//! sensor's readings, in observation order, into the changes of its one
//! alert — raised, escalated, de-escalated, resolved, reopened — honouring
//! the rule's `for` durations and flap cool-down. The tracker is plain
//! data (serde), so the caller can keep it in the platform state in the
//! same commit as the alert events it produced, and a restart resumes
//! where kill -9 left it, pending `for` windows included.
//!
//! [`rules`] checks rules as configured (threshold rules on any numeric
//! field, and the Siaga rule every gauge with thresholds gets);
//! [`evaluator`] holds the rules of a registry and a tracker per (rule,
//! sensor), and says what a committed reading changes; [`silence`] watches
//! sensors and gateways that go quiet, with inhibition by an offline
//! gateway.
//!
//! [`rate`] turns a field into its change per hour over a window, for
//! rate-of-rise rules.
//!
//! Around that pure core: [`store`] keeps alerts, timelines, trackers,
//! the outbox and silences in `state.db`; [`engine`] is the single owner
//! of the evaluator in a process, fed from the ingest log after each
//! commit; [`webhook`] delivers each subscriber's outbox, signed.

#![forbid(unsafe_code)]

pub mod duty;
pub mod engine;
pub mod evaluator;
pub mod ladder;
pub mod metrics;
pub mod rate;
pub mod rules;
pub mod silence;
pub mod store;
mod store_pg;
pub mod tracker;
pub mod webhook;

pub use engine::{Engine, EngineConfig, EngineError};
pub use evaluator::{Evaluator, Fired, Outcome, State};
pub use ladder::{Direction, Ladder, RuleError};
pub use metrics::AlertMetrics;
pub use rules::{siaga_rule, Rule, RuleSpec};
pub use silence::Watch;
pub use store::{Alert, AlertEvent, AlertFilter, AlertState, AlertStore, Recorded, StoreError};
pub use tracker::{Change, Timing, Tracker};

/// A small registry for the unit tests: a gauge with Siaga thresholds
/// 100 / 200 / 300 cm, one without, a tide gauge and a port weather
/// station.
#[cfg(test)]
pub(crate) fn test_registry() -> pantau_model::Registry {
    let mut toml = String::new();
    for (id, kind, extra) in [
        (
            "fl-sungai-dumai",
            "flood_gauge",
            "thresholds = { siaga3 = 100, siaga2 = 200, siaga1 = 300 }",
        ),
        ("fl-no-thresholds", "flood_gauge", ""),
        ("tg-dumai", "tide_gauge", ""),
        ("mo-pelabuhan", "metocean", ""),
    ] {
        toml.push_str(&format!(
            "[[sensor]]\nid = \"{id}\"\nkind = \"{kind}\"\ngateway = \"gw-1\"\nname = \"{id}\"\nlat = 1.67\nlon = 101.45\n{extra}\n\n"
        ));
    }
    pantau_model::Registry::parse(&toml).expect("a valid registry")
}

/// A test clock: `minutes` after a fixed instant.
#[cfg(test)]
pub(crate) fn at_minute(minutes: i64) -> pantau_model::Timestamp {
    pantau_model::Timestamp(1_800_000_000_000 + minutes * 60_000)
}
