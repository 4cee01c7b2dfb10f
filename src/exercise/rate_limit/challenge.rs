//! The harness of the rate-limiting challenge: the learner's limiter,
//! shared by every instance of the program, between the offered load and
//! the API. The agent hands out tickets on the scenario's schedule (the
//! trickle, then the burst) and logs the API's calls; each instance takes
//! tickets and calls the API only for those its limiter admits. Everything
//! is read from the agent's log, on one clock: what the program prints
//! decides nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::super::agent_record::AgentRecord;
use super::super::{Ctx, ExerciseError, Observations};
use super::{Bucket, Excess, excess_over_bucket, max_in_window, round2, round4};
use crate::agent::tickets::{Log, Phase, Schedule, Ticket};
use crate::challenge::Solution;

/// How often the agent's log is read while the program runs.
const POLL: Duration = Duration::from_millis(50);

/// The program has this long to exit once the schedule is over (it is told
/// so by `204` on its next ticket), and this long without taking a ticket
/// while some remain is no progress. Either way the harness stops it.
const LINGER: Duration = Duration::from_secs(5);

/// The schedule's phases, in order.
const STEADY: usize = 0;
const BURST: usize = 1;

/// Sets the schedule, runs the program until it has taken every ticket and
/// exited (or lingers), then observes from the agent's log.
pub(super) async fn run(
    ctx: &Ctx,
    solution: &std::sync::Arc<Solution>,
) -> Result<Observations, ExerciseError> {
    let tickets = AgentRecord::open(ctx, "tickets", "the tickets")?;
    set_schedule(ctx, &tickets).await?;
    let t0 = ctx.timeline().started_at();
    solution
        .start(&[("TICKETS_URL", tickets.url.clone())])
        .await
        .map_err(ExerciseError)?;
    let log = follow(ctx, &tickets, solution).await?;
    let (obs, evidence) = observe(&log, Bucket::from(ctx), t0);
    for (name, what) in evidence {
        ctx.evidence(name, what);
    }
    Ok(obs)
}

async fn set_schedule(ctx: &Ctx, tickets: &AgentRecord) -> Result<(), ExerciseError> {
    let phase = |rps: &str, ms: &str| Phase {
        rps: ctx.int(rps) as f64,
        ms: ctx.int(ms) as u64,
    };
    let schedule = Schedule {
        phases: vec![
            phase("steady_rps", "steady_ms"),
            phase("burst_rps", "burst_ms"),
        ],
    };
    tickets
        .put_json("", &schedule, "setting the tickets' schedule")
        .await?;
    Ok(())
}

