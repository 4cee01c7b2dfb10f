//! `sql-transfers`: concurrent money transfers between accounts in PostgreSQL,
//! under one isolation level, locking strategy and way of writing.
//!
//! Each of `workers` connections runs `transfers` transfers between two random
//! accounts, written one of two ways:
//!
//! - `read-then-write`: SELECT both balances, compute the new ones in the
//!   client, UPDATE each with the computed value. Under READ COMMITTED
//!   without locking two transfers can read the same balance and the later
//!   write silently overwrites the earlier one (a lost update). `SELECT … FOR
//!   UPDATE` makes the second transfer wait for the first; REPEATABLE READ
//!   and SERIALIZABLE abort the second writer of a row changed since its
//!   snapshot ("could not serialize access due to concurrent update",
//!   SQLSTATE 40001), which the worker retries.
//! - `in-place`: `UPDATE … SET balance = balance - $1 WHERE id = $2 AND
//!   balance >= $1`, then the credit. The row lock taken by the UPDATE and
//!   the re-check of the condition on the newest row version make it exact
//!   under READ COMMITTED, with nothing to retry.
//!
//! Atomicity: with `fail_every: N` every Nth transfer debits the source and
//! then fails (`SELECT 1/0`) before crediting the destination. Inside a
//! transaction the debit is rolled back; with `transaction: false`
//! (autocommit) it stays, and the money is gone.
//!
//! Every figure is read back from the database, in the scenario's own tables:
//! each committed transfer also appends a ledger row in the same transaction,
//! so PostgreSQL can say which accounts disagree with their own history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::client::postgres::{connect, drop_tables, table_name, why};
use crate::stats::{join_workers, round2};

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

/// How a transfer writes the balances.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Read both balances, write the values computed in the client.
    ReadThenWrite,
    /// `SET balance = balance ± amount`: the server computes on the newest row.
    InPlace,
}

/// Settings of one run.
#[derive(Clone)]
struct Plan {
    accounts_table: String,
    ledger_table: String,
    accounts: i64,
    transfers: u64,
    max_amount: i64,
    think: Duration,
    begin: Option<&'static str>,
    for_update: bool,
    write: Write,
    fail_every: u64,
}

/// What PostgreSQL holds after the transfers.
struct ReadBack {
    total_after: i64,
    negative: i64,
    ledger_rows: i64,
    off_ledger: i64,
}

#[async_trait]
impl Exercise for SqlTransfers {
    fn name(&self) -> &'static str {
        "sql-transfers"
    }

    fn summary(&self) -> &'static str {
        "concurrent money transfers in PostgreSQL per isolation level, locking and way of writing: lost updates, row locks, serialization failures, atomicity"
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
                "read-then-write: pause between reading the balances and writing them (widens the race)",
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
            ParamSpec::choice(
                "write",
                &["read-then-write", "in-place"],
                "read-then-write",
                "`read-then-write`: SELECT, compute in the client, UPDATE with the value; `in-place`: UPDATE … SET balance = balance - amount WHERE balance >= amount",
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
                    "accounts_off_ledger",
                    "accounts whose balance differs from opening + credits − debits of the committed transfers in the ledger (lost updates)",
                ),
                ObsSpec::number(
                    "ledger_transfers",
                    "transfers PostgreSQL holds in the ledger (appended in each transfer's transaction)",
                ),
                ObsSpec::number(
                    "negative_balances",
                    "accounts below zero afterwards (overdrafts)",
                ),
                ObsSpec::number("committed", "transfers the workers saw commit"),
                ObsSpec::number(
                    "declined",
                    "transfers declined for insufficient funds (as the transfer saw them)",
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
        let plan = plan(ctx);
        let admin = connect(&url).await.doing("connecting to postgres")?;
        create_accounts(&admin, &plan, ctx.int("initial_balance")).await?;
        let total_before = total(&admin, &plan.accounts_table).await?;

        let counts = Arc::new(Counts::default());
        let wall = run_workers(ctx, &url, &plan, &counts).await?;

        let back = read_back(&admin, &plan).await?;
        drop_tables(&admin, &[&plan.accounts_table, &plan.ledger_table])
            .await
            .doing("dropping the tables")?;
        Ok(observe(total_before, &back, &counts, wall))
    }
}

/// The run's settings from the scenario's parameters.
fn plan(ctx: &Ctx) -> Plan {
    let transaction = ctx.flag("transaction");
    Plan {
        accounts_table: table_name("accounts", &ctx.namespace),
        ledger_table: table_name("ledger", &ctx.namespace),
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
        write: match ctx.text("write") {
            "in-place" => Write::InPlace,
            _ => Write::ReadThenWrite,
        },
        fail_every: ctx.int("fail_every") as u64,
    }
}

