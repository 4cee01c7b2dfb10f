//! `redis-lock` as the harness of the distributed-locking challenge: the
//! learner's program takes the lock on the lab's Redis and increments a
//! value on the ledger (served by the agent, [`crate::agent::ledger`]) by
//! read-modify-write. The ledger records every access with time, instance
//! and fence token; every observation is computed from that record and from
//! when infralab paused, killed or saw each instance end, never from what
//! the program prints.
//!
//! A *holding window* is an instance's accepted read up to its next write
//! (or its end). Windows of an instance that a fault paused inside them are
//! left out of `max_concurrent_holders`: a lease may expire under a pause,
//! and fencing, not the lock, must then protect the value. A *stale write*
//! is an accepted write whose window contains another instance's accepted
//! write: it overwrote an increment it never read.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::super::agent_record::AgentRecord;
use super::super::{Ctx, ExerciseError, Observations};
use crate::agent::ledger::{Entry, Log, Op};
use crate::challenge::{Happening, Lifecycle, Solution};

/// Instances whose first read is a milestone (`read-by-N`), and reads
/// counted as milestones (`read-N`, the N-th accepted read by anyone).
pub(super) const ANNOUNCED: u32 = 4;

/// How often the ledger's log is read while the program runs.
const POLL: Duration = Duration::from_millis(10);

/// Evidence lines kept per observation.
const EVIDENCE: usize = 3;

