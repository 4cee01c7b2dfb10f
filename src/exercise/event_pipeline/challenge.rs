//! The harness of the event-driven-pipeline challenge: the learner's
//! consumer between Kafka and PostgreSQL. The harness produces the orders
//! (a backlog, acknowledged by the broker) before the program starts, then
//! follows two records it can read on its own: the charge rows in the
//! database and the group's committed offsets in Kafka. Faults kill the
//! program between its charges and its commits, and start it again; the
//! verdict is the database against the orders: none missing, none charged
//! twice. What the program prints decides nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::super::{Context, Ctx, ExerciseError, Observations};
use super::amount;
use crate::challenge::{Happening, Lifecycle, Solution};
use crate::client::kafka::{self, Outgoing};

/// How often the charges are counted while the program runs.
const POLL: Duration = Duration::from_millis(10);

/// How often the committed offsets are read.
const OFFSETS_EVERY: Duration = Duration::from_millis(200);

/// Once every offset is committed, the rows may still be settling (a
/// consumer that commits first writes after): this long without a new row
/// ends the run.
const SETTLE: Duration = Duration::from_secs(1);

/// Counts of charged orders that are milestones (`charged-N`).
const MILESTONES: [i64; 5] = [10, 30, 50, 70, 90];

/// Evidence lines kept per observation.
const EVIDENCE: usize = 3;

/// Produces the backlog, runs the program until every order is charged and
/// every offset committed (or it stalls), then observes the database.
pub(super) async fn run(
    ctx: &Ctx,
    solution: &Arc<Solution>,
) -> Result<Observations, ExerciseError> {
    let bootstrap = ctx.service("kafka")?.url.clone();
    let topic = kafka::topic_name(&ctx.namespace, "orders");
    let group = kafka::topic_name(&ctx.namespace, "charger");
    let table = table_name(&ctx.namespace);
    let partitions = ctx.int("partitions") as i32;
    let (db, connection) =
        tokio_postgres::connect(&ctx.service("postgres")?.url, tokio_postgres::NoTls)
            .await
            .doing("connecting to postgres")?;
    let connection = tokio::spawn(connection);
    drop_tables(&db, &table).await?;
    db.batch_execute(&format!(
        "CREATE TABLE {table} (order_id bigint NOT NULL, customer int NOT NULL, amount bigint NOT NULL,
                               instance int, charged_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ))
    .await
    .doing("creating the charges table")?;
    kafka::create_topic(&bootstrap, &topic, partitions).await?;
    let sent = produce(ctx, &bootstrap, &topic).await?;
    ctx.mark("produced");

    let t0 = ctx.timeline().started_at();
    solution
        .start(&[
            ("ORDERS_TOPIC", topic.clone()),
            ("KAFKA_GROUP", group.clone()),
            ("CHARGES_TABLE", table.clone()),
        ])
        .await
        .map_err(ExerciseError)?;
    let follow = Follow {
        ctx,
        db: &db,
        table: &table,
        bootstrap: &bootstrap,
        topic: &topic,
        group: &group,
        partitions,
        sent,
    };
    let stalled = follow.run(solution).await?;
    solution.stop().await;

    let rows = charges(&db, &table).await?;
    drop_tables(&db, &table).await?;
    drop(db);
    let _ = connection.await;
    let _ = kafka::delete_topic(&bootstrap, &topic).await;
    let record = Record {
        t0,
        sent,
        rows: &rows,
        history: &solution.history(),
        stalled,
    };
    let (obs, evidence) = record.observe();
    for (name, what) in evidence {
        ctx.evidence(name, what);
    }
    Ok(obs)
}

/// The charges table's name, from the namespace (identifiers stay short).
fn table_name(namespace: &str) -> String {
    let digest = hex::encode(Sha256::digest(namespace.as_bytes()));
    format!("charges_{}", &digest[..12])
}

/// Drops the charges table and every table of the program's whose name
/// starts with it.
async fn drop_tables(db: &tokio_postgres::Client, table: &str) -> Result<(), ExerciseError> {
    let names: Vec<String> = db
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1",
            &[&format!("{table}%")],
        )
        .await
        .doing("listing the challenge's tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in names {
        db.batch_execute(&format!("DROP TABLE IF EXISTS \"{name}\" CASCADE"))
            .await
            .doing("dropping the challenge's tables")?;
    }
    Ok(())
}