/// The accounts (each remembering its opening balance) and an empty ledger.
async fn create_accounts(admin: &Client, plan: &Plan, initial: i64) -> Result<(), ExerciseError> {
    let (accounts, ledger) = (&plan.accounts_table, &plan.ledger_table);
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {accounts}, {ledger};
             CREATE TABLE {accounts} (id int PRIMARY KEY, balance bigint NOT NULL, opening bigint NOT NULL);
             INSERT INTO {accounts} SELECT g, {initial}, {initial} FROM generate_series(1, {n}) g;
             CREATE TABLE {ledger} (src int NOT NULL, dst int NOT NULL, amount bigint NOT NULL);",
            n = plan.accounts
        ))
        .await
        .doing("creating the accounts")
}

/// Every worker on its own connection, started together; the wall time of
/// the transfers.
async fn run_workers(
    ctx: &Ctx,
    url: &str,
    plan: &Plan,
    counts: &Arc<Counts>,
) -> Result<Duration, ExerciseError> {
    let mut clients = Vec::new();
    for _ in 0..ctx.int("workers") {
        clients.push(connect(url).await.doing("connecting a worker")?);
    }
    ctx.mark("transfers-started");
    let started = Instant::now();
    let handles = clients
        .into_iter()
        .enumerate()
        .map(|(w, client)| {
            let (plan, counts) = (plan.clone(), counts.clone());
            tokio::spawn(async move { worker(client, w as u64, plan, counts).await })
        })
        .collect();
    join_workers(handles).await?;
    let wall = started.elapsed();
    ctx.mark("transfers-finished");
    Ok(wall)
}

async fn read_back(admin: &Client, plan: &Plan) -> Result<ReadBack, ExerciseError> {
    let (accounts, ledger) = (&plan.accounts_table, &plan.ledger_table);
    let row = admin
        .query_one(
            &format!(
                "SELECT
                   (SELECT COALESCE(sum(balance), 0)::bigint FROM {accounts}),
                   (SELECT count(*) FROM {accounts} WHERE balance < 0),
                   (SELECT count(*) FROM {ledger}),
                   (SELECT count(*) FROM {accounts} a WHERE a.balance <> a.opening
                      + COALESCE((SELECT sum(amount) FROM {ledger} WHERE dst = a.id), 0)
                      - COALESCE((SELECT sum(amount) FROM {ledger} WHERE src = a.id), 0))"
            ),
            &[],
        )
        .await
        .doing("reading the balances and the ledger back")?;
    Ok(ReadBack {
        total_after: row.get(0),
        negative: row.get(1),
        ledger_rows: row.get(2),
        off_ledger: row.get(3),
    })
}

fn observe(total_before: i64, back: &ReadBack, counts: &Counts, wall: Duration) -> Observations {
    let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
    let committed = get(&counts.committed);
    let total_after = back.total_after;
    Observations::from([
        ("total_before".into(), Value::from(total_before)),
        ("total_after".into(), Value::from(total_after)),
        (
            "money_created".into(),
            Value::from((total_after - total_before).abs()),
        ),
        ("exact".into(), Value::from(total_after == total_before)),
        ("accounts_off_ledger".into(), Value::from(back.off_ledger)),
        ("ledger_transfers".into(), Value::from(back.ledger_rows)),
        ("negative_balances".into(), Value::from(back.negative)),
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
            Value::from(round2(committed as f64 / wall.as_secs_f64().max(1e-9))),
        ),
    ])
}

async fn total(client: &Client, table: &str) -> Result<i64, ExerciseError> {
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

/// One transfer: source, destination, amount, and whether it breaks midway.
#[derive(Clone, Copy)]
struct Transfer {
    from: i32,
    to: i32,
    amount: i64,
    fail: bool,
}

async fn worker(
    client: Client,
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
        let t = Transfer {
            from,
            to,
            amount: rng.below(plan.max_amount as u64) as i64 + 1,
            fail: plan.fail_every > 0 && i % plan.fail_every == 0,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = match plan.write {
                Write::ReadThenWrite => read_then_write(&client, &plan, t).await,
                Write::InPlace => in_place(&client, &plan, t).await,
            };
            let counter = match outcome {
                Ok(Attempt::Committed) => &counts.committed,
                Ok(Attempt::Declined) => &counts.declined,
                Ok(Attempt::FailedMidway) => &counts.failed_midway,
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
                            why(&e)
                        )));
                    }
                    if attempts >= 1000 {
                        return Err(ExerciseError(format!(
                            "worker {w}: transfer {i} still failed after {attempts} attempts"
                        )));
                    }
                    counts.retries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.below(5) + 1)).await;
                    continue;
                }
            };
            counter.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    Ok(())
}

