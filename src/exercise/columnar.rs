//! `columnar`: the same synthetic table of `rows` rows in PostgreSQL (rows
//! in heap pages) and ClickHouse (a MergeTree: one compressed file per
//! column, sorted by `id`), then an aggregate over one column, point lookups
//! by key and the size on disk, each as the servers report them.
//!
//! Both tables are made by the servers themselves (`generate_series`,
//! `numbers`) with the same values: `id`, `user_id`, `amount`, `category`,
//! `note`. They are loaded once per lab run and size (the next scenario
//! reuses them). `ch_layout: blob` stores each ClickHouse row as one JSON
//! string instead of columns: a column store used as a row store.
//!
//! Bytes read: PostgreSQL's buffers touched by the query (`EXPLAIN (ANALYZE,
//! BUFFERS)`, shared hit + read, times its block size), ClickHouse's
//! `read_bytes` of the query in `system.query_log` (uncompressed).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, Exercise, ExerciseError, ObsSpec, Observations, ParamSpec};
use crate::client::clickhouse::{ClickHouse, number};
use crate::client::postgres::{block_size, connect, explain, pages_touched, why};
use crate::stats::{percentile_ms, ratio};

/// The `columnar` exercise.
pub struct Columnar;

/// The two servers and the table on each.
struct Tables<'a> {
    pg: &'a tokio_postgres::Client,
    ch: &'a ClickHouse,
    table: &'a str,
    ch_table: &'a str,
}

/// How long ClickHouse may take to log a finished query.
const LOG_WAIT: Duration = Duration::from_secs(20);

/// How long one ClickHouse query (the load included) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);

#[async_trait]
impl Exercise for Columnar {
    fn name(&self) -> &'static str {
        "columnar"
    }

    fn summary(&self) -> &'static str {
        "one table in PostgreSQL and in ClickHouse: an aggregate over one column, point lookups by key, and the bytes each server reads and stores"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["postgres", "clickhouse"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("rows", 1_000, 100_000_000, 2_000_000, "rows in each table"),
            ParamSpec::int(
                "repeats",
                1,
                100,
                5,
                "times each aggregate runs (the median counts)",
            ),
            ParamSpec::int(
                "lookups",
                1,
                100_000,
                200,
                "point lookups by id on each server",
            ),
            ParamSpec::choice(
                "ch_layout",
                &["columns", "blob"],
                "columns",
                "ClickHouse table: one column per field, or the whole row as one JSON string",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number(
                    "pg_aggregate_ms",
                    "median time of `SELECT avg(amount)` on PostgreSQL",
                ),
                ObsSpec::number("ch_aggregate_ms", "the same on ClickHouse"),
                ObsSpec::number("aggregate_speedup", "pg_aggregate_ms ÷ ch_aggregate_ms"),
                ObsSpec::number(
                    "pg_bytes_read",
                    "bytes of table pages the aggregate touched on PostgreSQL (EXPLAIN BUFFERS)",
                ),
                ObsSpec::number(
                    "ch_bytes_read",
                    "bytes the aggregate read on ClickHouse (query_log read_bytes, uncompressed)",
                ),
                ObsSpec::number(
                    "pg_lookup_p50_ms",
                    "median time of a point lookup by id on PostgreSQL",
                ),
                ObsSpec::number("ch_lookup_p50_ms", "the same on ClickHouse"),
                ObsSpec::number(
                    "pg_lookup_bytes_read",
                    "bytes of index and table pages one lookup touched on PostgreSQL",
                ),
                ObsSpec::number(
                    "ch_lookup_rows_read",
                    "rows one lookup read on ClickHouse (a granule of the sparse index)",
                ),
                ObsSpec::number(
                    "ch_lookup_bytes_read",
                    "bytes one lookup read on ClickHouse",
                ),
                ObsSpec::number(
                    "pg_table_bytes",
                    "PostgreSQL's table on disk, without indexes",
                ),
                ObsSpec::number("pg_index_bytes", "its primary-key index"),
                ObsSpec::number(
                    "ch_compressed_bytes",
                    "ClickHouse's table on disk (active parts, compressed)",
                ),
                ObsSpec::number("ch_uncompressed_bytes", "the same data uncompressed"),
                ObsSpec::number("ch_compression_ratio", "uncompressed ÷ compressed"),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let rows = ctx.int("rows") as u64;
        let blob = ctx.text("ch_layout") == "blob";
        let pg_url = &ctx.service("postgres")?.url;
        let pg = connect(pg_url)
            .await
            .map_err(|e| ExerciseError(format!("connecting to PostgreSQL: {}", why(&e))))?;
        let ch = ClickHouse::new(ctx.service("clickhouse")?, QUERY_TIMEOUT)?;
        let table = format!("colrow_{rows}");
        let ch_table = format!("{table}_{}", ctx.text("ch_layout"));
        load_pg(&pg, &table, rows).await?;
        load_ch(&ch, &ch_table, rows, blob).await?;
        let repeats = ctx.int("repeats") as usize;
        let mut obs = Observations::new();
        let pg_sql = format!("SELECT avg(amount) FROM {table}");
        let pg_agg = median_ms(repeats, || async {
            pg.simple_query(&pg_sql)
                .await
                .map(drop)
                .map_err(|e| ExerciseError(format!("`{pg_sql}` on PostgreSQL: {}", why(&e))))
        })
        .await?;
        let amount = match blob {
            true => "visitParamExtractFloat(doc, 'amount')",
            false => "amount",
        };
        let ch_sql = format!("SELECT avg({amount}) FROM {ch_table}");
        let ch_agg = median_ms(repeats, || async { ch.execute(&ch_sql).await.map(drop) }).await?;
        obs.insert("pg_aggregate_ms".into(), json!(pg_agg));
        obs.insert("ch_aggregate_ms".into(), json!(ch_agg));
        if let (Some(pg_ms), Some(ch_ms)) = (pg_agg, ch_agg) {
            obs.insert("aggregate_speedup".into(), json!(ratio(pg_ms, ch_ms)));
        }
        let pg_buffers = pg_bytes_touched(&pg, &pg_sql).await?;
        obs.insert("pg_bytes_read".into(), json!(pg_buffers));
        let (_, ch_bytes) = ch_read(&ch, &ch_sql).await?;
        obs.insert("ch_bytes_read".into(), json!(ch_bytes));
        let tables = Tables {
            pg: &pg,
            ch: &ch,
            table: &table,
            ch_table: &ch_table,
        };
        tables.lookups(ctx, &mut obs).await?;
        tables.sizes(&mut obs).await?;
        Ok(obs)
    }
}

