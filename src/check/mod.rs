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
    /// The predicate with parameters and observations replaced by their
    /// values (`== 400` for `== workers * increments`), when it names any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
    /// What was observed (absent when the exercise did not produce it).
    pub observed: Option<Value>,
    /// Verdict.
    pub verdict: Verdict,
    /// Why the check could not be decided, if it could not.
    pub note: Option<String>,
}

/// Checks every expectation against the observations. Names in a predicate
/// are looked up among the observations first, then the parameters.
pub fn evaluate(
    expect: &BTreeMap<String, Predicate>,
    observations: &BTreeMap<String, Value>,
    params: &BTreeMap<String, Value>,
) -> Vec<CheckResult> {
    let lookup = |name: &str| {
        observations
            .get(name)
            .or_else(|| params.get(name))
            .and_then(Value::as_f64)
    };
    expect
        .iter()
        .map(|(name, predicate)| {
            let observed = observations.get(name).filter(|v| !v.is_null()).cloned();
            let resolved = (!predicate.names().is_empty())
                .then(|| predicate.resolved(&lookup).ok())
                .flatten();
            let (verdict, note) = match &observed {
                None => (
                    Verdict::Unknown,
                    Some("not observed (no samples)".to_string()),
                ),
                Some(v) => match predicate.holds(v, &lookup) {
                    Ok(true) => (Verdict::Pass, None),
                    Ok(false) => (Verdict::Fail, None),
                    Err(e) => (Verdict::Unknown, Some(e)),
                },
            };
            CheckResult {
                observation: name.clone(),
                expect: predicate.to_string(),
                resolved,
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

    use crate::exercise::ObsKind;

    fn expect(name: &str, text: &str) -> BTreeMap<String, Predicate> {
        BTreeMap::from([(
            name.to_string(),
            Predicate::parse(text, ObsKind::Number).unwrap(),
        )])
    }

    #[test]
    fn missing_observation_is_unknown_not_pass() {
        let e = expect("x", "> 0");
        let none = BTreeMap::new();
        assert_eq!(evaluate(&e, &none, &none)[0].verdict, Verdict::Unknown);
        let null = BTreeMap::from([("x".to_string(), Value::Null)]);
        assert_eq!(evaluate(&e, &null, &none)[0].verdict, Verdict::Unknown);
        let obs = BTreeMap::from([("x".to_string(), json!(0))]);
        assert_eq!(evaluate(&e, &obs, &none)[0].verdict, Verdict::Fail);
    }

    #[test]
    fn expressions_see_parameters_and_observations() {
        let e = expect("final", "== workers * increments - lost");
        let params = BTreeMap::from([
            ("workers".to_string(), json!(4)),
            ("increments".to_string(), json!(10)),
        ]);
        let obs = BTreeMap::from([
            ("final".to_string(), json!(37)),
            ("lost".to_string(), json!(3)),
        ]);
        let r = &evaluate(&e, &obs, &params)[0];
        assert_eq!(r.verdict, Verdict::Pass);
        assert_eq!(r.resolved.as_deref(), Some("== 37"));
        // The other observation is missing: undecidable.
        let obs = BTreeMap::from([("final".to_string(), json!(37))]);
        assert_eq!(evaluate(&e, &obs, &params)[0].verdict, Verdict::Unknown);
    }
}
