//! `sql-transfers`: concurrent money transfers between accounts in PostgreSQL,
//! under one isolation level and locking strategy.
//!
//! Each of `workers` connections runs `transfers` transfers between two random
//! accounts as a read-then-write: SELECT both balances, compute the new ones
//! in the client, UPDATE each with the computed value. Under READ COMMITTED
//! without locking two transfers can read the same balance and the later
//! write silently overwrites the earlier one (a lost update): money appears or
//! vanishes. `SELECT … FOR UPDATE` makes the second transfer wait for the
//! first; SERIALIZABLE (or REPEATABLE READ) lets both run and aborts one with
//! a serialization failure (SQLSTATE 40001), which the worker retries.
//!
//! Atomicity: with `fail_every: N` every Nth transfer debits the source and
//! then fails (`SELECT 1/0`) before crediting the destination. Inside a
//! transaction the debit is rolled back; with `transaction: false`
//! (autocommit) it stays, and the money is gone.
//!
//! Every figure is read back from the database, in the scenario's own table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};

/// The `sql-transfers` exercise.
pub struct SqlTransfers;

/// Counters shared by the workers.
#[derive(Default)]
struct Counts {
    committed: AtomicU64,
    declined: AtomicU64,
    serialization_failures: AtomicU64,
    deadlocks: AtomicU64,
    retries: AtomicU64,
    failed_midway: AtomicU64,
}

/// Settings of one run.
#[derive(Clone)]
struct Plan {
    table: String,
    accounts: i64,
    transfers: u64,
    max_amount: i64,
    think: Duration,
    begin: Option<&'static str>,
    for_update: bool,
    fail_every: u64,
}

