//! Sessions: a login that later requests are recognised by, kept in the
//! agent's own memory or in Redis, served next to role `http`.
//!
//! - `POST /session/login` with the user's name as body: a new session,
//!   `200 {sid, user, instance}` and `Set-Cookie: sid=…`.
//! - `GET /session/me` with the cookie: `200 {user, instance}` while the
//!   session lives, `401 {instance}` when this instance does not know it.
//!   With a sliding expiry every such request pushes the expiry back by the
//!   TTL; a fixed one ends the TTL after the login however active the user is.
//! - `PUT /session-config` with a JSON [`Config`]: TTL and sliding.
//!
//! `SESSION_STORE` (environment) picks the store: unset or `memory`: a map in
//! this process, which only this instance sees and which dies with it;
//! `redis://HOST:PORT`: keys `session:SID` with the TTL set in Redis
//! (`SET … PX`, `GETEX … PX` when sliding), which every instance shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

/// The environment variable naming the store.
pub const STORE_ENV: &str = "SESSION_STORE";

/// Where Redis keeps a session.
pub fn redis_key(sid: &str) -> String {
    format!("session:{sid}")
}

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Time to live, from the login or (sliding) from the last request.
    pub ttl_ms: u64,
    /// Every recognised request restarts the TTL.
    pub sliding: bool,
}

impl Default for Config {
    /// Half an hour, sliding: what web frameworks commonly default to.
    fn default() -> Self {
        Config {
            ttl_ms: 30 * 60 * 1000,
            sliding: true,
        }
    }
}

/// `GET /session/me` and the login's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Whoami {
    /// The instance that answered.
    pub instance: String,
    /// The session's user; absent on a 401.
    pub user: Option<String>,
    /// The session id (login only).
    pub sid: Option<String>,
}

enum Store {
    Memory(Mutex<HashMap<String, (String, Instant)>>),
    Redis(Box<super::shared_redis::SharedRedis>),
}

struct Sessions {
    instance: String,
    config: RwLock<Config>,
    store: Store,
}

/// The session routes, for any router state.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let store = std::env::var(STORE_ENV).unwrap_or_default();
    routes_with(super::instance_id(), &store)
}

fn routes_with<S: Clone + Send + Sync + 'static>(instance: String, store: &str) -> Router<S> {
    let store = match store.trim() {
        "" | "memory" => Store::Memory(Mutex::default()),
        url => match super::shared_redis::SharedRedis::open(url) {
            Ok(redis) => Store::Redis(Box::new(redis)),
            Err(e) => {
                // The container log says why; every request then fails.
                eprintln!("infralab agent: {STORE_ENV}={url} is not a Redis URL: {e}");
                Store::Memory(Mutex::default())
            }
        },
    };
    let sessions = Arc::new(Sessions {
        instance,
        config: RwLock::default(),
        store,
    });
    Router::new()
        .route("/session/login", post(login))
        .route("/session/me", get(me))
        .route("/session-config", put(configure))
        .with_state(sessions)
}

async fn configure(State(s): State<Arc<Sessions>>, Json(config): Json<Config>) -> Response {
    if config.ttl_ms == 0 {
        return (StatusCode::BAD_REQUEST, "ttl_ms must be above 0\n").into_response();
    }
    *s.config.write().expect("config lock") = config;
    Json(config).into_response()
}

