//! `sessions`: users log in through Nginx to replicated agents and keep
//! making requests with their session cookie (see `agent::sessions`),
//! while a replica is killed, or while a session's TTL runs.
//!
//! Workload `users`: `users` clients, each with its own cookie jar and a
//! `uid` cookie of its own (what a sticky balancer may hash), log in under
//! the Nginx path `prefix` and make `requests` requests; the milestone
//! `phase-one` is recorded, the lab may kill `kill_replica` then, and once
//! its own port stops answering (`replica-down`) every user makes
//! `requests` more. A 401 means the user was logged out: it is counted and
//! the user logs in again. Each answer names the replica that served it.
//!
//! Workload `expiry`: after `PUT /session-config` on every agent (TTL
//! `ttl_ms`, `sliding`), an active user makes a request every quarter TTL
//! for `active_for_ms`, and an idle user logs in and does nothing; Redis
//! is polled (`EXISTS`, which leaves the TTL alone) until the idle
//! session's key is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;

use super::{Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamSpec};
use crate::agent::sessions::{Config, Whoami, redis_key};
use crate::client::{http, redis as redis_client};
use crate::stats::join_workers;

const PHASE_ONE: &str = "phase-one";
const REPLICA_DOWN: &str = "replica-down";

/// How long the idle session may outlive its TTL before the exercise stops
/// waiting for Redis to drop it.
const EXPIRY_SLACK: Duration = Duration::from_secs(10);

/// The `sessions` exercise.
pub struct SessionsExercise;

/// What one user saw.
#[derive(Debug, Default, Clone)]
struct User {
    /// Replicas that served it in phase one and in phase two.
    served: [BTreeSet<String>; 2],
    /// 401s per phase.
    logged_out: [u64; 2],
    errors: u64,
}

#[async_trait]
impl Exercise for SessionsExercise {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn summary(&self) -> &'static str {
        "logged-in users through Nginx to replicated agents: who keeps their session when a replica dies, and how a session's TTL runs"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["nginx", "agent"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::choice(
                "workload",
                &["users", "expiry"],
                "users",
                "`users`: many users across a replica kill; `expiry`: one active and one idle session against the TTL",
            ),
            ParamSpec::text(
                "prefix",
                "shared",
                "the Nginx path prefix (`/PREFIX/session/…`): which upstream and which replicas",
            ),
            ParamSpec::int("users", 1, 1_000, 30, "users logging in"),
            ParamSpec::int("requests", 1, 10_000, 10, "requests per user in each phase"),
            ParamSpec::text(
                "kill_replica",
                "",
                "the replica the lab kills after `phase-one` (e.g. `web-2`); empty: none",
            ),
            ParamSpec::int(
                "ttl_ms",
                100,
                86_400_000,
                1_000,
                "`expiry`: the sessions' TTL",
            ),
            ParamSpec::flag(
                "sliding",
                true,
                "`expiry`: every recognised request restarts the TTL",
            ),
            ParamSpec::int(
                "active_for_ms",
                100,
                600_000,
                3_000,
                "`expiry`: how long the active user keeps making requests",
            ),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        const {
            &[
                ObsSpec::number("logins", "successful logins, first ones and after a 401"),
                ObsSpec::number(
                    "logged_out_users",
                    "users who got a 401 (their session unknown to the replica that served them)",
                ),
                ObsSpec::number(
                    "logged_out_phase_one",
                    "of them, users logged out in phase one (before any kill)",
                ),
                ObsSpec::number(
                    "users_on_killed",
                    "users the killed replica served in phase one",
                ),
                ObsSpec::number(
                    "users_on_several",
                    "users served by more than one replica in phase one",
                ),
                ObsSpec::number(
                    "instances_used",
                    "replicas that served at least one request",
                ),
                ObsSpec::number("errors", "requests that failed other than with a 401"),
                ObsSpec::number("active_logged_out", "`expiry`: 401s the active user got"),
                ObsSpec::number(
                    "active_kept_ms",
                    "`expiry`: from the active user's login to its last recognised request",
                ),
                ObsSpec::number(
                    "idle_expired_after_ms",
                    "`expiry`: from the idle user's login answer until Redis no longer had the session",
                ),
            ]
        }
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new(
                    PHASE_ONE,
                    "every user logged in and made its first requests",
                ),
                Milestone::new(
                    REPLICA_DOWN,
                    "the killed replica's own port stopped answering (only with `kill_replica`)",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let nginx = ctx.service("nginx")?;
        let base = format!(
            "{}/{}/session",
            nginx.url.trim_end_matches('/'),
            ctx.text("prefix").trim_matches('/')
        );
        match ctx.text("workload") {
            "expiry" => expiry(ctx, &base).await,
            _ => users(ctx, &base).await,
        }
    }
}

/// One user's browser: its own cookies.
fn browser(uid: usize) -> Result<reqwest::Client, ExerciseError> {
    let mut headers = reqwest::header::HeaderMap::new();
    // The balancer's key: a cookie the client carries from its first request.
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("uid=u{uid}")) {
        headers.insert(reqwest::header::COOKIE, v);
    }
    http::builder(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .doing("building a user's HTTP client")
}

/// Logs in; returns the session id for the cookie.
async fn login(client: &reqwest::Client, base: &str, user: &str) -> Result<String, String> {
    let r = client
        .post(format!("{base}/login"))
        .body(user.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("login answered {}", r.status()));
    }
    let who: Whoami = r.json().await.map_err(|e| e.to_string())?;
    who.sid.ok_or_else(|| "login answered no session".into())
}