#[async_trait]
impl Exercise for SqlTransfers {
    fn name(&self) -> &'static str {
        "sql-transfers"
    }

    fn summary(&self) -> &'static str {
        "concurrent read-then-write money transfers in PostgreSQL per isolation level and locking: lost updates, row locks, serialization failures, atomicity"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["postgres"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int(
                "accounts",
                2,
                10_000,
                10,
                "accounts, all starting with `initial_balance`",
            ),
            ParamSpec::int(
                "initial_balance",
                0,
                1_000_000_000,
                1000,
                "starting balance of each account",
            ),
            ParamSpec::int(
                "workers",
                1,
                64,
                8,
                "concurrent connections doing transfers",
            ),
            ParamSpec::int("transfers", 1, 100_000, 50, "transfers per worker"),
            ParamSpec::int(
                "max_amount",
                1,
                1_000_000,
                100,
                "a transfer moves 1 to max_amount",
            ),
            ParamSpec::int(
                "think_ms",
                0,
                1000,
                2,
                "pause between reading the balances and writing them (widens the race)",
            ),
            ParamSpec::choice(
                "isolation",
                &["read-committed", "repeatable-read", "serializable"],
                "read-committed",
                "transaction isolation level",
            ),
            ParamSpec::choice(
                "locking",
                &["none", "for-update"],
                "none",
                "`for-update`: the read is SELECT … FOR UPDATE (rows locked in id order)",
            ),
            ParamSpec::flag(
                "transaction",
                true,
                "false: every statement commits on its own (autocommit)",
            ),
            ParamSpec::int(
                "fail_every",
                0,
                100_000,
                0,
                "every Nth transfer of a worker fails after the debit, before the credit (0: never)",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("total_before", "sum of all balances before the transfers"),
                ObsSpec::number("total_after", "sum of all balances after them"),
                ObsSpec::number(
                    "money_created",
                    "|total_after − total_before|: money made or lost by the transfers",
                ),
                ObsSpec::flag("exact", "total_after == total_before"),
                ObsSpec::number(
                    "negative_balances",
                    "accounts below zero afterwards (overdrafts)",
                ),
                ObsSpec::number("committed", "transfers committed"),
                ObsSpec::number(
                    "declined",
                    "transfers declined for insufficient funds (as the transfer read them)",
                ),
                ObsSpec::number(
                    "serialization_failures",
                    "transactions aborted with SQLSTATE 40001 (could not serialize access)",
                ),
                ObsSpec::number(
                    "deadlocks",
                    "transactions aborted with SQLSTATE 40P01 (deadlock detected)",
                ),
                ObsSpec::number(
                    "retries",
                    "transfers run again after a serialization failure or deadlock",
                ),
                ObsSpec::number(
                    "failed_midway",
                    "transfers that failed after the debit (`fail_every`)",
                ),
                ObsSpec::number("tps", "committed transfers per second"),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("transfers-started", "the transfer workers start"),
                Milestone::new("transfers-finished", "every transfer worker ended"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let url = ctx.service("postgres")?.url.clone();
        let table = table_name(&ctx.namespace);
        let transaction = ctx.flag("transaction");
        let plan = Plan {
            table: table.clone(),
            accounts: ctx.int("accounts"),
            transfers: ctx.int("transfers") as u64,
            max_amount: ctx.int("max_amount"),
            think: Duration::from_millis(ctx.int("think_ms") as u64),
            begin: transaction.then(|| match ctx.text("isolation") {
                "serializable" => "BEGIN ISOLATION LEVEL SERIALIZABLE",
                "repeatable-read" => "BEGIN ISOLATION LEVEL REPEATABLE READ",
                _ => "BEGIN ISOLATION LEVEL READ COMMITTED",
            }),
            for_update: ctx.text("locking") == "for-update",
            fail_every: ctx.int("fail_every") as u64,
        };
        let workers = ctx.int("workers") as usize;

        let admin = connect(&url).await?;
        admin
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table};
                 CREATE TABLE {table} (id int PRIMARY KEY, balance bigint NOT NULL);
                 INSERT INTO {table} SELECT g, {} FROM generate_series(1, {}) g;",
                ctx.int("initial_balance"),
                plan.accounts
            ))
            .await
            .doing("creating the accounts")?;
        let total_before = total(&admin, &table).await?;

        let mut clients = Vec::new();
        for _ in 0..workers {
            clients.push(connect(&url).await?);
        }
        let counts = Arc::new(Counts::default());
        ctx.mark("transfers-started");
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (w, client) in clients.into_iter().enumerate() {
            let (plan, counts) = (plan.clone(), counts.clone());
            tasks.spawn(async move { worker(client, w as u64, plan, counts).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| ExerciseError(format!("a worker panicked: {e}")))??;
        }
        let wall = started.elapsed();
        ctx.mark("transfers-finished");

        let total_after = total(&admin, &table).await?;
        let negative: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE balance < 0"),
                &[],
            )
            .await
            .doing("counting negative balances")?
            .get(0);
        let _ = admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await;

        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        let committed = get(&counts.committed);
        Ok(Observations::from([
            ("total_before".into(), Value::from(total_before)),
            ("total_after".into(), Value::from(total_after)),
            (
                "money_created".into(),
                Value::from((total_after - total_before).abs()),
            ),
            ("exact".into(), Value::from(total_after == total_before)),
            ("negative_balances".into(), Value::from(negative)),
            ("committed".into(), Value::from(committed)),
            ("declined".into(), Value::from(get(&counts.declined))),
            (
                "serialization_failures".into(),
                Value::from(get(&counts.serialization_failures)),
            ),
            ("deadlocks".into(), Value::from(get(&counts.deadlocks))),
            ("retries".into(), Value::from(get(&counts.retries))),
            (
                "failed_midway".into(),
                Value::from(get(&counts.failed_midway)),
            ),
            (
                "tps".into(),
                Value::from(
                    (committed as f64 / wall.as_secs_f64().max(1e-9) * 10.0).round() / 10.0,
                ),
            ),
        ]))
    }
}

/// A table name unique to the scenario's namespace.
fn table_name(namespace: &str) -> String {
    let digest = Sha256::digest(namespace.as_bytes());
    format!("accounts_{}", hex::encode(&digest[..8]))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, ExerciseError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .doing("connecting to postgres")?;
    tokio::spawn(connection);
    Ok(client)
}

async fn total(client: &tokio_postgres::Client, table: &str) -> Result<i64, ExerciseError> {
    let row = client
        .query_one(
            &format!("SELECT COALESCE(sum(balance), 0)::bigint FROM {table}"),
            &[],
        )
        .await
        .doing("summing the balances")?;
    Ok(row.get(0))
}

/// A small deterministic generator per worker (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What one attempt at a transfer ended with.
enum Attempt {
    Committed,
    Declined,
    FailedMidway,
}