/// Makes PostgreSQL's table unless this run already has it.
async fn load_pg(pg: &tokio_postgres::Client, table: &str, rows: u64) -> Result<(), ExerciseError> {
    let fail = |e: tokio_postgres::Error| ExerciseError(format!("loading PostgreSQL: {}", why(&e)));
    let exists: bool = pg
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(fail)?
        .get(0);
    if exists {
        return Ok(());
    }
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, user_id integer, amount double precision, category text, note text);
         INSERT INTO {table} SELECT g, g % 100000, (g % 1000) / 10.0, 'cat' || (g % 20), 'note-' || g
           FROM generate_series(0, {last}) AS g;",
        last = rows - 1
    ))
    .await
    .map_err(fail)?;
    // On its own: VACUUM cannot run inside the batch's transaction. It sets
    // the hint bits and visibility map a table loaded long ago would have.
    pg.batch_execute(&format!("VACUUM ANALYZE {table}"))
        .await
        .map_err(fail)
}

/// Makes ClickHouse's table unless this run already has it.
async fn load_ch(ch: &ClickHouse, table: &str, rows: u64, blob: bool) -> Result<(), ExerciseError> {
    let exists = ch.execute(&format!("EXISTS TABLE {table}")).await?;
    if exists.trim() == "1" {
        return Ok(());
    }
    let (columns, select) = match blob {
        false => (
            "id UInt64, user_id UInt32, amount Float64, category String, note String",
            "number, number % 100000, (number % 1000) / 10, concat('cat', toString(number % 20)), concat('note-', toString(number))",
        ),
        true => (
            "id UInt64, doc String",
            "number, concat('{\"user_id\":', toString(number % 100000), ',\"amount\":', toString((number % 1000) / 10), ',\"category\":\"cat', toString(number % 20), '\",\"note\":\"note-', toString(number), '\"}')",
        ),
    };
    ch.execute(&format!(
        "CREATE TABLE {table} ({columns}) ENGINE = MergeTree() ORDER BY id"
    ))
    .await?;
    ch.execute(&format!(
        "INSERT INTO {table} SELECT {select} FROM numbers({rows})"
    ))
    .await?;
    // One part per table, as a table loaded long ago would be.
    ch.execute(&format!("OPTIMIZE TABLE {table} FINAL")).await?;
    Ok(())
}

/// Median wall time of `run`, after one warm-up run; `None` without samples.
async fn median_ms<F, Fut>(repeats: usize, mut run: F) -> Result<Option<f64>, ExerciseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ExerciseError>>,
{
    let mut times = Vec::with_capacity(repeats);
    for i in 0..=repeats {
        let start = Instant::now();
        run().await?;
        if i > 0 {
            times.push(start.elapsed());
        }
    }
    Ok(percentile_ms(&mut times, 50.0))
}

/// Bytes of pages `sql` touched on PostgreSQL (shared hit + read blocks).
async fn pg_bytes_touched(pg: &tokio_postgres::Client, sql: &str) -> Result<u64, ExerciseError> {
    let block = block_size(pg)
        .await
        .map_err(|e| ExerciseError(format!("block size on PostgreSQL: {}", why(&e))))?;
    let plan = explain(pg, sql)
        .await
        .map_err(|e| ExerciseError(format!("EXPLAIN on PostgreSQL: {e}")))?;
    Ok(pages_touched(&plan) * block)
}

