//! `ack-redelivery` as the harness of its challenge: the learner's program
//! is a work-queue consumer, N instances of it. The harness owns both ends:
//! it publishes the message ids (with publisher confirms) into a queue, and
//! it serves the sink (on the agent, [`crate::agent::sink`]) where the
//! program reports each id once its work is done. Faults kill or restart
//! an instance mid-work; the sink may refuse a report, as a flaky
//! downstream does.
//!
//! Every observation comes from the sink's record, from what the harness
//! finds left in the queue once the program is stopped, and from when
//! infralab saw each instance end; never from what the program prints. An
//! id that is neither in the sink nor in the queue is *lost*: the broker
//! counted it as done (acknowledged, auto-acknowledged or rejected) and the
//! work never happened.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::Channel;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use serde_json::Value;

use super::super::agent_record::AgentRecord;
use super::super::{Context, Ctx, ExerciseError, Observations};
use super::{publish_all, wait_until_gone};
use crate::agent::sink::{Log, Report};
use crate::challenge::{Happening, Lifecycle, Solution};
use crate::client::amqp;

/// How often the sink's log is read while the program runs.
const POLL: Duration = Duration::from_millis(10);

/// Evidence lines kept per observation.
const EVIDENCE: usize = 3;

/// Ids listed in a summary line.
const LISTED: usize = 12;

/// The scenario's parameters, as the harness uses them.
struct Plan {
    messages: u32,
    kill_after: usize,
    work: Duration,
    refuse_every: u64,
    stall: Duration,
}

impl Plan {
    fn from(ctx: &Ctx) -> Result<Plan, ExerciseError> {
        let plan = Plan {
            messages: ctx.int("messages") as u32,
            kill_after: ctx.int("kill_after") as usize,
            work: Duration::from_millis(ctx.int("work_ms") as u64),
            refuse_every: ctx.int("refuse_every") as u64,
            stall: Duration::from_millis(ctx.int("stall_ms") as u64),
        };
        if plan.kill_after == 0 || plan.kill_after >= plan.messages as usize {
            return Err(ExerciseError(format!(
                "kill_after ({}) must be between 1 and messages - 1 ({}): the instance that reports that id is the one a fault on `mid-work` reaches",
                plan.kill_after,
                plan.messages.saturating_sub(1)
            )));
        }
        Ok(plan)
    }
}

/// The sink on the lab's agent: its URL (given to the program) and a client.
struct Sink(AgentRecord);

impl Sink {
    /// The scenario's sink, told how often to refuse.
    async fn open(ctx: &Ctx, refuse_every: u64) -> Result<Sink, ExerciseError> {
        let sink = AgentRecord::open(ctx, "sink", "the sink")?;
        sink.put("/refuse", refuse_every.to_string(), "configuring the sink")
            .await?;
        Ok(Sink(sink))
    }

    /// The reports from `since` on.
    async fn fetch(&self, since: usize) -> Result<Vec<Report>, ExerciseError> {
        let log: Log = self
            .0
            .get(&format!("/log?since={since}"), "reading the sink's log")
            .await?;
        Ok(log.entries)
    }
}

/// Declares the queue, runs the program against it, measures, and deletes
/// the queue whatever happened.
pub(super) async fn run(
    ctx: &Ctx,
    solution: &Arc<Solution>,
) -> Result<Observations, ExerciseError> {
    let plan = Plan::from(ctx)?;
    let sink = Sink::open(ctx, plan.refuse_every).await?;
    let uri = amqp::parse_uri(&ctx.service("rabbitmq")?.url)?;
    let admin = amqp::connect(&uri, &format!("{} harness", ctx.namespace)).await?;
    let ch = amqp::confirming_channel(&admin).await?;
    let queue = format!("{}:tasks", ctx.namespace);
    amqp::declare_shared_queue(&ch, &queue).await?;
    let result = scenario(ctx, solution, &plan, &sink, &ch, &queue).await;
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin.close(200, "OK".into()).await;
    result
}