/// Reads the log until every instance ended, or the program lingers after
/// the last ticket, or takes none for [`LINGER`] while some remain; then
/// stops it and reads the log once more.
async fn follow(
    ctx: &Ctx,
    tickets: &AgentRecord,
    solution: &Solution,
) -> Result<Log, ExerciseError> {
    let mut last_change = tokio::time::Instant::now();
    let mut seen = (0, 0);
    let mut marked_burst = false;
    loop {
        let ended = solution.all_ended();
        let log = fetch(tickets).await?;
        let now = (log.tickets.len(), called(&log.tickets));
        if now != seen {
            seen = now;
            last_change = tokio::time::Instant::now();
        }
        if !marked_burst && log.tickets.iter().any(|t| t.phase == BURST) {
            marked_burst = true;
            ctx.mark("burst-started");
        }
        if ended || last_change.elapsed() > LINGER {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    solution.stop().await;
    fetch(tickets).await
}

fn called(tickets: &[Ticket]) -> usize {
    tickets.iter().filter(|t| t.called_us.is_some()).count()
}

async fn fetch(tickets: &AgentRecord) -> Result<Log, ExerciseError> {
    tickets.get("/log", "reading the tickets' log").await
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The observations (the same names as the built-in clients') and the
/// evidence behind them.
fn observe(
    log: &Log,
    bucket: Bucket,
    t0: SystemTime,
) -> (Observations, Vec<(&'static str, String)>) {
    let t0_ms = t0
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let at = |ms: f64| format!("{:.2} s", (ms - t0_ms) / 1000.0);
    let mut evidence = Vec::new();

    let mut calls: Vec<f64> = log
        .tickets
        .iter()
        .filter_map(|t| t.called_us)
        .map(ms)
        .collect();
    calls.sort_by(f64::total_cmp);
    let in_phase = |p: usize| log.tickets.iter().filter(move |t| t.phase == p);
    let steady_rejected: Vec<&Ticket> =
        in_phase(STEADY).filter(|t| t.called_us.is_none()).collect();
    for t in steady_rejected.iter().take(3) {
        evidence.push((
            "steady_rejected",
            format!(
                "ticket {} of the trickle, taken by instance {} at {}, never reached the API",
                t.ticket,
                who(t.instance),
                at(ms(t.issued_us))
            ),
        ));
    }
    let burst: Vec<&Ticket> = in_phase(BURST).collect();
    let burst_seconds = burst
        .iter()
        .map(|t| t.issued_us)
        .min()
        .zip(burst.iter().map(|t| t.issued_us).max())
        .map(|(f, l)| round4((l - f) as f64 / 1e6));
    let burst_allowed = burst.iter().filter(|t| t.called_us.is_some()).count();
    let excess = excess_over_bucket(&calls, bucket);
    if let Some(e) = excess.filter(|e| e.excess > 0.0) {
        evidence.push(("excess_over_bucket", describe_excess(log, e, bucket, &at)));
    }
    if log.refused_calls > 0 {
        evidence.push((
            "allowed",
            format!(
                "{} calls were refused: their ticket was never handed out, or was called before",
                log.refused_calls
            ),
        ));
    }
    let taken = log.tickets.len();
    let obs = Observations::from([
        ("allowed".into(), Value::from(calls.len())),
        ("rejected".into(), Value::from(taken - calls.len())),
        ("steady_rejected".into(), Value::from(steady_rejected.len())),
        ("burst_requests".into(), Value::from(burst.len())),
        ("burst_allowed".into(), Value::from(burst_allowed)),
        ("burst_seconds".into(), Value::from(burst_seconds)),
        (
            "max_allowed_in_any_1s".into(),
            Value::from((!calls.is_empty()).then(|| max_in_window(&calls, 1000.0))),
        ),
        (
            "excess_over_bucket".into(),
            Value::from(excess.map(|e| round2(e.excess))),
        ),
    ]);
    (obs, evidence)
}

fn who(instance: Option<u32>) -> String {
    instance.map_or_else(|| "?".into(), |i| i.to_string())
}

/// "between 2.30 s and 2.35 s, 20 calls reached the API (instances 1, 2, 3,
/// 4); a bucket of 5 refilled at 20/s allows 6".
fn describe_excess(log: &Log, e: Excess, bucket: Bucket, at: &impl Fn(f64) -> String) -> String {
    let mut instances: Vec<u32> = log
        .tickets
        .iter()
        .filter(|t| {
            t.called_us
                .is_some_and(|c| (e.from..=e.to).contains(&ms(c)))
        })
        .filter_map(|t| t.called_by)
        .collect();
    instances.sort_unstable();
    instances.dedup();
    let names: Vec<String> = instances.iter().map(u32::to_string).collect();
    let allowance = bucket.capacity + bucket.rate * (e.to - e.from) / 1000.0;
    format!(
        "between {} and {}, {} calls reached the API (instance{} {}); a bucket of {} refilled at {}/s lets {:.1} through",
        at(e.from),
        at(e.to),
        e.count,
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        bucket.capacity,
        bucket.rate,
        allowance
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000;

    fn ticket(k: u64, phase: usize, issued_ms: u64, called_ms: Option<u64>) -> Ticket {
        Ticket {
            ticket: k,
            phase,
            instance: Some(1 + (k % 2) as u32),
            issued_us: T0 + issued_ms * 1000,
            called_us: called_ms.map(|c| T0 + c * 1000),
            called_by: called_ms.map(|_| 1 + (k % 2) as u32),
        }
    }

    fn observe_log(tickets: Vec<Ticket>) -> (Observations, Vec<(&'static str, String)>) {
        let log = Log {
            tickets,
            refused_calls: 0,
            total: 0,
        };
        let bucket = Bucket {
            capacity: 2.0,
            rate: 10.0,
        };
        observe(&log, bucket, UNIX_EPOCH + Duration::from_micros(T0))
    }

    #[test]
    fn a_limiter_within_the_bucket_has_no_excess() {
        let mut tickets = vec![
            ticket(0, STEADY, 0, Some(1)),
            ticket(1, STEADY, 200, Some(201)),
        ];
        // The burst: ten tickets 10 ms apart, every 100 ms one is admitted.
        for k in 2..12 {
            let issued = 400 + (k - 2) * 10;
            tickets.push(ticket(
                k,
                BURST,
                issued,
                (k % 10 == 2).then_some(issued + 1),
            ));
        }
        let (obs, evidence) = observe_log(tickets);
        assert_eq!(obs["steady_rejected"], 0);
        assert_eq!(obs["burst_requests"], 10);
        assert_eq!(obs["burst_allowed"], 1);
        assert_eq!(obs["burst_seconds"], 0.09);
        assert!(
            obs["excess_over_bucket"].as_f64().unwrap() <= 0.0,
            "{obs:?}"
        );
        assert!(evidence.is_empty(), "{evidence:?}");
    }

    #[test]
    fn a_bunch_beyond_the_bucket_is_the_evidence() {
        let mut tickets = vec![ticket(0, STEADY, 0, None)];
        for k in 1..7 {
            tickets.push(ticket(k, BURST, 500, Some(500)));
        }
        let (obs, evidence) = observe_log(tickets);
        assert_eq!(obs["steady_rejected"], 1);
        assert_eq!(obs["excess_over_bucket"], 4.0);
        assert_eq!(obs["max_allowed_in_any_1s"], 6);
        let lines: Vec<&str> = evidence.iter().map(|(_, l)| l.as_str()).collect();
        assert!(lines[0].contains("ticket 0 of the trickle"), "{lines:?}");
        assert!(
            lines[1]
                .contains("between 0.50 s and 0.50 s, 6 calls reached the API (instances 1, 2)"),
            "{lines:?}"
        );
    }

    #[test]
    fn no_calls_is_no_observation() {
        let (obs, _) = observe_log(vec![ticket(0, BURST, 0, None)]);
        assert_eq!(obs["excess_over_bucket"], Value::Null);
        assert_eq!(obs["max_allowed_in_any_1s"], Value::Null);
        assert_eq!(obs["allowed"], 0);
    }
}