/// Starts the program, follows the ledger until every instance ended (or
/// nothing progressed for `stall_ms`), and measures.
pub(super) async fn run(
    ctx: &Ctx,
    solution: &Arc<Solution>,
) -> Result<Observations, ExerciseError> {
    let ledger = AgentRecord::open(ctx, "ledger", "the ledger")?;
    let t0 = ctx.timeline().started_at();
    solution
        .start(&[("LEDGER_URL", ledger.url.clone())])
        .await
        .map_err(ExerciseError)?;

    let stall = Duration::from_millis(ctx.int("stall_ms") as u64);
    let mut entries: Vec<Entry> = Vec::new();
    let mut announced = BTreeSet::new();
    let mut reads = 0;
    let mut last_progress = Instant::now();
    let mut stalled_since = None;
    let mut still_running = Vec::new();
    loop {
        let ended = solution.all_ended();
        let log = fetch(&ledger, entries.len()).await?;
        for e in &log.entries {
            if e.op == Op::Write && e.accepted {
                last_progress = Instant::now();
            }
            if let Some(i) = e.instance
                && e.op == Op::Read
                && e.accepted
            {
                reads += 1;
                if reads <= ANNOUNCED {
                    ctx.mark_by(format!("read-{reads}"), i);
                }
                if i <= ANNOUNCED && announced.insert(i) {
                    ctx.mark_by(format!("read-by-{i}"), i);
                }
            }
        }
        entries.extend(log.entries);
        if ended {
            break;
        }
        if last_progress.elapsed() > stall {
            stalled_since = Some(SystemTime::now() - last_progress.elapsed());
            still_running = solution.running();
            solution.stop().await;
            let log = fetch(&ledger, entries.len()).await?;
            entries.extend(log.entries);
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let log = fetch(&ledger, entries.len()).await?;
    entries.extend(log.entries);
    let record = Record {
        t0,
        entries: &entries,
        value: log.value,
        history: &solution.history(),
        stalled: stalled_since.map(|at| (at, stall, still_running)),
    };
    let (obs, evidence) = record.observe();
    for (name, what) in evidence {
        ctx.evidence(name, what);
    }
    Ok(obs)
}

async fn fetch(ledger: &AgentRecord, since: usize) -> Result<Log, ExerciseError> {
    ledger
        .get(&format!("/log?since={since}"), "reading the ledger's log")
        .await
}

/// Everything the harness measured, for [`Record::observe`].
pub(super) struct Record<'a> {
    /// Wall-clock start of the scenario.
    pub t0: SystemTime,
    /// Every ledger access, in order.
    pub entries: &'a [Entry],
    /// The ledger's final value.
    pub value: i64,
    /// Starts, pauses, resumes and ends of the instances.
    pub history: &'a [Happening],
    /// No accepted write since `.0` for `.1`; `.2` were still running.
    pub stalled: Option<(SystemTime, Duration, Vec<u32>)>,
}

/// An instance's accepted read up to its next write or its end.
#[derive(Debug, Clone)]
struct Window<'a> {
    instance: u32,
    read: &'a Entry,
    write: Option<&'a Entry>,
    end_us: u64,
    paused: Option<(u64, Option<u64>)>,
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

    fn token(e: &Entry) -> String {
        e.token
            .map(|t| format!(" with token {t}"))
            .unwrap_or_default()
    }

    fn windows(&self) -> Vec<Window<'_>> {
        let last_us = self.entries.last().map_or(0, |e| e.at_us);
        let instances: BTreeSet<u32> = self.entries.iter().filter_map(|e| e.instance).collect();
        let mut windows = Vec::new();
        for i in instances {
            let ended_after = |t: u64| {
                self.history
                    .iter()
                    .filter(|h| h.instance == i && h.what == Lifecycle::Ended)
                    .map(|h| us(h.at))
                    .find(|&e| e >= t)
                    .unwrap_or(last_us)
            };
            let mut open: Option<&Entry> = None;
            for e in self.entries.iter().filter(|e| e.instance == Some(i)) {
                match (e.op, open) {
                    (Op::Read, prev) if e.accepted => {
                        if let Some(r) = prev {
                            windows.push((i, r, None, e.at_us.min(ended_after(r.at_us))));
                        }
                        open = Some(e);
                    }
                    (Op::Write, Some(r)) => {
                        windows.push((i, r, Some(e), e.at_us));
                        open = None;
                    }
                    _ => {}
                }
            }
            if let Some(r) = open {
                windows.push((i, r, None, ended_after(r.at_us)));
            }
        }
        windows
            .into_iter()
            .map(|(instance, read, write, end_us)| {
                let paused = self
                    .history
                    .iter()
                    .filter(|h| h.instance == instance && h.what == Lifecycle::Paused)
                    .map(|h| us(h.at))
                    .find(|&p| p >= read.at_us && p <= end_us)
                    .map(|p| {
                        let resumed = self
                            .history
                            .iter()
                            .filter(|h| h.instance == instance && h.what == Lifecycle::Resumed)
                            .map(|h| us(h.at))
                            .find(|&r| r >= p);
                        (p, resumed)
                    });
                Window {
                    instance,
                    read,
                    write,
                    end_us,
                    paused,
                }
            })
            .collect()
    }

    /// Observations and, per observation, the first offending operations.
    pub fn observe(&self) -> (Observations, Vec<(&'static str, String)>) {
        let mut evidence = Vec::new();
        let accepted_writes: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.op == Op::Write && e.accepted)
            .collect();
        let refused = self.entries.iter().filter(|e| !e.accepted).count();
        let windows = self.windows();

        // Stale writes: accepted, over another instance's accepted write
        // inside the window.
        let mut stale = 0;
        for w in &windows {
            let Some(write) = w.write.filter(|x| x.accepted) else {
                continue;
            };
            let over = accepted_writes.iter().find(|o| {
                o.instance != Some(w.instance) && o.at_us > w.read.at_us && o.at_us < write.at_us
            });
            if let Some(o) = over {
                stale += 1;
                if stale <= EVIDENCE {
                    let pause = match w.paused {
                        Some((p, Some(r))) => {
                            format!(", was paused from {} to {}", self.at(p), self.at(r))
                        }
                        Some((p, None)) => format!(", was paused at {}", self.at(p)),
                        None => String::new(),
                    };
                    let line = format!(
                        "instance {} read {} at {}{}{pause}, and wrote {} at {}{}, over instance {}'s write of {} at {}{}",
                        w.instance,
                        w.read.value,
                        self.at(w.read.at_us),
                        Self::token(w.read),
                        write.value,
                        self.at(write.at_us),
                        Self::token(write),
                        o.instance.map_or("?".into(), |i| i.to_string()),
                        o.value,
                        self.at(o.at_us),
                        Self::token(o),
                    );
                    if stale == 1 {
                        evidence.push(("lost_updates", line.clone()));
                    }
                    evidence.push(("stale_writes", line));
                }
            }
        }

        // Most holding windows at once, paused ones left out.
        let counted: Vec<&Window> = windows.iter().filter(|w| w.paused.is_none()).collect();
        let mut points: Vec<(u64, i32, usize)> = Vec::new();
        for (k, w) in counted.iter().enumerate() {
            points.push((w.read.at_us, 1, k));
            points.push((w.end_us, -1, k));
        }
        // Ends before starts at the same microsecond.
        points.sort_by_key(|&(t, d, _)| (t, d));
        let (mut inside, mut most) = (BTreeSet::new(), 0);
        for (_, d, k) in points {
            if d > 0 {
                inside.insert(k);
                if inside.len() > 1
                    && evidence
                        .iter()
                        .filter(|(o, _)| *o == "max_concurrent_holders")
                        .count()
                        < EVIDENCE
                {
                    let new = counted[k];
                    if let Some(other) = inside
                        .iter()
                        .filter(|&&o| o != k)
                        .map(|&o| counted[o])
                        .next()
                    {
                        let until = other.write.map_or_else(
                            || format!("until it ended at {}", self.at(other.end_us)),
                            |w| format!("until its write at {}", self.at(w.at_us)),
                        );
                        evidence.push((
                            "max_concurrent_holders",
                            format!(
                                "instance {} read {} at {}{} while instance {} held since its read of {} at {}{}, {until}",
                                new.instance,
                                new.read.value,
                                self.at(new.read.at_us),
                                Self::token(new.read),
                                other.instance,
                                other.read.value,
                                self.at(other.read.at_us),
                                Self::token(other.read),
                            ),
                        ));
                    }
                }
                most = most.max(inside.len());
            } else {
                inside.remove(&k);
            }
        }

        let writes = accepted_writes.len() as i64;
        let summary = format!(
            "the ledger holds {} after {writes} accepted writes and {refused} refused accesses",
            self.value
        );
        evidence.push(("lost_updates", summary.clone()));
        evidence.push(("final_counter", summary));
        if let Some((since, stall, running)) = &self.stalled {
            let who: Vec<String> = running.iter().map(u32::to_string).collect();
            let mut line = format!(
                "no write was accepted for {:.1} s after {} while instance{} {} still ran",
                stall.as_secs_f64(),
                self.at(us(*since)),
                if who.len() == 1 { "" } else { "s" },
                who.join(", ")
            );
            let ended: Vec<String> = self
                .history
                .iter()
                .filter(|h| {
                    h.what == Lifecycle::Ended && us(h.at) <= us(*since) + stall.as_micros() as u64
                })
                .map(|h| format!("instance {} ended at {}", h.instance, self.at(us(h.at))))
                .collect();
            if !ended.is_empty() {
                line += &format!("; {}", ended.join(", "));
            }
            evidence.push(("stalled", line));
        }
        let obs = Observations::from([
            ("final_counter".into(), Value::from(self.value)),
            ("writes_accepted".into(), Value::from(writes)),
            ("lost_updates".into(), Value::from(writes - self.value)),
            ("fenced_rejections".into(), Value::from(refused)),
            ("max_concurrent_holders".into(), Value::from(most)),
            ("stale_writes".into(), Value::from(stale)),
            ("stalled".into(), Value::from(self.stalled.is_some())),
        ]);
        (obs, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000;

    fn e(
        seq: u64,
        ms: u64,
        instance: u32,
        op: Op,
        value: i64,
        token: Option<i64>,
        accepted: bool,
    ) -> Entry {
        Entry {
            seq,
            at_us: T0 + ms * 1000,
            instance: Some(instance),
            op,
            value,
            token,
            accepted,
        }
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(T0 + ms * 1000)
    }

    fn observe(
        entries: &[Entry],
        history: &[Happening],
    ) -> (Observations, Vec<(&'static str, String)>) {
        Record {
            t0: at(0),
            entries,
            value: entries
                .iter()
                .rev()
                .find(|e| e.op == Op::Write && e.accepted)
                .map_or(0, |e| e.value),
            history,
            stalled: None,
        }
        .observe()
    }

    #[test]
    fn serial_holders_are_exact() {
        use Op::*;
        let log = [
            e(0, 10, 1, Read, 0, Some(1), true),
            e(1, 20, 1, Write, 1, Some(1), true),
            e(2, 30, 2, Read, 1, Some(2), true),
            e(3, 40, 2, Write, 2, Some(2), true),
        ];
        let (obs, evidence) = observe(&log, &[]);
        assert_eq!(obs["final_counter"], 2);
        assert_eq!(obs["lost_updates"], 0);
        assert_eq!(obs["max_concurrent_holders"], 1);
        assert_eq!(obs["stale_writes"], 0);
        assert_eq!(obs["stalled"], false);
        assert!(
            evidence
                .iter()
                .all(|(o, _)| *o == "final_counter" || *o == "lost_updates")
        );
    }

    #[test]
    fn a_paused_holder_without_fencing_writes_stale_and_loses_updates() {
        use Op::*;
        let log = [
            e(0, 10, 1, Read, 0, None, true),
            e(1, 600, 2, Read, 0, None, true),
            e(2, 700, 2, Write, 1, None, true),
            e(3, 800, 3, Read, 1, None, true),
            e(4, 900, 3, Write, 2, None, true),
            e(5, 1840, 1, Write, 1, None, true),
        ];
        let history = [
            Happening {
                instance: 1,
                at: at(50),
                what: Lifecycle::Paused,
            },
            Happening {
                instance: 1,
                at: at(1830),
                what: Lifecycle::Resumed,
            },
        ];
        let (obs, evidence) = observe(&log, &history);
        assert_eq!(obs["writes_accepted"], 3);
        assert_eq!(obs["final_counter"], 1);
        assert_eq!(obs["lost_updates"], 2);
        assert_eq!(obs["stale_writes"], 1);
        // The paused window is left out: the others never overlapped.
        assert_eq!(obs["max_concurrent_holders"], 1);
        let stale: Vec<&String> = evidence
            .iter()
            .filter(|(o, _)| *o == "stale_writes")
            .map(|(_, w)| w)
            .collect();
        assert_eq!(
            stale,
            [
                "instance 1 read 0 at 0.01 s, was paused from 0.05 s to 1.83 s, and wrote 1 at 1.84 s, over instance 2's write of 1 at 0.70 s"
            ]
        );
    }

    #[test]
    fn fencing_refuses_the_paused_holder_and_overlaps_of_others_count() {
        use Op::*;
        let log = [
            e(0, 10, 1, Read, 0, Some(1), true),
            e(1, 600, 2, Read, 0, Some(2), true),
            e(2, 650, 3, Read, 0, Some(3), true),
            e(3, 700, 2, Write, 1, Some(2), false),
            e(4, 750, 3, Write, 1, Some(3), true),
            e(5, 1840, 1, Write, 1, Some(1), false),
        ];
        let history = [Happening {
            instance: 1,
            at: at(50),
            what: Lifecycle::Paused,
        }];
        let (obs, evidence) = observe(&log, &history);
        assert_eq!(obs["fenced_rejections"], 2);
        assert_eq!(obs["lost_updates"], 0);
        assert_eq!(obs["stale_writes"], 0);
        assert_eq!(obs["max_concurrent_holders"], 2, "2 and 3 both held");
        let line = &evidence
            .iter()
            .find(|(o, _)| *o == "max_concurrent_holders")
            .unwrap()
            .1;
        assert_eq!(
            line,
            "instance 3 read 0 at 0.65 s with token 3 while instance 2 held since its read of 0 at 0.60 s with token 2, until its write at 0.70 s"
        );
    }

    #[test]
    fn a_killed_holder_s_window_ends_with_it() {
        use Op::*;
        let log = [
            e(0, 10, 2, Read, 0, Some(1), true),
            e(1, 600, 1, Read, 0, Some(2), true),
            e(2, 700, 1, Write, 1, Some(2), true),
        ];
        let history = [Happening {
            instance: 2,
            at: at(40),
            what: Lifecycle::Ended,
        }];
        let (obs, _) = observe(&log, &history);
        assert_eq!(obs["max_concurrent_holders"], 1);
    }
}
