//! The JSON report: [`write`] serialises the whole [`RunReport`] unchanged,
//! so scripts see every observation, parameter, check and timeline event.

use std::io::{self, Write};

use crate::event::RunReport;

/// Writes `report` as pretty-printed JSON followed by a newline (so `cat`
/// and `jq` see a complete last line).
pub fn write(report: &RunReport, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;
    use serde_json::{Value, json};

    #[test]
    fn contains_every_observation_check_and_timeline() {
        let mut buf = Vec::new();
        write(&sample::report(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.ends_with("}\n"));
        let v: Value = serde_json::from_str(&text).unwrap();

        assert_eq!(v["verdict"], json!("fail"));
        let lab = &v["labs"][0];
        assert_eq!(lab["name"], json!("distributed-locking"));
        let setnx = &lab["scenarios"][0];
        assert_eq!(setnx["observations"]["acquired"], json!(812));
        assert_eq!(setnx["observations"]["p99_ms"], json!(3.4567));
        assert_eq!(setnx["timeline"][0]["what"], json!("8 clients started"));
        let no_lock = &lab["scenarios"][1];
        assert_eq!(no_lock["verdict"], json!("fail"));
        assert_eq!(no_lock["checks"][0]["observation"], json!("lost_updates"));
        assert_eq!(no_lock["checks"][0]["observed"], json!(0));
        let partition = &lab["scenarios"][2];
        assert_eq!(partition["verdict"], json!("unknown"));
        assert_eq!(partition["error"], json!("redis: connection refused"));
        assert_eq!(v["labs"][1]["error"], json!(sample::SETUP_ERROR));
        assert!(setnx.get("repeats").is_none(), "only with --repeat");
    }

    #[test]
    fn repeats_carry_counts_flaky_flags_and_every_run() {
        let mut report = sample::report();
        let mut runs = vec![report.labs[0].scenarios[0].clone(); 3];
        runs[1].checks[0].verdict = crate::check::Verdict::Fail;
        runs[1].observations.insert("lost_updates".into(), json!(2));
        report.labs[0].scenarios[0] = crate::repeat::fold(runs);
        let mut buf = Vec::new();
        write(&report, &mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        let setnx = &v["labs"][0]["scenarios"][0];
        assert_eq!(setnx["verdict"], json!("fail"));
        let r = &setnx["repeats"];
        assert_eq!(r["runs"], json!(3));
        assert_eq!(r["expectations"][0]["observation"], json!("lost_updates"));
        assert_eq!(r["expectations"][0]["passed"], json!(2));
        assert_eq!(r["expectations"][0]["flaky"], json!(true));
        assert_eq!(r["expectations"][1]["flaky"], json!(false));
        assert_eq!(r["observations"]["lost_updates"], json!([0, 2, 0]));
        assert_eq!(r["durations_ms"], json!([1234, 1234, 1234]));
    }
}