async fn scenario(
    ctx: &Ctx,
    solution: &Arc<Solution>,
    plan: &Plan,
    sink: &Sink,
    ch: &Channel,
    queue: &str,
) -> Result<Observations, ExerciseError> {
    let t0 = ctx.timeline().started_at();
    solution
        .start(&[
            ("SINK_URL", sink.0.url.clone()),
            ("QUEUE", queue.to_string()),
        ])
        .await
        .map_err(ExerciseError)?;
    if wait_for_consumers(ch, queue, solution, plan.stall).await? {
        ctx.mark("subscribed");
    }
    let published = publish_all(ch, queue, plan.messages, |id| id.to_string().into_bytes()).await?;
    if published != plan.messages {
        return Err(ExerciseError(format!(
            "the broker confirmed only {published} of {} messages",
            plan.messages
        )));
    }
    ctx.mark("published");

    let watched = follow_sink(ctx, solution, plan, sink).await?;
    let stopped_at = SystemTime::now();
    solution.stop().await;
    let left = drain(ch, queue).await?;
    let reports = [watched.reports, sink.fetch(watched.seen).await?].concat();

    let record = Record {
        t0,
        messages: plan.messages,
        reports: &reports,
        left: &left,
        history: &solution.history(),
        stopped_at,
        stalled: watched.stalled_since.map(|at| (at, plan.stall)),
    };
    let (obs, evidence) = record.observe();
    for (name, what) in evidence {
        ctx.evidence(name, what);
    }
    Ok(obs)
}

