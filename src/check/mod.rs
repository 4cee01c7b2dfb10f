//! Verdicts: expectations of a scenario checked against its observations.
//! Pure functions over data; nothing here touches Docker.

pub mod predicate;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

pub use predicate::Predicate;

/// Outcome of a check, a scenario, a lab or a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The expectation held.
    #[default]
    Pass,
    /// The expectation did not hold.
    Fail,
    /// It could not be decided: the exercise or the environment failed.
    Unknown,
}

impl Verdict {
    /// Merges two verdicts: Fail beats Unknown beats Pass.
    pub fn merge(self, other: Verdict) -> Verdict {
        use Verdict::*;
        match (self, other) {
            (Fail, _) | (_, Fail) => Fail,
            (Unknown, _) | (_, Unknown) => Unknown,
            _ => Pass,
        }
    }

    /// Merges many verdicts; an empty list is Unknown, never Pass.
    pub fn merge_all(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        verdicts
            .into_iter()
            .reduce(Verdict::merge)
            .unwrap_or(Verdict::Unknown)
    }

    /// Upper-case label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Unknown => "UNKNOWN",
        }
    }
}

/// One expectation's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Observation name.
    pub observation: String,
    /// The predicate as written.
    pub expect: String,
    /// What was observed (absent when the exercise did not produce it).
    pub observed: Option<Value>,
    /// Verdict.
    pub verdict: Verdict,
    /// Why the check could not be decided, if it could not.
    pub note: Option<String>,
}

/// Checks every expectation against the observations.
pub fn evaluate(
    expect: &BTreeMap<String, Predicate>,
    observations: &BTreeMap<String, Value>,
) -> Vec<CheckResult> {
    expect
        .iter()
        .map(|(name, predicate)| {
            let observed = observations.get(name).cloned();
            let (verdict, note) = match &observed {
                None => (Verdict::Unknown, Some("not observed".to_string())),
                Some(v) => match predicate.holds(v) {
                    Ok(true) => (Verdict::Pass, None),
                    Ok(false) => (Verdict::Fail, None),
                    Err(e) => (Verdict::Unknown, Some(e)),
                },
            };
            CheckResult {
                observation: name.clone(),
                expect: predicate.to_string(),
                observed,
                verdict,
                note,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fail_beats_unknown_beats_pass() {
        use Verdict::*;
        assert_eq!(Verdict::merge_all([Pass, Unknown, Pass]), Unknown);
        assert_eq!(Verdict::merge_all([Unknown, Fail, Pass]), Fail);
        assert_eq!(Verdict::merge_all([Pass, Pass]), Pass);
        assert_eq!(Verdict::merge_all([]), Unknown);
    }

    #[test]
    fn missing_observation_is_unknown_not_pass() {
        let expect = BTreeMap::from([("x".to_string(), Predicate::Gt(0.0))]);
        let r = evaluate(&expect, &BTreeMap::new());
        assert_eq!(r[0].verdict, Verdict::Unknown);
        let obs = BTreeMap::from([("x".to_string(), json!(0))]);
        assert_eq!(evaluate(&expect, &obs)[0].verdict, Verdict::Fail);
    }
}
