//! `mode: election`: leader election for application instances over etcd
//! leases, and fencing by the leader key's revision.
//!
//! `candidates` instances each hold a lease of `ttl_s` seconds, renewed every
//! third of it, and campaign by creating one key on their lease in a
//! transaction that succeeds only while the key is absent. The winner is the
//! leader; its key's create revision is its term. The leader writes one work
//! item every `work_ms`, each with `fencing: true` in a transaction that
//! holds only while the leader key still has that create revision.
//!
//! After `work_before` items the leader freezes (no renewals, no work), as a
//! process does in a long GC pause or when its VM is suspended: until
//! another candidate has won (`freeze: past-lease`, at least `freeze_ms`)
//! or for `freeze_ms` exactly (`freeze: fixed`). It does not know it was
//! frozen: it then sends `late_writes` more items as if it still led. If the
//! freeze outlasted its lease, etcd deleted its key, another candidate won,
//! and those late items are either refused by the fence or land among the
//! new leader's (`fencing: false`).
//!
//! What counts is what etcd stored: the work items in revision order, each
//! naming its writer and term.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use super::{Cluster, deadline, wait};
use crate::client::etcd::{Etcd, Read};
use crate::exercise::{Ctx, ExerciseError, Observations};
use crate::stats::round2;

/// What one candidate did, as its own log.
#[derive(Default)]
struct Log {
    /// Each campaign won, in order.
    wins: Vec<Win>,
    /// When the frozen leader's freeze began.
    frozen_at: Option<Duration>,
    /// Late items the frozen leader sent: accepted / refused by the fence.
    late_accepted: usize,
    late_refused: usize,
    late_unanswered: usize,
}

/// One campaign won.
struct Win {
    /// When, since the exercise began.
    at: Duration,
    /// The winner's term: its leader key's create revision.
    term: i64,
}