async fn worker(
    client: tokio_postgres::Client,
    w: u64,
    plan: Plan,
    counts: Arc<Counts>,
) -> Result<(), ExerciseError> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1).wrapping_mul(0x1234_5678_9abc_def1));
    for i in 1..=plan.transfers {
        let from = rng.below(plan.accounts as u64) as i32 + 1;
        let mut to = rng.below(plan.accounts as u64 - 1) as i32 + 1;
        if to >= from {
            to += 1;
        }
        let amount = rng.below(plan.max_amount as u64) as i64 + 1;
        let fail = plan.fail_every > 0 && i % plan.fail_every == 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match transfer(&client, &plan, from, to, amount, fail).await {
                Ok(Attempt::Committed) => {
                    counts.committed.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(Attempt::Declined) => {
                    counts.declined.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(Attempt::FailedMidway) => {
                    counts.failed_midway.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    if plan.begin.is_some() {
                        let _ = client.batch_execute("ROLLBACK").await;
                    }
                    let code = e.code();
                    if code == Some(&SqlState::T_R_SERIALIZATION_FAILURE) {
                        counts.serialization_failures.fetch_add(1, Ordering::SeqCst);
                    } else if code == Some(&SqlState::T_R_DEADLOCK_DETECTED) {
                        counts.deadlocks.fetch_add(1, Ordering::SeqCst);
                    } else {
                        return Err(ExerciseError(format!(
                            "worker {w}, transfer {i}: {}",
                            e.as_db_error()
                                .map(|d| d.message().to_string())
                                .unwrap_or_else(|| e.to_string())
                        )));
                    }
                    if attempts >= 1000 {
                        return Err(ExerciseError(format!(
                            "worker {w}: transfer {i} still failed after {attempts} attempts"
                        )));
                    }
                    counts.retries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.below(5) + 1)).await;
                }
            }
        }
    }
    Ok(())
}

/// One attempt: read both balances, think, write the computed ones.
async fn transfer(
    client: &tokio_postgres::Client,
    plan: &Plan,
    from: i32,
    to: i32,
    amount: i64,
    fail: bool,
) -> Result<Attempt, tokio_postgres::Error> {
    let t = &plan.table;
    if let Some(begin) = plan.begin {
        client.batch_execute(begin).await?;
    }
    let lock = if plan.for_update { " FOR UPDATE" } else { "" };
    let rows = client
        .query(
            &format!("SELECT id, balance FROM {t} WHERE id IN ($1, $2) ORDER BY id{lock}"),
            &[&from, &to],
        )
        .await?;
    let balance = |id: i32| {
        rows.iter()
            .find(|r| r.get::<_, i32>(0) == id)
            .map(|r| r.get::<_, i64>(1))
            .unwrap_or_default()
    };
    let (from_balance, to_balance) = (balance(from), balance(to));
    if from_balance < amount {
        if plan.begin.is_some() {
            client.batch_execute("COMMIT").await?;
        }
        return Ok(Attempt::Declined);
    }
    if !plan.think.is_zero() {
        tokio::time::sleep(plan.think).await;
    }
    let update = format!("UPDATE {t} SET balance = $2 WHERE id = $1");
    if fail {
        // The transfer breaks between the debit and the credit.
        client
            .execute(&update, &[&from, &(from_balance - amount)])
            .await?;
        if client.batch_execute("SELECT 1/0").await.is_err() {
            if plan.begin.is_some() {
                client.batch_execute("ROLLBACK").await?;
            }
            return Ok(Attempt::FailedMidway);
        }
        client
            .execute(&update, &[&to, &(to_balance + amount)])
            .await?;
    } else {
        // Rows written in id order: two transfers never wait for each other
        // crosswise (no deadlocks, each of which costs a 1 s detection).
        let mut writes = [(from, from_balance - amount), (to, to_balance + amount)];
        writes.sort();
        for (id, balance) in writes {
            client.execute(&update, &[&id, &balance]).await?;
        }
    }
    if plan.begin.is_some() {
        client.batch_execute("COMMIT").await?;
    }
    Ok(Attempt::Committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_parameters() {
        for p in SqlTransfers.params() {
            p.check(&p.default).unwrap();
        }
    }

    #[test]
    fn table_names_are_plain_identifiers_per_namespace() {
        let a = table_name("infralab:abc:naive");
        assert_ne!(a, table_name("infralab:abc:serializable"));
        assert!(a.len() < 63);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn the_generator_stays_in_range() {
        let mut rng = Rng(42);
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }
}
