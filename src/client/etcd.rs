//! etcd through its JSON gateway: the v3 API's own RPCs (`/v3/kv/put`,
//! `/v3/kv/range`, `/v3/maintenance/status` …) as JSON over HTTP, served by
//! every member beside gRPC.
//!
//! Why not the gRPC crates: they compile etcd's `.proto` files at build time
//! and need `protoc` on the machine, which would break `cargo run` on a fresh
//! one. The gateway carries the same requests and the same answers (keys and
//! values base64, 64-bit numbers as strings), and its errors are etcd's own
//! words (`etcdserver: no leader`).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::error_chain;
use super::round_trip::{RoundTrip, Trip, TripInput};
use crate::catalog::Endpoint;

/// How long one probe attempt may take: under the engine's 2 s cap per attempt.
const PROBE_ATTEMPT: Duration = Duration::from_millis(1800);

/// Why a request got no answer it could use.
#[derive(Debug, Clone, PartialEq)]
pub enum EtcdError {
    /// The member answered with an error (`etcdserver: no leader`, `etcdserver:
    /// request timed out` …): it refused.
    Refused(String),
    /// No answer within the client's deadline (a member that cannot reach a
    /// quorum holds a linearizable request until its own timeout).
    Timeout,
    /// The member could not be reached at all (killed, connection refused).
    Unreachable(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Refused(why) => write!(f, "refused: {why}"),
            EtcdError::Timeout => write!(f, "no answer within the deadline"),
            EtcdError::Unreachable(why) => write!(f, "unreachable: {why}"),
        }
    }
}

/// What `/v3/maintenance/status` says about a member.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// This member's id.
    pub member: u64,
    /// The leader it follows (0: it knows none).
    pub leader: u64,
    /// The Raft term it is in.
    pub term: u64,
}

/// One key as a range returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    /// The value, as text.
    pub value: String,
    /// The revision of its last write.
    pub mod_revision: i64,
    /// The revision that created it (0: absent).
    pub create_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Confirmed with a quorum (ReadIndex): the latest committed value, or no answer.
    Linearizable,
    /// Whatever this member has applied locally: answers without a quorum, may be stale.
    Serializable,
}

/// A client for one member.
#[derive(Clone)]
pub struct Etcd {
    http: reqwest::Client,
    base: String,
}

impl Etcd {
    /// A client for `endpoint` whose requests give up after `deadline`.
    pub fn new(endpoint: &Endpoint, deadline: Duration) -> Result<Self, String> {
        let http = super::http::builder(deadline)
            .build()
            .map_err(|e| error_chain(&e))?;
        Ok(Etcd {
            http,
            base: endpoint.url.trim_end_matches('/').to_string(),
        })
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let value: Value = response.json().await.map_err(transport)?;
        if let Some(error) = value.get("error").or_else(|| value.get("message")) {
            let why = error.as_str().unwrap_or("error").to_string();
            return Err(EtcdError::Refused(why));
        }
        if !status.is_success() {
            return Err(EtcdError::Refused(format!("HTTP {status}")));
        }
        Ok(value)
    }

    /// The member's view of the cluster: who leads, in which term.
    pub async fn status(&self) -> Result<Status, EtcdError> {
        let v = self.call("/v3/maintenance/status", json!({})).await?;
        Ok(Status {
            member: uint(&v["header"]["member_id"]),
            leader: uint(&v["leader"]),
            term: uint(&v["raftTerm"]),
        })
    }

    /// Writes `key`; returns the revision it made.
    pub async fn put(&self, key: &str, value: &str) -> Result<i64, EtcdError> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        let v = self.call("/v3/kv/put", body).await?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Reads `key` (None: absent).
    pub async fn get(&self, key: &str, read: Read) -> Result<Option<Kv>, EtcdError> {
        let body = json!({
            "key": B64.encode(key),
            "serializable": read == Read::Serializable,
        });
        let v = self.call("/v3/kv/range", body).await?;
        Ok(v["kvs"].as_array().and_then(|kvs| kvs.first()).map(kv))
    }