/// `GET /me` with the session: the answer's status and who served it.
async fn whoami(
    client: &reqwest::Client,
    base: &str,
    uid: usize,
    sid: &str,
) -> Result<(u16, String), String> {
    let r = client
        .get(format!("{base}/me"))
        .header(reqwest::header::COOKIE, format!("uid=u{uid}; sid={sid}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let who: Whoami = r.json().await.map_err(|e| e.to_string())?;
    Ok((status, who.instance))
}

async fn users(ctx: &Ctx, base: &str) -> Result<Observations, ExerciseError> {
    // A TTL an earlier `expiry` scenario set must not log these users out.
    configure_agents(ctx, Config::default()).await?;
    let n = ctx.int("users") as usize;
    let requests = ctx.int("requests") as usize;
    let (go_on, _) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(n);
    let mut handles = Vec::new();
    for uid in 0..n {
        let client = browser(uid)?;
        let base = base.to_string();
        let mut go = go_on.subscribe();
        let done = done_tx.clone();
        handles.push(tokio::spawn(async move {
            let mut user = User::default();
            let mut logins = 0;
            let name = format!("user-{uid}");
            let mut sid = String::new();
            for phase in 0..2 {
                if phase == 1 {
                    let _ = done.send(()).await;
                    let _ = go.wait_for(|g| *g).await;
                }
                for _ in 0..requests {
                    if sid.is_empty() {
                        match login(&client, &base, &name).await {
                            Ok(s) => {
                                sid = s;
                                logins += 1;
                            }
                            Err(_) => {
                                user.errors += 1;
                                continue;
                            }
                        }
                    }
                    match whoami(&client, &base, uid, &sid).await {
                        Ok((200, instance)) => {
                            user.served[phase].insert(instance);
                        }
                        Ok((401, _)) => {
                            user.logged_out[phase] += 1;
                            sid.clear();
                        }
                        _ => user.errors += 1,
                    }
                }
            }
            Ok::<_, ExerciseError>((user, logins))
        }));
    }
    drop(done_tx);
    for _ in 0..n {
        done_rx.recv().await;
    }
    ctx.mark(PHASE_ONE);
    let killed = ctx.text("kill_replica");
    if !killed.is_empty() {
        let e = ctx.services.get(killed).ok_or_else(|| {
            ExerciseError(format!("`kill_replica`: the lab has no service `{killed}`"))
        })?;
        let health = format!("{}/health", e.url.trim_end_matches('/'));
        tokio::time::timeout(Duration::from_secs(20), http::until_down(&health))
            .await
            .map_err(|_| {
                ExerciseError(format!(
                    "`{killed}` still answered 20 s after `{PHASE_ONE}`: the lab must kill it then"
                ))
            })??;
        ctx.mark(REPLICA_DOWN);
    }
    go_on.send_replace(true);
    let results = join_workers(handles).await?;
    Ok(observe_users(&results, killed))
}

fn observe_users(results: &[(User, u64)], killed: &str) -> Observations {
    let users: Vec<&User> = results.iter().map(|(u, _)| u).collect();
    let instances: BTreeSet<&String> = users
        .iter()
        .flat_map(|u| u.served.iter().flatten())
        .collect();
    let count = |f: &dyn Fn(&User) -> bool| users.iter().filter(|u| f(u)).count();
    let mut obs = BTreeMap::new();
    obs.insert(
        "logins".into(),
        json!(results.iter().map(|(_, l)| l).sum::<u64>()),
    );
    obs.insert(
        "logged_out_users".into(),
        json!(count(&|u| u.logged_out.iter().sum::<u64>() > 0)),
    );
    obs.insert(
        "logged_out_phase_one".into(),
        json!(count(&|u| u.logged_out[0] > 0)),
    );
    if !killed.is_empty() {
        obs.insert(
            "users_on_killed".into(),
            json!(count(&|u| u.served[0].contains(killed))),
        );
    }
    obs.insert(
        "users_on_several".into(),
        json!(count(&|u| u.served[0].len() > 1)),
    );
    obs.insert("instances_used".into(), json!(instances.len()));
    obs.insert(
        "errors".into(),
        json!(users.iter().map(|u| u.errors).sum::<u64>()),
    );
    obs
}

async fn expiry(ctx: &Ctx, base: &str) -> Result<Observations, ExerciseError> {
    let ttl = Duration::from_millis(ctx.int("ttl_ms") as u64);
    let config = Config {
        ttl_ms: ttl.as_millis() as u64,
        sliding: ctx.flag("sliding"),
    };
    configure_agents(ctx, config).await?;
    let redis = ctx.service("redis")?;
    let conn = redis_client::connect(redis).await?;
    let (active, idle) = (browser(0)?, browser(1)?);
    let idle_sid = login(&idle, base, "idle")
        .await
        .doing("logging the idle user in")?;
    let idle_at = Instant::now();
    let watch_idle = async {
        let key = redis_key(&idle_sid);
        let mut c = conn.clone();
        while idle_at.elapsed() < ttl + EXPIRY_SLACK {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut c)
                .await
                .doing("asking Redis for the idle session")?;
            if !exists {
                return Ok(Some(idle_at.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, ExerciseError>(None)
    };
    let (idle_gone, active_seen) = tokio::join!(
        watch_idle,
        keep_active(&active, base, ttl, ctx.int("active_for_ms") as u64)
    );
    let (idle_gone, (logged_out, kept)) = (idle_gone?, active_seen?);
    let mut obs = Observations::new();
    obs.insert("active_logged_out".into(), json!(logged_out));
    obs.insert(
        "active_kept_ms".into(),
        json!(kept.map(|d| d.as_millis() as u64)),
    );
    obs.insert(
        "idle_expired_after_ms".into(),
        json!(idle_gone.map(|d| d.as_millis() as u64)),
    );
    Ok(obs)
}

/// The active user: a request every quarter TTL for `for_ms`; returns its
/// 401s and how long after its login its last recognised request came.
async fn keep_active(
    client: &reqwest::Client,
    base: &str,
    ttl: Duration,
    for_ms: u64,
) -> Result<(u64, Option<Duration>), ExerciseError> {
    let sid = login(client, base, "active")
        .await
        .doing("logging the active user in")?;
    let start = Instant::now();
    let (mut logged_out, mut kept) = (0, None);
    while start.elapsed() < Duration::from_millis(for_ms) {
        tokio::time::sleep(ttl / 4).await;
        match whoami(client, base, 0, &sid).await {
            Ok((200, _)) => kept = Some(start.elapsed()),
            Ok((401, _)) => logged_out += 1,
            Ok((code, _)) => return Err(ExerciseError(format!("`/me` answered {code}"))),
            Err(e) => return Err(ExerciseError(format!("`/me` failed: {e}"))),
        }
    }
    Ok((logged_out, kept))
}

/// Sets the session config on every agent instance, through its own port.
async fn configure_agents(ctx: &Ctx, config: Config) -> Result<(), ExerciseError> {
    let client = http::client(Duration::from_secs(10))?;
    for e in ctx.services.values().filter(|e| e.kind == "agent") {
        let r = client
            .put(format!("{}/session-config", e.url.trim_end_matches('/')))
            .json(&config)
            .send()
            .await
            .doing(&format!("configuring sessions on {}", e.service))?;
        if !r.status().is_success() {
            return Err(ExerciseError(format!(
                "{} refused the session config: {}",
                e.service,
                r.status()
            )));
        }
    }
    Ok(())
}