/// Runs the election and returns its observations.
pub(super) async fn run(ctx: &Ctx, cluster: &Cluster) -> Result<Observations, ExerciseError> {
    let clients: Vec<Etcd> = cluster.members.values().cloned().collect();
    let clock = Instant::now();
    let log = Arc::new(Mutex::new(Log::default()));
    let (stop, stopped) = watch::channel(false);
    let setup = Setup {
        key: format!("{}/leader", ctx.namespace),
        work: format!("{}/work/", ctx.namespace),
        ttl_s: ctx.int("ttl_s"),
        work_every: Duration::from_millis(ctx.int("work_ms") as u64),
        work_before: ctx.int("work_before") as usize,
        freeze: Duration::from_millis(ctx.int("freeze_ms") as u64),
        late_writes: ctx.int("late_writes") as usize,
        fencing: ctx.flag("fencing"),
        past_lease: ctx.text("freeze") == "past-lease",
    };
    let frozen = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..ctx.int("candidates") as usize {
        let etcd = clients[id % clients.len()].clone();
        tasks.push(tokio::spawn(candidate(
            id,
            etcd,
            setup.clone(),
            clock,
            log.clone(),
            frozen.clone(),
            stopped.clone(),
            ctx.timeline(),
        )));
    }

    // The end is an event: the frozen leader has sent its late items and a
    // later leader has written `work_before` items of its own (or the freeze
    // did not cost the lease and the first leader wrote them itself).
    let until = Instant::now() + deadline(ctx);
    let done = || {
        let log = log.lock().expect("log");
        log.late_accepted + log.late_refused + log.late_unanswered >= setup.late_writes
    };
    wait(until, done).await;
    let wanted = setup.work_before;
    let reader = clients[0].clone();
    let mut items = Vec::new();
    while Instant::now() < until {
        items = items_in_order(&reader, &setup.work)
            .await
            .unwrap_or_default();
        let after_freeze = items.iter().rev().take_while(|i| !i.late).count();
        if after_freeze >= wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let items = items_in_order(&reader, &setup.work).await.unwrap_or(items);
    Ok(observe(ctx, &log.lock().expect("log"), &items))
}

#[derive(Clone)]
struct Setup {
    key: String,
    work: String,
    ttl_s: i64,
    work_every: Duration,
    work_before: usize,
    freeze: Duration,
    late_writes: usize,
    fencing: bool,
    past_lease: bool,
}

/// One work item as etcd stored it.
#[derive(Debug, Clone)]
struct Item {
    writer: usize,
    term: i64,
    late: bool,
    /// The revision at which etcd stored it.
    revision: i64,
}

#[allow(clippy::too_many_arguments)]
async fn candidate(
    id: usize,
    etcd: Etcd,
    s: Setup,
    clock: Instant,
    log: Arc<Mutex<Log>>,
    frozen: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
    timeline: crate::exercise::Timeline,
) {
    let mut seq = 0usize;
    while !*stop.borrow() {
        let Ok(lease) = etcd.grant(s.ttl_s).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let me = format!("candidate-{id}");
        // Campaign until elected (or stopped), renewing the lease meanwhile.
        let term = loop {
            if *stop.borrow() {
                return;
            }
            if let Ok(true) = etcd.create(&s.key, &me, lease).await
                && let Ok(Some(kv)) = etcd.get(&s.key, Read::Linearizable).await
                && kv.value == me
            {
                break kv.create_revision;
            }
            let _ = etcd.keep_alive(lease).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => return,
            }
        };
        log.lock().expect("log").wins.push(Win {
            at: clock.elapsed(),
            term,
        });
        // Context in the timeline, not a milestone a fault could wait for.
        timeline.record("election", format!("elected candidate-{id}"));

        // Lead: renew and work until the fence refuses (deposed) or stopped.
        let renew_every = Duration::from_millis((s.ttl_s as u64 * 1000) / 3);
        let mut renewed = Instant::now();
        let mut written = 0usize;
        loop {
            if *stop.borrow() {
                return;
            }
            // Only the first leader to get this far freezes, once.
            if written == s.work_before && !frozen.swap(true, Ordering::SeqCst) {
                log.lock().expect("log").frozen_at = Some(clock.elapsed());
                timeline.record("exercise", "leader-frozen");
                tokio::time::sleep(s.freeze).await;
                if s.past_lease {
                    // A pause that outlasts the lease, however long etcd
                    // keeps it (an etcd election extends every lease): it
                    // ends once another candidate has won.
                    let wins = log.lock().expect("log").wins.len();
                    while log.lock().expect("log").wins.len() == wins {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
                timeline.record("exercise", "leader-thawed");
                // Unaware of the freeze, it goes on as the leader it was.
                for _ in 0..s.late_writes {
                    seq += 1;
                    let answer = write_item(&etcd, &s, id, term, seq, true).await;
                    let mut l = log.lock().expect("log");
                    match answer {
                        Some(true) => l.late_accepted += 1,
                        Some(false) => l.late_refused += 1,
                        None => l.late_unanswered += 1,
                    }
                }
                renewed = Instant::now() - renew_every;
            }
            if renewed.elapsed() >= renew_every {
                // A lease that lapsed (TTL 0, or gone) ends the term: a
                // careful leader stops here, at its next renewal.
                match etcd.keep_alive(lease).await {
                    Ok(ttl) if ttl > 0 => renewed = Instant::now(),
                    _ => break,
                }
            }
            seq += 1;
            match write_item(&etcd, &s, id, term, seq, false).await {
                Some(true) => written += 1,
                Some(false) => break, // deposed: campaign again with a new lease
                None => {}            // no answer: try again after the pause
            }
            tokio::select! {
                _ = tokio::time::sleep(s.work_every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// One work item; with fencing only while the leader key still has `term`
/// as its create revision. Some(true): stored; Some(false): refused by the
/// fence. A request that got no answer (an etcd election in between, say)
/// is sent again, a few times, so only the fence decides.
async fn write_item(
    etcd: &Etcd,
    s: &Setup,
    id: usize,
    term: i64,
    seq: usize,
    late: bool,
) -> Option<bool> {
    let key = format!("{}{id:02}-{seq:06}", s.work);
    let value = format!("{id} {term} {}", if late { "late" } else { "on-time" });
    for _ in 0..5 {
        let answer = if s.fencing {
            etcd.put_if_created_at(&s.key, term, &key, &value).await
        } else {
            etcd.put(&key, &value).await.map(|_| true)
        };
        if let Ok(stored) = answer {
            return Some(stored);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The work items in the order etcd stored them (by revision).
async fn items_in_order(etcd: &Etcd, prefix: &str) -> Option<Vec<Item>> {
    let mut kvs = etcd.get_prefix(prefix, Read::Linearizable).await.ok()?;
    kvs.sort_by_key(|kv| kv.mod_revision);
    Some(
        kvs.into_iter()
            .filter_map(|kv| {
                let revision = kv.mod_revision;
                let mut parts = kv.value.split(' ');
                Some(Item {
                    writer: parts.next()?.parse().ok()?,
                    term: parts.next()?.parse().ok()?,
                    late: parts.next()? == "late",
                    revision,
                })
            })
            .collect(),
    )
}

fn observe(ctx: &Ctx, log: &Log, items: &[Item]) -> Observations {
    let mut obs = Observations::new();
    let terms: BTreeSet<i64> = items.iter().map(|i| i.term).collect();
    obs.insert("leaders_elected".into(), Value::from(log.wins.len()));
    obs.insert("terms_in_store".into(), Value::from(terms.len()));
    // A deposed leader's item: stored at a revision after a newer term
    // began (a later leader's key was created), whether or not that leader
    // had written anything yet.
    let mut deposed = 0;
    for item in items {
        let newer = log
            .wins
            .iter()
            .map(|w| w.term)
            .filter(|t| *t > item.term && *t < item.revision)
            .max();
        if let Some(newer) = newer {
            deposed += 1;
            ctx.evidence(
                "writes_by_deposed",
                format!(
                    "candidate-{} wrote in term {} at revision {}, after term {newer} had begun",
                    item.writer, item.term, item.revision
                ),
            );
        }
    }
    obs.insert("writes_by_deposed".into(), Value::from(deposed));
    obs.insert(
        "late_writes_accepted".into(),
        Value::from(log.late_accepted),
    );
    obs.insert("late_writes_refused".into(), Value::from(log.late_refused));
    if let Some(frozen) = log.frozen_at
        && let Some(at) = log.wins.iter().map(|w| w.at).find(|at| *at > frozen)
    {
        let ms = at.saturating_sub(frozen).as_secs_f64() * 1000.0;
        obs.insert("failover_ms".into(), Value::from(round2(ms)));
    }
    obs
}