async fn login(State(s): State<Arc<Sessions>>, user: String) -> Response {
    let user = user.trim().to_string();
    if user.is_empty() {
        return (StatusCode::BAD_REQUEST, "the body names the user\n").into_response();
    }
    let sid = format!("{:016x}", rand::random::<u64>());
    if let Err(e) = s.create(&sid, &user).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("session store: {e}\n"),
        )
            .into_response();
    }
    let mut response = Json(Whoami {
        instance: s.instance.clone(),
        user: Some(user),
        sid: Some(sid.clone()),
    })
    .into_response();
    if let Ok(cookie) = HeaderValue::from_str(&format!("sid={sid}; Path=/; HttpOnly")) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn me(State(s): State<Arc<Sessions>>, headers: HeaderMap) -> Response {
    let found = match cookie(&headers, "sid") {
        Some(sid) => s.find(&sid).await,
        None => Ok(None),
    };
    match found {
        Ok(user) => {
            let status = match user {
                Some(_) => StatusCode::OK,
                None => StatusCode::UNAUTHORIZED,
            };
            let whoami = Whoami {
                instance: s.instance.clone(),
                user,
                sid: None,
            };
            (status, Json(whoami)).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("session store: {e}\n"),
        )
            .into_response(),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl Sessions {
    fn config(&self) -> Config {
        *self.config.read().expect("config lock")
    }

    async fn create(&self, sid: &str, user: &str) -> Result<(), String> {
        let ttl = self.config().ttl_ms;
        match &self.store {
            Store::Memory(map) => {
                let expires = Instant::now() + Duration::from_millis(ttl);
                map.lock()
                    .expect("sessions lock")
                    .insert(sid.to_string(), (user.to_string(), expires));
                Ok(())
            }
            Store::Redis(redis) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(redis_key(sid)).arg(user).arg("PX").arg(ttl);
                redis.query::<()>(&cmd).await
            }
        }
    }

    /// The session's user, pushing its expiry back when sliding.
    async fn find(&self, sid: &str) -> Result<Option<String>, String> {
        let config = self.config();
        match &self.store {
            Store::Memory(map) => {
                let mut map = map.lock().expect("sessions lock");
                let now = Instant::now();
                match map.get_mut(sid) {
                    Some((user, expires)) if *expires > now => {
                        if config.sliding {
                            *expires = now + Duration::from_millis(config.ttl_ms);
                        }
                        Ok(Some(user.clone()))
                    }
                    Some(_) => {
                        map.remove(sid);
                        Ok(None)
                    }
                    None => Ok(None),
                }
            }
            Store::Redis(redis) => {
                let cmd = if config.sliding {
                    let mut c = redis::cmd("GETEX");
                    c.arg(redis_key(sid)).arg("PX").arg(config.ttl_ms);
                    c
                } else {
                    let mut c = redis::cmd("GET");
                    c.arg(redis_key(sid));
                    c
                };
                redis.query::<Option<String>>(&cmd).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app: Router = routes_with("web-1".into(), "memory");
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    async fn me(url: &str, sid: &str) -> reqwest::StatusCode {
        client()
            .get(format!("{url}/session/me"))
            .header("cookie", format!("uid=u1; sid={sid}"))
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn login(url: &str) -> String {
        let r = client()
            .post(format!("{url}/session/login"))
            .body("ada")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .starts_with("sid=")
        );
        r.json::<Whoami>().await.unwrap().sid.unwrap()
    }

    async fn configure(url: &str, ttl_ms: u64, sliding: bool) {
        let r = client()
            .put(format!("{url}/session-config"))
            .json(&Config { ttl_ms, sliding })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn a_login_is_recognised_and_an_unknown_session_is_not() {
        let url = start().await;
        let sid = login(&url).await;
        assert_eq!(me(&url, &sid).await, 200);
        assert_eq!(me(&url, "feedface").await, 401);
    }

    #[tokio::test]
    async fn a_sliding_session_outlives_its_ttl_while_used_and_a_fixed_one_does_not() {
        let url = start().await;
        configure(&url, 300, true).await;
        let sid = login(&url).await;
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(me(&url, &sid).await, 200);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(me(&url, &sid).await, 401);
        configure(&url, 300, false).await;
        let sid = login(&url).await;
        let mut codes = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            codes.push(me(&url, &sid).await.as_u16());
        }
        assert_eq!(codes.last(), Some(&401), "{codes:?}");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("uid=7; sid=abc"));
        assert_eq!(cookie(&h, "sid").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "other"), None);
    }
}
