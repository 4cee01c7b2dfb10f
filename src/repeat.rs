//! `run --repeat N`: [`fold`] turns the N reports of one scenario into one,
//! counting per expectation how often it passed and flagging it **flaky**
//! when its verdict changed between runs. A flaky expectation makes the
//! scenario FAIL even if its last run passed: a verdict an instructor cannot
//! reproduce is not a verdict.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::check::Verdict;
use crate::event::{ExpectationTally, Repeats, ScenarioReport};

/// Folds the reports of one scenario run `runs.len()` times (oldest first).
///
/// One run comes back unchanged. For more, the result keeps the last run's
/// observations, checks and timeline (what the tables show), adds
/// [`Repeats`] (per-expectation counts, every run's verdict, duration and
/// observations), sums the durations, gathers the errors by run, and merges
/// the verdict: FAIL when any expectation is flaky, else every run's verdict
/// merged (FAIL beats UNKNOWN beats PASS).
pub fn fold(mut runs: Vec<ScenarioReport>) -> ScenarioReport {
    if runs.len() <= 1 {
        return runs.pop().expect("a scenario ran at least once");
    }
    let expectations = tally(&runs);
    let flaky = expectations.iter().any(|t| t.flaky);
    let verdict = if flaky {
        Verdict::Fail
    } else {
        Verdict::merge_all(runs.iter().map(|r| r.verdict))
    };
    let errors = errors_by_run(&runs);
    let repeats = Repeats {
        runs: runs.len() as u32,
        passed: runs.iter().filter(|r| r.verdict == Verdict::Pass).count() as u32,
        verdicts: runs.iter().map(|r| r.verdict).collect(),
        durations_ms: runs.iter().map(|r| r.duration_ms).collect(),
        observations: observations(&runs),
        expectations,
    };
    let duration_ms = runs.iter().map(|r| r.duration_ms).sum();
    let last = runs.pop().expect("more than one run");
    ScenarioReport {
        verdict,
        error: errors,
        duration_ms,
        repeats: Some(repeats),
        ..last
    }
}