/// The orders, as JSON, keyed by customer; how many the broker acknowledged.
async fn produce(ctx: &Ctx, bootstrap: &str, topic: &str) -> Result<u64, ExerciseError> {
    let producer = kafka::producer(bootstrap)?;
    let customers = ctx.int("customers") as u64;
    kafka::produce(&producer, topic, ctx.int("orders") as u64, 0, |id| {
        let customer = id % customers;
        Outgoing {
            key: Some(format!("customer-{customer}")),
            partition: None,
            payload: serde_json::json!({
                "order": id,
                "customer": customer,
                "amount": amount(id),
            })
            .to_string(),
        }
    })
    .await
}

/// What the harness follows while the program runs.
struct Follow<'a> {
    ctx: &'a Ctx,
    db: &'a tokio_postgres::Client,
    table: &'a str,
    bootstrap: &'a str,
    topic: &'a str,
    group: &'a str,
    partitions: i32,
    sent: u64,
}

impl Follow<'_> {
    /// Counts charges and reads committed offsets until every order is
    /// charged and committed, or everything is committed and the rows
    /// settled, or nothing changed for `stall_ms`. Marks `charged-N` on
    /// the way. Returns when it stalled, if it did.
    async fn run(&self, solution: &Solution) -> Result<Option<SystemTime>, ExerciseError> {
        let stall = Duration::from_millis(self.ctx.int("stall_ms") as u64);
        let mut marked = 0;
        let (mut last_rows, mut last_committed) = (-1, -1);
        let mut last_row_change = tokio::time::Instant::now();
        let mut last_change = tokio::time::Instant::now();
        let mut offsets_read = tokio::time::Instant::now() - OFFSETS_EVERY;
        let mut committed = 0;
        let mut ended_since = None;
        let sent = self.sent as i64;
        loop {
            let (rows, distinct) = self.count().await?;
            while marked < MILESTONES.len() && distinct >= MILESTONES[marked] {
                let by = self.instance_of(MILESTONES[marked]).await?;
                self.mark_mid_work(format!("charged-{}", MILESTONES[marked]), by);
                marked += 1;
            }
            if offsets_read.elapsed() >= OFFSETS_EVERY {
                committed = self.committed().await?;
                offsets_read = tokio::time::Instant::now();
            }
            if rows != last_rows {
                last_row_change = tokio::time::Instant::now();
            }
            if rows != last_rows || committed != last_committed {
                (last_rows, last_committed) = (rows, committed);
                last_change = tokio::time::Instant::now();
            }
            let all_committed = committed >= sent;
            if all_committed && (distinct >= sent || last_row_change.elapsed() > SETTLE) {
                return Ok(None);
            }
            // Every instance gone, and no fault started one again since.
            match (solution.all_ended(), ended_since) {
                (true, None) => ended_since = Some(tokio::time::Instant::now()),
                (true, Some(t)) if t.elapsed() > SETTLE * 5 => return Ok(None),
                (false, _) => ended_since = None,
                _ => {}
            }
            if last_change.elapsed() > stall {
                return Ok(Some(SystemTime::now() - last_change.elapsed()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Records `name` half of `work_ms` after now: a consumer that just
    /// wrote a charge is then inside the next order's work, between
    /// whatever it does before the work and the write after it, which is
    /// where a kill tells the commit's place apart.
    fn mark_mid_work(&self, name: String, by: Option<u32>) {
        let half = Duration::from_millis(self.ctx.int("work_ms") as u64 / 2);
        let timeline = self.ctx.timeline();
        tokio::spawn(async move {
            tokio::time::sleep(half).await;
            match by {
                Some(i) => timeline.record_by("exercise", name, i),
                None => timeline.record("exercise", name),
            }
        });
    }

    async fn count(&self) -> Result<(i64, i64), ExerciseError> {
        let row = self
            .db
            .query_one(
                &format!(
                    "SELECT count(*), count(DISTINCT order_id) FROM {}",
                    self.table
                ),
                &[],
            )
            .await
            .doing("counting the charges")?;
        Ok((row.get(0), row.get(1)))
    }

    /// The instance that wrote the `n`-th first charge of an order.
    async fn instance_of(&self, n: i64) -> Result<Option<u32>, ExerciseError> {
        let row = self
            .db
            .query_opt(
                &format!(
                    "SELECT instance FROM (SELECT DISTINCT ON (order_id) instance, charged_at FROM {}
                       ORDER BY order_id, charged_at) firsts ORDER BY charged_at OFFSET $1 LIMIT 1",
                    self.table
                ),
                &[&(n - 1)],
            )
            .await
            .doing("finding who charged an order")?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i32>>(0))
            .and_then(|i| u32::try_from(i).ok()))
    }

    /// Offsets the group has committed, summed over the partitions (each
    /// the next offset to read, so the sum is the messages done).
    async fn committed(&self) -> Result<i64, ExerciseError> {
        let (bootstrap, topic, group, partitions) = (
            self.bootstrap.to_string(),
            self.topic.to_string(),
            self.group.to_string(),
            self.partitions,
        );
        tokio::task::spawn_blocking(move || -> Result<i64, ExerciseError> {
            let client: BaseConsumer = kafka::client_config(&bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .doing("creating an offsets client")?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let got = client
                .committed_offsets(tpl, Duration::from_secs(5))
                .doing("reading the committed offsets")?;
            Ok(got
                .elements()
                .iter()
                .filter_map(|e| e.offset().to_raw())
                .filter(|o| *o > 0)
                .sum())
        })
        .await
        .doing("reading the committed offsets")?
    }
}

/// One charge row.
struct Charge {
    order: i64,
    amount: i64,
    instance: Option<i32>,
    at: SystemTime,
}

async fn charges(db: &tokio_postgres::Client, table: &str) -> Result<Vec<Charge>, ExerciseError> {
    let rows = db
        .query(
            &format!(
                "SELECT order_id, amount, instance,
                        (extract(epoch FROM charged_at) * 1000000)::bigint FROM {table} ORDER BY charged_at"
            ),
            &[],
        )
        .await
        .doing("reading the charges")?;
    Ok(rows
        .iter()
        .map(|r| Charge {
            order: r.get(0),
            amount: r.get(1),
            instance: r.get(2),
            at: UNIX_EPOCH + Duration::from_micros(r.get::<_, i64>(3).max(0) as u64),
        })
        .collect())
}

/// Everything the harness read, for [`Record::observe`].
struct Record<'a> {
    t0: SystemTime,
    sent: u64,
    rows: &'a [Charge],
    history: &'a [Happening],
    stalled: Option<SystemTime>,
}

impl Record<'_> {
    fn at(&self, t: SystemTime) -> String {
        let s = t.duration_since(self.t0).map_or(0.0, |d| d.as_secs_f64());
        format!("{s:.2} s")
    }

    /// The program's ends and starts between `from` and `to`, in words.
    fn lifecycle_between(&self, from: SystemTime, to: SystemTime) -> Vec<String> {
        self.history
            .iter()
            .filter(|h| h.at >= from && h.at <= to)
            .filter_map(|h| match h.what {
                Lifecycle::Ended => Some(format!(
                    "instance {} ended at {}",
                    h.instance,
                    self.at(h.at)
                )),
                Lifecycle::Started => Some(format!(
                    "instance {} started at {}",
                    h.instance,
                    self.at(h.at)
                )),
                _ => None,
            })
            .collect()
    }

    fn observe(&self) -> (Observations, Vec<(&'static str, String)>) {
        let mut per_order: BTreeMap<i64, Vec<&Charge>> = BTreeMap::new();
        for c in self.rows {
            per_order.entry(c.order).or_default().push(c);
        }
        let sent = self.sent as i64;
        let missing: Vec<i64> = (0..sent).filter(|o| !per_order.contains_key(o)).collect();
        let expected: i64 = (0..self.sent).map(amount).sum();
        let charged: i64 = self.rows.iter().map(|c| c.amount).sum();
        let rows = self.rows.len() as i64;
        let mut evidence = Vec::new();
        for (order, times) in per_order.iter().filter(|(_, v)| v.len() > 1).take(EVIDENCE) {
            let when: Vec<String> = times
                .iter()
                .map(|c| {
                    format!(
                        "by instance {} at {}",
                        c.instance.map_or("?".into(), |i| i.to_string()),
                        self.at(c.at)
                    )
                })
                .collect();
            let mut line = format!(
                "order {order} was charged {} times: {}",
                times.len(),
                when.join(", ")
            );
            let between = self.lifecycle_between(times[0].at, times[times.len() - 1].at);
            if !between.is_empty() {
                line += &format!("; {}", between.join(", "));
            }
            evidence.push(("duplicates_applied", line));
        }
        let end = self.rows.last().map_or(self.t0, |c| c.at);
        for order in missing.iter().take(EVIDENCE) {
            let mut line =
                format!("order {order} was acknowledged by the broker and never charged");
            let kills: Vec<String> = self
                .lifecycle_between(self.t0, end)
                .into_iter()
                .filter(|l| l.contains(" ended at "))
                .collect();
            if !kills.is_empty() {
                line += &format!("; {}", kills.join(", "));
            }
            evidence.push(("missing", line));
        }
        if let Some(since) = self.stalled {
            evidence.push((
                "missing",
                format!(
                    "no new charge or commit after {} (the last charge at {}): the harness stopped the program",
                    self.at(since),
                    self.at(end)
                ),
            ));
        }
        let duplicates = rows - per_order.len() as i64;
        let summary = format!(
            "{rows} rows for {} orders charged of {sent} sent; {charged} charged of {expected}",
            per_order.len()
        );
        evidence.push(("exact", summary));
        let obs = Observations::from([
            ("orders_sent".into(), Value::from(self.sent)),
            ("rows".into(), Value::from(rows)),
            ("duplicates_applied".into(), Value::from(duplicates)),
            ("missing".into(), Value::from(missing.len())),
            ("charged_total".into(), Value::from(charged)),
            ("expected_total".into(), Value::from(expected)),
            ("overcharge".into(), Value::from(charged - expected)),
            (
                "exact".into(),
                Value::from(duplicates == 0 && missing.is_empty() && charged == expected),
            ),
        ]);
        (obs, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_millis(ms)
    }

    fn charge(order: i64, ms: u64) -> Charge {
        Charge {
            order,
            amount: amount(order as u64),
            instance: Some(1),
            at: at(ms),
        }
    }

    fn observe(
        rows: &[Charge],
        history: &[Happening],
    ) -> (Observations, Vec<(&'static str, String)>) {
        Record {
            t0: at(0),
            sent: 4,
            rows,
            history,
            stalled: None,
        }
        .observe()
    }

    #[test]
    fn one_row_per_order_is_exact() {
        let rows: Vec<Charge> = (0..4).map(|o| charge(o, 100 + o as u64)).collect();
        let (obs, _) = observe(&rows, &[]);
        assert_eq!(obs["exact"], true);
        assert_eq!(obs["missing"], 0);
        assert_eq!(obs["duplicates_applied"], 0);
        assert_eq!(obs["overcharge"], 0);
    }

    #[test]
    fn a_second_charge_after_a_kill_is_the_evidence() {
        let rows = vec![
            charge(0, 100),
            charge(1, 200),
            charge(1, 900),
            charge(2, 950),
            charge(3, 960),
        ];
        let history = [Happening {
            instance: 1,
            at: at(500),
            what: Lifecycle::Ended,
        }];
        let (obs, evidence) = observe(&rows, &history);
        assert_eq!(obs["duplicates_applied"], 1);
        assert_eq!(obs["overcharge"], amount(1));
        assert_eq!(obs["exact"], false);
        assert_eq!(
            evidence[0].1,
            "order 1 was charged 2 times: by instance 1 at 0.20 s, by instance 1 at 0.90 s; instance 1 ended at 0.50 s"
        );
    }

    #[test]
    fn an_order_never_charged_is_missing() {
        let rows = vec![charge(0, 100), charge(2, 200), charge(3, 300)];
        let (obs, evidence) = observe(&rows, &[]);
        assert_eq!(obs["missing"], 1);
        assert!(
            evidence
                .iter()
                .any(|(o, l)| *o == "missing" && l.starts_with("order 1 was"))
        );
    }

    #[test]
    fn table_names_are_short_and_per_namespace() {
        let a = table_name("infralab:1:a");
        assert_eq!(a.len(), "charges_".len() + 12);
        assert_ne!(a, table_name("infralab:1:b"));
    }
}