/// Runs `sql` once on ClickHouse under a query id of its own and reads back
/// what the server logged for it: (rows read, bytes read).
async fn ch_read(ch: &ClickHouse, sql: &str) -> Result<(u64, u64), ExerciseError> {
    #[derive(Deserialize)]
    struct Read {
        read_rows: Value,
        read_bytes: Value,
    }
    let id = format!("infralab-{:016x}", rand::random::<u64>());
    ch.execute_as(sql, &id).await?;
    // The server logs a query when it has finished it, which may be after
    // the answer reached the client: wait for the entry, flushing each time.
    let start = Instant::now();
    while start.elapsed() < LOG_WAIT {
        ch.execute("SYSTEM FLUSH LOGS").await?;
        let read: Vec<Read> = ch
            .rows(&format!(
                "SELECT read_rows, read_bytes FROM system.query_log WHERE query_id = '{id}' AND type = 2"
            ))
            .await?;
        if let Some(r) = read.first() {
            return Ok((number(&r.read_rows) as u64, number(&r.read_bytes) as u64));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ExerciseError(format!(
        "ClickHouse logged no finished query `{id}` within {} s",
        LOG_WAIT.as_secs()
    )))
}

impl Tables<'_> {
    /// Point lookups by random id, one at a time on each server, then what one
    /// lookup read on each.
    async fn lookups(&self, ctx: &Ctx, obs: &mut Observations) -> Result<(), ExerciseError> {
        let Tables {
            pg,
            ch,
            table,
            ch_table,
        } = *self;
        let rows = ctx.int("rows") as u64;
        let n = ctx.int("lookups") as usize;
        let fail =
            |e: tokio_postgres::Error| ExerciseError(format!("lookup on PostgreSQL: {}", why(&e)));
        let stmt = pg
            .prepare(&format!("SELECT * FROM {table} WHERE id = $1"))
            .await
            .map_err(fail)?;
        let ids: Vec<u64> = (0..n).map(|_| rand::random::<u64>() % rows).collect();
        let mut pg_times = Vec::with_capacity(n);
        for id in &ids {
            let start = Instant::now();
            pg.query_one(&stmt, &[&(*id as i64)]).await.map_err(fail)?;
            pg_times.push(start.elapsed());
        }
        let mut ch_times = Vec::with_capacity(n);
        for id in &ids {
            let start = Instant::now();
            ch.execute(&format!("SELECT * FROM {ch_table} WHERE id = {id}"))
                .await?;
            ch_times.push(start.elapsed());
        }
        obs.insert(
            "pg_lookup_p50_ms".into(),
            json!(percentile_ms(&mut pg_times, 50.0)),
        );
        obs.insert(
            "ch_lookup_p50_ms".into(),
            json!(percentile_ms(&mut ch_times, 50.0)),
        );
        let probe = ids.first().copied().unwrap_or(0);
        obs.insert(
            "pg_lookup_bytes_read".into(),
            json!(
                pg_bytes_touched(pg, &format!("SELECT * FROM {table} WHERE id = {probe}")).await?
            ),
        );
        let (rows_read, bytes_read) =
            ch_read(ch, &format!("SELECT * FROM {ch_table} WHERE id = {probe}")).await?;
        obs.insert("ch_lookup_rows_read".into(), json!(rows_read));
        obs.insert("ch_lookup_bytes_read".into(), json!(bytes_read));
        Ok(())
    }

    /// Each table's size on disk, as its server reports it.
    async fn sizes(&self, obs: &mut Observations) -> Result<(), ExerciseError> {
        let Tables {
            pg,
            ch,
            table,
            ch_table,
        } = *self;
        let row = pg
            .query_one(
                &format!("SELECT pg_table_size('{table}'), pg_indexes_size('{table}')"),
                &[],
            )
            .await
            .map_err(|e| ExerciseError(format!("sizes on PostgreSQL: {}", why(&e))))?;
        let (heap, index): (i64, i64) = (row.get(0), row.get(1));
        obs.insert("pg_table_bytes".into(), json!(heap));
        obs.insert("pg_index_bytes".into(), json!(index));
        #[derive(Deserialize)]
        struct Parts {
            compressed: Value,
            uncompressed: Value,
        }
        let parts: Vec<Parts> = ch
        .rows(&format!(
            "SELECT sum(data_compressed_bytes) AS compressed, sum(data_uncompressed_bytes) AS uncompressed \
             FROM system.parts WHERE table = '{ch_table}' AND active"
        ))
        .await?;
        if let Some(p) = parts.first() {
            let (c, u) = (number(&p.compressed), number(&p.uncompressed));
            obs.insert("ch_compressed_bytes".into(), json!(c));
            obs.insert("ch_uncompressed_bytes".into(), json!(u));
            obs.insert("ch_compression_ratio".into(), json!(ratio(u, c)));
        }
        Ok(())
    }
}
