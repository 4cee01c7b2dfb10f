//! JUnit XML for CI dashboards: [`write`] folds a [`RunReport`] into one
//! `<testsuite>` per lab and one `<testcase>` per scenario, built with
//! [`quick_junit::Report`].
//!
//! Mapping: a failed expectation is a `<failure>` (the lab disproved the
//! claim); an undecided scenario is an `<error>` (the exercise or the
//! environment broke, nothing was disproved); a lab whose services could not
//! start gets a single `setup` test case with an `<error>`.

use std::io::{self, Write};
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::words::{check_line, format_value, problems};
use crate::check::Verdict;
use crate::event::{ExpectationTally, LabReport, RunReport, ScenarioReport};

/// Writes `report` as JUnit XML.
pub fn write(report: &RunReport, out: &mut dyn Write) -> io::Result<()> {
    let mut junit = Report::new("infralab");
    junit.set_time(Duration::from_millis(report.duration_ms));
    junit.add_test_suites(report.labs.iter().map(suite));
    junit.serialize(&mut *out).map_err(io::Error::other)?;
    writeln!(out)
}

fn suite(lab: &LabReport) -> TestSuite {
    let classname = format!("infralab.{}", lab.name);
    let mut suite = TestSuite::new(lab.name.as_str());
    suite.set_time(Duration::from_millis(lab.duration_ms));
    suite.add_property(Property::new("title", lab.title.as_str()));
    suite.add_property(Property::new("file", lab.file.as_str()));
    // Lets a CI user find the lab's containers (`io.infralab.run` label).
    suite.add_property(Property::new("run_id", lab.run_id.as_str()));
    for service in &lab.services {
        suite.add_property(Property::new(
            format!("service.{}", service.name),
            service.url.as_str(),
        ));
    }
    if let Some(error) = &lab.error {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_type("setup").set_message(error.as_str());
        let mut case = TestCase::new("setup", status);
        case.set_classname(classname.as_str())
            .set_time(Duration::from_millis(lab.duration_ms));
        suite.add_test_case(case);
    }
    suite.add_test_cases(lab.scenarios.iter().map(|s| case(s, &classname)));
    suite
}

fn case(s: &ScenarioReport, classname: &str) -> TestCase {
    let status = match s.verdict {
        Verdict::Pass => TestCaseStatus::success(),
        Verdict::Fail => {
            // The message names what was disproved (or could not be
            // reproduced, with `--repeat`); the body also lists anything
            // undecided alongside.
            let flaky: Vec<&ExpectationTally> = s
                .repeats
                .iter()
                .flat_map(|r| &r.expectations)
                .filter(|t| t.flaky)
                .collect();
            let failed: Vec<String> = flaky
                .iter()
                .map(|t| {
                    format!(
                        "{}: flaky: passed {} of {}",
                        t.observation, t.passed, t.runs
                    )
                })
                .chain(
                    s.checks
                        .iter()
                        .filter(|c| c.verdict == Verdict::Fail)
                        .filter(|c| !flaky.iter().any(|t| t.observation == c.observation))
                        .map(check_line),
                )
                .collect();
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let mut description = problems(s);
            description.extend(
                s.evidence
                    .iter()
                    .map(|e| format!("evidence: {}: {}", e.observation, e.what)),
            );
            status
                .set_type("expectation")
                .set_message(failed.join("; "))
                .set_description(description.join("\n"));
            status
        }
        Verdict::Unknown => {
            let mut why = problems(s);
            if why.is_empty() {
                why.push("no expectation could be decided".into());
            }
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status
                .set_type(if s.error.is_some() {
                    "exercise"
                } else {
                    "undecided"
                })
                .set_message(why.join("; "))
                .set_description(why.join("\n"));
            status
        }
    };
    let mut case = TestCase::new(s.name.as_str(), status);
    case.set_classname(classname)
        .set_time(Duration::from_millis(s.duration_ms));
    if let Some(r) = &s.repeats {
        case.add_property(Property::new("runs", r.runs.to_string()));
        case.add_property(Property::new("runs.passed", r.passed.to_string()));
    }
    for (name, value) in &s.params {
        case.add_property(Property::new(format!("param.{name}"), format_value(value)));
    }
    if !s.observations.is_empty() {
        let lines: String = s
            .observations
            .iter()
            .map(|(name, value)| format!("{name} = {}\n", format_value(value)))
            .collect();
        case.set_system_out(lines);
    }
    if let Some(solution) = &s.solution {
        let mut text = format!("$ {}\n", solution.command);
        for i in &solution.instances {
            text += &format!("--- {} ({})\n", i.instance, i.ended);
            for line in &i.output {
                text += &format!("{line}\n");
            }
        }
        case.set_system_err(text);
    }
    case
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    fn xml() -> String {
        let mut buf = Vec::new();
        write(&sample::report(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn one_suite_per_lab_one_case_per_scenario() {
        let xml = xml();
        assert!(xml.contains(r#"<testsuite name="distributed-locking" tests="3" skipped="0" errors="1" failures="1""#), "{xml}");
        assert!(
            xml.contains(
                r#"<testcase name="setnx" classname="infralab.distributed-locking" time="1.234""#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="service.redis" value="redis://127.0.0.1:49153"/>"#)
        );
    }

    #[test]
    fn failures_errors_and_observations() {
        let xml = xml();
        assert!(xml.contains(
            r#"<failure message="lost_updates: expected &gt; 0, observed 0" type="expectation">"#
        ), "{xml}");
        assert!(xml.contains(r#"<error message="redis: connection refused; safety_violations: expected == 0, not observed" type="exercise">"#), "{xml}");
        assert!(
            xml.contains("acquired = 812\nlost_updates = 0\np99_ms = 3.46\n"),
            "{xml}"
        );
        assert_eq!(xml.matches("<failure").count(), 1);
    }

    #[test]
    fn a_flaky_expectation_is_a_failure_saying_how_often_it_passed() {
        let mut report = sample::report();
        let runs = vec![report.labs[0].scenarios[0].clone(); 20];
        let mut runs = runs;
        runs[3].checks[0].verdict = Verdict::Fail;
        runs[3].verdict = Verdict::Fail;
        report.labs[0].scenarios[0] = crate::repeat::fold(runs);
        let mut buf = Vec::new();
        write(&report, &mut buf).unwrap();
        let xml = String::from_utf8(buf).unwrap();
        assert!(
            xml.contains(
                r#"<failure message="lost_updates: flaky: passed 19 of 20" type="expectation">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="runs" value="20"/>"#),
            "{xml}"
        );
        assert_eq!(xml.matches("<failure").count(), 2);
    }

    #[test]
    fn setup_error_is_one_case() {
        let xml = xml();
        let suite = &xml[xml.find(r#"<testsuite name="queue-backpressure""#).unwrap()..];
        assert!(
            suite.contains(r#"<testcase name="setup" classname="infralab.queue-backpressure""#),
            "{xml}"
        );
        assert!(
            suite.contains(&format!(
                r#"<error message="{}" type="setup"/>"#,
                sample::SETUP_ERROR
            )),
            "{xml}"
        );
    }
}
