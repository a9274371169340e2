//! Fault injection for the crash and compensation tests: inert unless the
//! `INDIGO_FAILPOINTS` variable (or a test) names a point, as `scope.name`: a
//! workflow step (`onboarding.billing`) or a scheduled job (`job.rollup`).
//!
//! `INDIGO_FAILPOINTS="onboarding.billing=crash-after-run,offboarding.export=fail"`
//!
//! | action | effect |
//! |---|---|
//! | `crash-before-run` | the process exits once the step's start is recorded |
//! | `crash-after-run` | the process exits after the step acted, before its result is recorded |
//! | `crash-after-record` | the process exits once the step's result is recorded |
//! | `fail` | the step fails permanently (without acting) |
//! | `transient:N` | the step's first N attempts fail transiently |
//! | `hold:MS` | the step waits MS milliseconds at its hold point (the tier change's cut-over and the restore's swap: with writes paused; the restore's rebuild: with the new silo empty) |

use std::collections::HashMap;

use std::fmt::Display;

use crate::workflow::StepError;

/// Where in a step a crash is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    BeforeRun,
    AfterRun,
    AfterRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Crash(Point),
    Fail,
    Transient(i32),
    Hold(u64),
}

/// The exit status of an injected crash, so a test can tell it from a real one.
pub const CRASH_EXIT_CODE: i32 = 86;

#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    actions: HashMap<String, Action>,
}

impl Failpoints {
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("INDIGO_FAILPOINTS") {
            Ok(spec) => Self::parse(&spec),
            Err(_) => Ok(Self::default()),
        }
    }

    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut actions = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (step, action) =
                entry.split_once('=').ok_or_else(|| format!("failpoint `{entry}`: expected workflow.step=action"))?;
            let action = match action {
                "crash-before-run" => Action::Crash(Point::BeforeRun),
                "crash-after-run" => Action::Crash(Point::AfterRun),
                "crash-after-record" => Action::Crash(Point::AfterRecord),
                "fail" => Action::Fail,
                other => {
                    let unknown = || format!("failpoint `{entry}`: unknown action `{other}`");
                    match other.split_once(':') {
                        Some(("transient", n)) => Action::Transient(n.parse().map_err(|_| unknown())?),
                        Some(("hold", ms)) => Action::Hold(ms.parse().map_err(|_| unknown())?),
                        _ => return Err(unknown()),
                    }
                }
            };
            actions.insert(step.to_owned(), action);
        }
        Ok(Self { actions })
    }

    fn action(&self, scope: impl Display, name: &str) -> Option<Action> {
        if self.actions.is_empty() {
            return None;
        }
        self.actions.get(&format!("{scope}.{name}")).copied()
    }

    /// Exits the process if a crash is set for this point of `scope.name`.
    pub fn crash_at(&self, scope: impl Display, name: &str, point: Point) {
        if self.action(&scope, name) == Some(Action::Crash(point)) {
            tracing::error!(%scope, name, ?point, "failpoint: crashing");
            std::process::exit(CRASH_EXIT_CODE);
        }
    }

    /// Waits at `scope.name`'s hold point if a hold is set there.
    pub async fn hold(&self, scope: impl Display, name: &str) {
        if let Some(Action::Hold(ms)) = self.action(&scope, name) {
            tracing::warn!(%scope, name, ms, "failpoint: holding");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    /// An injected failure for this attempt of `scope.name`, if any.
    pub fn failure(&self, scope: impl Display, name: &str, attempt: i32) -> Option<StepError> {
        match self.action(&scope, name)? {
            Action::Fail => Some(StepError::Permanent(format!("failpoint {scope}.{name}: injected failure"))),
            Action::Transient(n) if attempt <= n => {
                Some(StepError::Transient(format!("failpoint {scope}.{name}: injected transient failure")))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Kind;

    #[test]
    fn parses_every_action_and_refuses_unknown_ones() {
        let points = Failpoints::parse(
            "onboarding.billing=crash-after-run, offboarding.export=fail,onboarding.seed=transient:2,tier_change.cutover=hold:5",
        )
        .unwrap();
        assert_eq!(points.action(Kind::Onboarding, "billing"), Some(Action::Crash(Point::AfterRun)));
        assert!(points.failure(Kind::Offboarding, "export", 1).is_some());
        assert!(points.failure(Kind::Onboarding, "seed", 2).is_some());
        assert!(points.failure(Kind::Onboarding, "seed", 3).is_none());
        assert!(points.failure(Kind::Onboarding, "record", 1).is_none());
        assert!(Failpoints::parse("onboarding.billing=explode").is_err());
        assert!(Failpoints::parse("onboarding.billing").is_err());
        assert!(Failpoints::parse("onboarding.billing=transient:x").is_err());
        assert_eq!(points.action(Kind::TierChange, "cutover"), Some(Action::Hold(5)));
    }
}