/// The runs' errors, each once with the runs that hit it:
/// `runs 1, 3: redis: connection refused; run 2: timed out`.
fn errors_by_run(runs: &[ScenarioReport]) -> Option<String> {
    let mut grouped: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, error) in runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i + 1, r.error.as_deref()?)))
    {
        match grouped.iter_mut().find(|(e, _)| *e == error) {
            Some((_, at)) => at.push(i),
            None => grouped.push((error, vec![i])),
        }
    }
    let parts: Vec<String> = grouped
        .into_iter()
        .map(|(error, at)| {
            let at: Vec<String> = at.iter().map(usize::to_string).collect();
            let label = if at.len() == 1 { "run" } else { "runs" };
            format!("{label} {}: {error}", at.join(", "))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Per expectation (in the order of the last run's checks), how each run
/// decided it. An expectation missing from a run counts as unknown there.
fn tally(runs: &[ScenarioReport]) -> Vec<ExpectationTally> {
    let last = runs.last().expect("runs");
    last.checks
        .iter()
        .map(|check| {
            let verdicts: Vec<Verdict> = runs
                .iter()
                .map(|r| {
                    r.checks
                        .iter()
                        .find(|c| c.observation == check.observation)
                        .map_or(Verdict::Unknown, |c| c.verdict)
                })
                .collect();
            let count = |v: Verdict| verdicts.iter().filter(|x| **x == v).count() as u32;
            ExpectationTally {
                observation: check.observation.clone(),
                expect: check.expect.clone(),
                runs: verdicts.len() as u32,
                passed: count(Verdict::Pass),
                failed: count(Verdict::Fail),
                unknown: count(Verdict::Unknown),
                flaky: verdicts.windows(2).any(|w| w[0] != w[1]),
            }
        })
        .collect()
}

/// Every observation any run produced, one value per run (null where a run
/// did not observe it).
fn observations(runs: &[ScenarioReport]) -> BTreeMap<String, Vec<Value>> {
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.observations.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let values = runs
                .iter()
                .map(|r| r.observations.get(name).cloned().unwrap_or(Value::Null))
                .collect();
            (name.clone(), values)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckResult;
    use serde_json::json;

    fn run(lost: i64, verdict: Verdict, error: Option<&str>) -> ScenarioReport {
        ScenarioReport {
            name: "setnx".into(),
            params: BTreeMap::new(),
            observations: BTreeMap::from([
                ("lost_updates".into(), json!(lost)),
                ("acquired".into(), json!(10)),
            ]),
            checks: vec![
                CheckResult {
                    observation: "lost_updates".into(),
                    expect: "== 0".into(),
                    resolved: None,
                    observed: Some(json!(lost)),
                    verdict,
                    note: None,
                },
                CheckResult {
                    observation: "acquired".into(),
                    expect: "> 0".into(),
                    resolved: None,
                    observed: Some(json!(10)),
                    verdict: Verdict::Pass,
                    note: None,
                },
            ],
            verdict,
            error: error.map(str::to_string),
            timeline: vec![],
            duration_ms: 100,
            repeats: None,
            evidence: Vec::new(),
            solution: None,
        }
    }

    #[test]
    fn one_run_is_unchanged() {
        let r = fold(vec![run(0, Verdict::Pass, None)]);
        assert!(r.repeats.is_none());
        assert_eq!(r.duration_ms, 100);
    }

    #[test]
    fn steady_runs_count_and_are_not_flaky() {
        let r = fold(vec![run(0, Verdict::Pass, None); 3]);
        let rep = r.repeats.as_ref().unwrap();
        assert_eq!((rep.runs, rep.passed), (3, 3));
        assert!(rep.expectations.iter().all(|t| !t.flaky && t.passed == 3));
        assert_eq!(r.verdict, Verdict::Pass);
        assert_eq!(r.duration_ms, 300);
        assert_eq!(rep.observations["lost_updates"], vec![json!(0); 3]);
        // Steadily failing is a FAIL, not flaky.
        let r = fold(vec![run(2, Verdict::Fail, None); 3]);
        let rep = r.repeats.as_ref().unwrap();
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(rep.expectations[0].failed, 3);
        assert!(!rep.expectations[0].flaky);
    }

    #[test]
    fn a_changed_verdict_is_flaky_and_fails_even_if_the_last_run_passed() {
        let mut runs = vec![run(0, Verdict::Pass, None); 19];
        runs.insert(4, run(1, Verdict::Fail, None));
        let r = fold(runs);
        let rep = r.repeats.as_ref().unwrap();
        let lost = &rep.expectations[0];
        assert_eq!(lost.observation, "lost_updates");
        assert_eq!((lost.runs, lost.passed, lost.failed), (20, 19, 1));
        assert!(lost.flaky);
        assert_eq!(lost.summary(), "19/20");
        assert!(!rep.expectations[1].flaky, "acquired passed every time");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(rep.passed, 19);
        assert_eq!(rep.verdicts[4], Verdict::Fail);
        assert_eq!(rep.observations["lost_updates"][4], json!(1));
        // The tables show the last run.
        assert_eq!(r.observations["lost_updates"], json!(0));
    }

    #[test]
    fn pass_then_unknown_is_flaky_too_and_errors_name_their_run() {
        let mut broken = run(0, Verdict::Unknown, Some("redis: connection refused"));
        broken.checks[0].verdict = Verdict::Unknown;
        broken.observations.remove("lost_updates");
        let r = fold(vec![run(0, Verdict::Pass, None), broken]);
        let rep = r.repeats.as_ref().unwrap();
        assert!(rep.expectations[0].flaky);
        assert_eq!(rep.expectations[0].unknown, 1);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.error.as_deref(), Some("run 2: redis: connection refused"));
        assert_eq!(
            rep.observations["lost_updates"],
            vec![json!(0), Value::Null]
        );
    }

    #[test]
    fn the_same_error_is_told_once_with_its_runs() {
        let e = |text| run(0, Verdict::Unknown, Some(text));
        let r = fold(vec![
            e("refused"),
            run(0, Verdict::Pass, None),
            e("refused"),
            e("timed out"),
        ]);
        assert_eq!(
            r.error.as_deref(),
            Some("runs 1, 3: refused; run 4: timed out")
        );
    }
}