    /// Every key under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &str, read: Read) -> Result<Vec<Kv>, EtcdError> {
        let body = json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "serializable": read == Read::Serializable,
        });
        let v = self.call("/v3/kv/range", body).await?;
        Ok(v["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().map(kv).collect())
            .unwrap_or_default())
    }

    /// Asks the leader to hand leadership to member `target` (etcdctl
    /// move-leader); only the current leader accepts.
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        self.call(
            "/v3/maintenance/transfer-leadership",
            json!({ "targetID": target.to_string() }),
        )
        .await
        .map(|_| ())
    }

    /// A lease of `ttl_s` seconds; returns its id.
    pub async fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/grant", json!({ "TTL": ttl_s.to_string() }))
            .await?;
        Ok(int(&v["ID"]))
    }

    /// Renews a lease once; returns the TTL left (0 or less: it had expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// Creates `key` on `lease` only if it does not exist (one transaction):
    /// true when this call created it.
    pub async fn create(&self, key: &str, value: &str, lease: i64) -> Result<bool, EtcdError> {
        let k = B64.encode(key);
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{ "key": k, "target": "CREATE", "create_revision": "0", "result": "EQUAL" }],
                    "success": [{ "request_put": { "key": k, "value": B64.encode(value), "lease": lease.to_string() } }],
                }),
            )
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Writes `key` only while `guard` still has create revision `revision`
    /// (one transaction): the fence that turns a deposed leader's late write
    /// into a refusal. True when the write happened.
    pub async fn put_if_created_at(
        &self,
        guard: &str,
        revision: i64,
        key: &str,
        value: &str,
    ) -> Result<bool, EtcdError> {
        let v = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{ "key": B64.encode(guard), "target": "CREATE", "create_revision": revision.to_string(), "result": "EQUAL" }],
                    "success": [{ "request_put": { "key": B64.encode(key), "value": B64.encode(value) } }],
                }),
            )
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }
}

/// A request that got no answer: too slow, or nobody there.
fn transport(e: reqwest::Error) -> EtcdError {
    if e.is_timeout() {
        EtcdError::Timeout
    } else {
        EtcdError::Unreachable(error_chain(&e))
    }
}

/// The key just past every key that starts with `prefix` (a range's end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kv(v: &Value) -> Kv {
    let value = v["value"]
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Kv {
        value,
        mod_revision: int(&v["mod_revision"]),
        create_revision: int(&v["create_revision"]),
        lease: int(&v["lease"]),
    }
}

/// A 64-bit number the gateway sends as a string (absent: 0, proto3's default).
fn uint(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_default(),
        Value::Number(n) => n.as_u64().unwrap_or_default(),
        _ => 0,
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_default(),
        Value::Number(n) => n.as_i64().unwrap_or_default(),
        _ => 0,
    }
}

/// Readiness: the member answers and knows a leader (a member that answers
/// without a leader cannot serve a single linearizable request).
pub async fn probe(endpoint: &Endpoint) -> Result<(), String> {
    let etcd = Etcd::new(endpoint, PROBE_ATTEMPT)?;
    let status = etcd.status().await.map_err(|e| e.to_string())?;
    if status.leader == 0 {
        return Err(format!(
            "member answers but knows no leader yet (term {})",
            status.term
        ));
    }
    Ok(())
}

/// The etcd round trip: a put, then a linearizable get of the same key.
pub static ROUND_TRIP: RoundTrip = RoundTrip {
    prefix: "etcd",
    ok: "put then linearizable get returned the value written",
    ms: "put + get round trip",
    error: "why the round trip failed (only when it did)",
    extra: &[],
    params: Vec::new,
    start: |input| Box::pin(round_trip(input)),
};

async fn round_trip(mut input: TripInput) -> Result<Trip, String> {
    let etcd = Etcd::new(&input.endpoint, Duration::from_secs(5))?;
    let key = format!("{}/smoke", input.namespace);
    let value = input.token();
    input.gate.wait().await;
    let started = Instant::now();
    etcd.put(&key, &value)
        .await
        .map_err(|e| format!("put: {e}"))?;
    let read = etcd
        .get(&key, Read::Linearizable)
        .await
        .map_err(|e| format!("get: {e}"))?;
    let elapsed = started.elapsed();
    Trip::read_back(
        elapsed,
        &value,
        read.as_ref().map_or("(absent)", |kv| kv.value.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_just_past_the_prefix() {
        assert_eq!(prefix_end("a/"), b"a0".to_vec());
        assert_eq!(prefix_end("ab"), b"ac".to_vec());
    }

    #[test]
    fn gateway_numbers_come_as_strings_or_not_at_all() {
        assert_eq!(uint(&json!("18446744073709551615")), u64::MAX);
        assert_eq!(uint(&Value::Null), 0);
        assert_eq!(int(&json!("42")), 42);
        let k = kv(&json!({"value": "YmFy", "mod_revision": "7"}));
        assert_eq!((k.value.as_str(), k.mod_revision, k.lease), ("bar", 7, 0));
    }
}