/// One attempt the naive way: read both balances, think, write the computed ones.
async fn read_then_write(
    client: &Client,
    plan: &Plan,
    t: Transfer,
) -> Result<Attempt, tokio_postgres::Error> {
    let table = &plan.accounts_table;
    if let Some(begin) = plan.begin {
        client.batch_execute(begin).await?;
    }
    let lock = if plan.for_update { " FOR UPDATE" } else { "" };
    let rows = client
        .query(
            &format!("SELECT id, balance FROM {table} WHERE id IN ($1, $2) ORDER BY id{lock}"),
            &[&t.from, &t.to],
        )
        .await?;
    let balance = |id: i32| {
        rows.iter()
            .find(|r| r.get::<_, i32>(0) == id)
            .map(|r| r.get::<_, i64>(1))
            .unwrap_or_default()
    };
    let (from_balance, to_balance) = (balance(t.from), balance(t.to));
    if from_balance < t.amount {
        finish(client, plan).await?;
        return Ok(Attempt::Declined);
    }
    if !plan.think.is_zero() {
        tokio::time::sleep(plan.think).await;
    }
    let update = format!("UPDATE {table} SET balance = $2 WHERE id = $1");
    let mut writes = [
        (t.from, from_balance - t.amount),
        (t.to, to_balance + t.amount),
    ];
    if !t.fail {
        // Rows written in id order: two transfers never wait for each other
        // crosswise (no deadlocks, each of which costs a 1 s detection).
        writes.sort();
    }
    client
        .execute(&update, &[&writes[0].0, &writes[0].1])
        .await?;
    if t.fail && breaks_midway(client, plan).await? {
        return Ok(Attempt::FailedMidway);
    }
    client
        .execute(&update, &[&writes[1].0, &writes[1].1])
        .await?;
    record(client, plan, t).await?;
    finish(client, plan).await?;
    Ok(Attempt::Committed)
}

/// One attempt the simple, safe way: each UPDATE computes the new balance
/// from the row as it is when the row lock is granted; the debit only
/// happens while the balance covers it. No read, nothing to lose, nothing to
/// retry under READ COMMITTED.
async fn in_place(
    client: &Client,
    plan: &Plan,
    t: Transfer,
) -> Result<Attempt, tokio_postgres::Error> {
    let table = &plan.accounts_table;
    if let Some(begin) = plan.begin {
        client.batch_execute(begin).await?;
    }
    let debit =
        format!("UPDATE {table} SET balance = balance - $2 WHERE id = $1 AND balance >= $2");
    let credit = format!("UPDATE {table} SET balance = balance + $2 WHERE id = $1");
    // In a transaction, rows are locked in id order (no deadlocks); in
    // autocommit, the debit goes first so a declined transfer credits nothing.
    let debit_first = t.fail || plan.begin.is_none() || t.from < t.to;
    if debit_first {
        if client.execute(&debit, &[&t.from, &t.amount]).await? == 0 {
            finish(client, plan).await?;
            return Ok(Attempt::Declined);
        }
        if t.fail && breaks_midway(client, plan).await? {
            return Ok(Attempt::FailedMidway);
        }
        client.execute(&credit, &[&t.to, &t.amount]).await?;
    } else {
        client.execute(&credit, &[&t.to, &t.amount]).await?;
        if client.execute(&debit, &[&t.from, &t.amount]).await? == 0 {
            // Inside a transaction: the credit goes with the rollback.
            client.batch_execute("ROLLBACK").await?;
            return Ok(Attempt::Declined);
        }
    }
    record(client, plan, t).await?;
    finish(client, plan).await?;
    Ok(Attempt::Committed)
}

/// The injected failure between the debit and the credit: `SELECT 1/0`, then
/// ROLLBACK inside a transaction. True when the failure happened.
async fn breaks_midway(client: &Client, plan: &Plan) -> Result<bool, tokio_postgres::Error> {
    if client.batch_execute("SELECT 1/0").await.is_err() {
        if plan.begin.is_some() {
            client.batch_execute("ROLLBACK").await?;
        }
        return Ok(true);
    }
    Ok(false)
}

/// Appends the transfer to the ledger (inside the transfer's transaction).
async fn record(client: &Client, plan: &Plan, t: Transfer) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "INSERT INTO {} (src, dst, amount) VALUES ($1, $2, $3)",
                plan.ledger_table
            ),
            &[&t.from, &t.to, &t.amount],
        )
        .await
        .map(drop)
}

async fn finish(client: &Client, plan: &Plan) -> Result<(), tokio_postgres::Error> {
    if plan.begin.is_some() {
        client.batch_execute("COMMIT").await?;
    }
    Ok(())
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
    fn the_generator_stays_in_range() {
        let mut rng = Rng(42);
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }
}