/// Waits until the broker lists one consumer per instance on the queue, so
/// the work is shared from the first message; gives up after `limit` (a
/// program that never subscribes leaves every message in the queue).
async fn wait_for_consumers(
    ch: &Channel,
    queue: &str,
    solution: &Solution,
    limit: Duration,
) -> Result<bool, ExerciseError> {
    let until = Instant::now() + limit;
    loop {
        let state = amqp::queue_state(ch, queue).await?;
        if state.consumers >= solution.instances() {
            return Ok(true);
        }
        if Instant::now() >= until || solution.all_ended() {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What following the sink saw.
struct Watched {
    reports: Vec<Report>,
    /// Reports read (the next `since`).
    seen: usize,
    /// No new id reached the sink from then on, for the stall window.
    stalled_since: Option<SystemTime>,
}

/// Reads the sink until every id arrived, every instance ended, or no new
/// id arrived for the stall window. The instance that reported the
/// `kill_after`-th id reaches `mid-work` half a message's work later: by
/// then it should be inside its next message's work.
async fn follow_sink(
    ctx: &Ctx,
    solution: &Solution,
    plan: &Plan,
    sink: &Sink,
) -> Result<Watched, ExerciseError> {
    let mut reports: Vec<Report> = Vec::new();
    let mut ids = BTreeSet::new();
    let mut accepted = 0;
    let mut last_progress = Instant::now();
    loop {
        let ended = solution.all_ended();
        for r in sink.fetch(reports.len()).await? {
            if r.accepted {
                accepted += 1;
                if accepted == plan.kill_after
                    && let Some(i) = r.instance
                {
                    mark_mid_work(ctx, i, r.at_us, plan.work);
                }
                if r.id < u64::from(plan.messages) && ids.insert(r.id) {
                    last_progress = Instant::now();
                }
            }
            reports.push(r);
        }
        if ids.len() == plan.messages as usize {
            ctx.mark("all-reported");
            break;
        }
        if ended {
            break;
        }
        if last_progress.elapsed() > plan.stall {
            let seen = reports.len();
            return Ok(Watched {
                reports,
                seen,
                stalled_since: Some(SystemTime::now() - last_progress.elapsed()),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    let seen = reports.len();
    Ok(Watched {
        reports,
        seen,
        stalled_since: None,
    })
}

/// Marks `mid-work` for `instance` half of `work` after its report at `at_us`.
fn mark_mid_work(ctx: &Ctx, instance: u32, at_us: u64, work: Duration) {
    let at = UNIX_EPOCH + Duration::from_micros(at_us) + work / 2;
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let timeline = ctx.timeline();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        timeline.record_by("exercise", "mid-work", instance);
    });
}

/// Once the program is stopped (the broker has requeued what it held
/// unacknowledged), takes every message left in the queue: their ids.
async fn drain(ch: &Channel, queue: &str) -> Result<Vec<u64>, ExerciseError> {
    wait_until_gone(ch, queue).await?;
    let mut left = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .doing("taking what is left in the queue")?
    {
        let text = String::from_utf8_lossy(&m.delivery.data);
        let id = text.trim().parse().map_err(|_| {
            ExerciseError(format!("unexpected message left in the queue: {text:?}"))
        })?;
        left.push(id);
    }
    Ok(left)
}

/// Everything the harness measured, for [`Record::observe`].
pub(super) struct Record<'a> {
    /// Wall-clock start of the scenario.
    pub t0: SystemTime,
    /// Ids published: 0..messages.
    pub messages: u32,
    /// Every report the sink received, in order.
    pub reports: &'a [Report],
    /// Ids in the queue once the program was stopped (reported ones
    /// too: stopped before their ack).
    pub left: &'a [u64],
    /// Starts, pauses, resumes and ends of the instances.
    pub history: &'a [Happening],
    /// When the harness stopped the program.
    pub stopped_at: SystemTime,
    /// No new id reached the sink since `.0` for `.1`.
    pub stalled: Option<(SystemTime, Duration)>,
}

fn us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Record<'_> {
    /// Seconds since the scenario started, as people read them.
    fn at(&self, at_us: u64) -> String {
        format!("{:.2} s", at_us.saturating_sub(us(self.t0)) as f64 / 1e6)
    }

    /// "instance 2 ended at 1.21 s, 26 ms after its last report (message
    /// 17)", for every instance that ended before the harness stopped it.
    fn endings(&self) -> Vec<String> {
        self.history
            .iter()
            .filter(|h| h.what == Lifecycle::Ended && h.at < self.stopped_at)
            .map(|h| {
                let end = us(h.at);
                let last = self
                    .reports
                    .iter()
                    .rev()
                    .find(|r| r.instance == Some(h.instance) && r.at_us <= end);
                let after = last.map_or_else(
                    || ", before reporting anything".to_string(),
                    |r| {
                        format!(
                            ", {} ms after its last report (message {})",
                            (end - r.at_us) / 1000,
                            r.id
                        )
                    },
                );
                format!("instance {} ended at {}{after}", h.instance, self.at(end))
            })
            .collect()
    }

    /// Observations and, per observation, what shows it.
    pub fn observe(&self) -> (Observations, Vec<(&'static str, String)>) {
        let mut evidence = Vec::new();
        let in_range = |id: &u64| *id < u64::from(self.messages);
        let mut first: BTreeMap<u64, &Report> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for r in self
            .reports
            .iter()
            .filter(|r| r.accepted && in_range(&r.id))
        {
            match first.get(&r.id) {
                Some(earlier) => duplicates.push((*earlier, r)),
                None => {
                    first.insert(r.id, r);
                }
            }
        }
        // A message reported but not yet acknowledged when the program was
        // stopped is back in the queue too: done, not left undone.
        let queued: BTreeSet<u64> = self.left.iter().copied().filter(in_range).collect();
        let left: Vec<u64> = queued
            .iter()
            .copied()
            .filter(|id| !first.contains_key(id))
            .collect();
        let lost: Vec<u64> = (0..u64::from(self.messages))
            .filter(|id| !first.contains_key(id) && !queued.contains(id))
            .collect();
        let refused = self.reports.iter().filter(|r| !r.accepted).count();

        let endings = self.endings();
        for &id in lost.iter().take(EVIDENCE) {
            let refusal = self
                .reports
                .iter()
                .find(|r| r.id == id && !r.accepted)
                .map(|r| {
                    format!(
                        "the sink refused it (503) at {} from instance {}, and nobody reported it again; ",
                        self.at(r.at_us),
                        r.instance.map_or("?".into(), |i| i.to_string())
                    )
                })
                .unwrap_or_default();
            let mut line = format!(
                "message {id}: {refusal}it never reached the sink and is no longer in the queue (the broker counted it as done)"
            );
            if !endings.is_empty() {
                line += &format!("; {}", endings.join("; "));
            }
            evidence.push(("lost", line));
        }
        if !lost.is_empty() {
            evidence.push((
                "lost",
                format!(
                    "{} of {} messages lost: {}",
                    lost.len(),
                    self.messages,
                    listed(&lost)
                ),
            ));
        }
        if !left.is_empty() {
            evidence.push((
                "left_in_queue",
                format!(
                    "{} {} still in the queue, never reported, when the program was stopped at {}: {}",
                    left.len(),
                    if left.len() == 1 { "message was" } else { "messages were" },
                    self.at(us(self.stopped_at)),
                    listed(&left)
                ),
            ));
        }
        let mut summary = format!(
            "{} of {} ids reached the sink; never reported: {} left in the queue, {} gone",
            first.len(),
            self.messages,
            left.len(),
            lost.len()
        );
        if let Some((since, stall)) = self.stalled {
            summary += &format!(
                "; no new id reached the sink for {:.1} s after {}",
                stall.as_secs_f64(),
                self.at(us(since))
            );
        }
        evidence.push(("processed", summary));
        for (earlier, again) in duplicates.iter().take(EVIDENCE) {
            let who = |r: &Report| r.instance.map_or("?".into(), |i| i.to_string());
            evidence.push((
                "duplicates",
                format!(
                    "message {} was reported by instance {} at {} and again by instance {} at {}",
                    earlier.id,
                    who(earlier),
                    self.at(earlier.at_us),
                    who(again),
                    self.at(again.at_us)
                ),
            ));
        }
        // With no report at all, "no duplicates" is no measurement.
        let duplicates = if first.is_empty() {
            Value::Null
        } else {
            Value::from(duplicates.len())
        };
        let obs = Observations::from([
            ("published".into(), Value::from(self.messages)),
            ("processed".into(), Value::from(first.len())),
            ("lost".into(), Value::from(lost.len())),
            ("left_in_queue".into(), Value::from(left.len())),
            ("duplicates".into(), duplicates),
            ("refused".into(), Value::from(refused)),
        ]);
        (obs, evidence)
    }
}

/// "3, 5, 7" or "3, 5, 7, … (40 in all)".
fn listed(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(LISTED).map(u64::to_string).collect();
    if ids.len() > LISTED {
        format!("{}, … ({} in all)", shown.join(", "), ids.len())
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000;

    fn r(seq: u64, ms: u64, instance: u32, id: u64, accepted: bool) -> Report {
        Report {
            seq,
            at_us: T0 + ms * 1000,
            instance: Some(instance),
            id,
            accepted,
        }
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(T0 + ms * 1000)
    }

    fn observe(
        messages: u32,
        reports: &[Report],
        left: &[u64],
        history: &[Happening],
    ) -> (Observations, Vec<(&'static str, String)>) {
        Record {
            t0: at(0),
            messages,
            reports,
            left,
            history,
            stopped_at: at(5000),
            stalled: None,
        }
        .observe()
    }

    fn lines<'a>(evidence: &'a [(&str, String)], name: &str) -> Vec<&'a str> {
        evidence
            .iter()
            .filter(|(o, _)| *o == name)
            .map(|(_, w)| w.as_str())
            .collect()
    }

    #[test]
    fn every_id_in_the_sink_is_nothing_lost() {
        let reports = [
            r(0, 10, 1, 0, true),
            r(1, 12, 2, 1, true),
            r(2, 20, 1, 2, true),
        ];
        let (obs, evidence) = observe(3, &reports, &[], &[]);
        assert_eq!(obs["processed"], 3);
        assert_eq!(obs["lost"], 0);
        assert_eq!(obs["duplicates"], 0);
        assert_eq!(obs["left_in_queue"], 0);
        assert!(lines(&evidence, "lost").is_empty());
    }

    #[test]
    fn an_id_neither_reported_nor_left_is_lost_and_named_with_the_kill() {
        let reports = [
            r(0, 10, 1, 0, true),
            r(1, 100, 2, 1, true),
            r(2, 300, 1, 3, true),
        ];
        let history = [Happening {
            instance: 2,
            at: at(126),
            what: Lifecycle::Ended,
        }];
        // 3 was reported, but its ack did not land before the stop.
        let (obs, evidence) = observe(5, &reports, &[3, 4], &history);
        assert_eq!(obs["processed"], 3);
        assert_eq!(obs["left_in_queue"], 1);
        assert_eq!(obs["lost"], 1);
        assert_eq!(
            lines(&evidence, "lost"),
            [
                "message 2: it never reached the sink and is no longer in the queue (the broker counted it as done); instance 2 ended at 0.13 s, 26 ms after its last report (message 1)",
                "1 of 5 messages lost: 2"
            ]
        );
        assert_eq!(
            lines(&evidence, "left_in_queue"),
            [
                "1 message was still in the queue, never reported, when the program was stopped at 5.00 s: 4"
            ]
        );
    }

    #[test]
    fn a_refused_report_never_retried_is_lost_and_says_so() {
        let reports = [
            r(0, 10, 1, 0, false),
            r(1, 20, 2, 1, true),
            r(2, 30, 2, 1, true),
        ];
        let (obs, evidence) = observe(2, &reports, &[], &[]);
        assert_eq!(obs["refused"], 1);
        assert_eq!(obs["lost"], 1);
        assert_eq!(obs["duplicates"], 1);
        assert!(
            lines(&evidence, "lost")[0]
                .starts_with("message 0: the sink refused it (503) at 0.01 s from instance 1"),
            "{evidence:?}"
        );
        assert_eq!(
            lines(&evidence, "duplicates"),
            ["message 1 was reported by instance 2 at 0.02 s and again by instance 2 at 0.03 s"]
        );
    }

    #[test]
    fn no_report_at_all_leaves_duplicates_unknown() {
        let (obs, _) = observe(4, &[], &[0, 1, 2, 3], &[]);
        assert!(obs["duplicates"].is_null());
        assert_eq!(obs["lost"], 0);
        assert_eq!(obs["left_in_queue"], 4);
        assert_eq!(obs["processed"], 0);
    }

    #[test]
    fn many_lost_ids_are_listed_short() {
        let ids: Vec<u64> = (0..20).collect();
        assert_eq!(
            listed(&ids),
            "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, … (20 in all)"
        );
    }
}
