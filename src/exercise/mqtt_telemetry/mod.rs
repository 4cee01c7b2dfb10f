//! `mqtt-telemetry`: simulated sensors publish temperature readings to an MQTT
//! broker, a dashboard subscribes with a wildcard, and the lab watches what
//! each QoS level delivers when things go wrong.
//!
//! Sensor `sN` publishes on `ROOT/sensors/sN/temperature` at QoS `N mod 3`, so
//! every run has QoS 0, 1 and 2 sensors side by side; `ROOT` is the scenario's
//! namespace made topic-safe. The dashboard subscribes to
//! `ROOT/sensors/+/temperature` (QoS 2, so each message arrives at its
//! publisher's level) and `ROOT/sensors/+/status`. Every sensor connects with a
//! persistent session and a last will (`offline`, retained, on its status
//! topic) and announces `online` on every connect.
//!
//! What can go wrong, each switched on by a parameter:
//! - `offline`: the dashboard's connection dies (no DISCONNECT) for the middle
//!   third of the readings, and it comes back with the same client id, with
//!   its session kept (`persistent: true`, clean session off) or not;
//! - `flap_sensors`: the sensors' links (through a local relay) lose what the
//!   broker sends back — the PUBACK/PUBREC of one round — and then drop; the
//!   sensors reconnect and resend what was never acknowledged;
//! - `sensor_exit`: at the end one sensor crashes (its TCP connection is
//!   dropped without DISCONNECT: the broker publishes its will) or says
//!   goodbye properly (no will);
//! - `retain`: readings are published retained, and a subscriber that arrives
//!   after the stream gets the last reading of each sensor at once.
//!
//! Measurements: `wire_samples` sends readings once as MQTT PUBLISH and once as
//! HTTP POST (to the lab's `agent` when it has one, else to a minimal local
//! HTTP server) through counting relays; `burst` publishes as fast as the
//! broker delivers to the dashboard.
//!
//! Every count comes from what the dashboard or late subscriber actually
//! received from the broker.

mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    Context, Ctx, Exercise, ExerciseError, Milestone, ObsSpec, Observations, ParamKind, ParamSpec,
};
use crate::client::mqtt::{self, disconnect, topic_root};
use crate::client::relay::Relay;
use crate::stats::pacer;

/// The `mqtt-telemetry` exercise.
pub struct MqttTelemetry;

const LEVELS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

/// Quiet time after which no more deliveries are expected.
const QUIET: Duration = Duration::from_secs(1);

/// Upper bound for any single wait on the broker.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long the late subscriber listens for retained readings.
const RETAINED_WAIT: Duration = Duration::from_millis(500);

/// How long to wait for a will after a sensor left.
const WILL_WAIT: Duration = Duration::from_millis(1500);

/// Most burst messages in flight between publisher and dashboard. Mosquitto
/// queues at most 1000 messages per subscriber (`max_queued_messages`) and drops
/// the rest, QoS 1 and 2 included: the window stays well below that.
const BURST_WINDOW: u64 = 256;

const OBSERVATIONS: &[ObsSpec] = &[
    ObsSpec::number("published_qos0", "readings published by the QoS 0 sensors"),
    ObsSpec::number("published_qos1", "readings published by the QoS 1 sensors"),
    ObsSpec::number("published_qos2", "readings published by the QoS 2 sensors"),
    ObsSpec::number(
        "received_qos0",
        "distinct QoS 0 readings the dashboard received",
    ),
    ObsSpec::number(
        "received_qos1",
        "distinct QoS 1 readings the dashboard received",
    ),
    ObsSpec::number(
        "received_qos2",
        "distinct QoS 2 readings the dashboard received",
    ),
    ObsSpec::number(
        "published_while_offline",
        "readings published (all levels) while the dashboard was away: after the broker \
         published its will, before it reconnected",
    ),
    ObsSpec::number(
        "published_while_offline_qos0",
        "QoS 0 readings published while the dashboard was away",
    ),
    ObsSpec::number(
        "published_while_offline_qos1",
        "QoS 1 readings published while the dashboard was away",
    ),
    ObsSpec::number(
        "published_while_offline_qos2",
        "QoS 2 readings published while the dashboard was away",
    ),
    ObsSpec::number(
        "missing_while_offline",
        "readings published while the dashboard was away that never reached it (all levels)",
    ),
    ObsSpec::number(
        "missing_while_offline_qos0",
        "QoS 0 readings published while the dashboard was away that never reached it",
    ),
    ObsSpec::number(
        "missing_while_offline_qos1",
        "QoS 1 readings published while the dashboard was away that never reached it",
    ),
    ObsSpec::number(
        "missing_while_offline_qos2",
        "QoS 2 readings published while the dashboard was away that never reached it",
    ),
    ObsSpec::flag(
        "session_resumed",
        "the dashboard's reconnect found its session (subscriptions and queued messages) on the broker",
    ),
    ObsSpec::number(
        "duplicates",
        "deliveries of a reading the dashboard had already received (all levels)",
    ),
    ObsSpec::number("duplicates_qos1", "repeated deliveries of QoS 1 readings"),
    ObsSpec::number("duplicates_qos2", "repeated deliveries of QoS 2 readings"),
    ObsSpec::number(
        "resent_qos1",
        "PUBLISH packets the QoS 1 sensors sent again after reconnecting (never acknowledged)",
    ),
    ObsSpec::number(
        "resent_qos2",
        "PUBLISH packets the QoS 2 sensors sent again after reconnecting (never acknowledged)",
    ),
    ObsSpec::number(
        "sensor_reconnects",
        "times sensors connected again after their first connection",
    ),
    ObsSpec::number(
        "will_received",
        "`offline` last-will messages the dashboard received",
    ),
    ObsSpec::number(
        "retained_received",
        "sensors whose reading a late subscriber got at once (retained)",
    ),
    ObsSpec::number(
        "retained_latest",
        "of those, readings that were the sensor's last one",
    ),
    ObsSpec::number(
        "payload_bytes",
        "average reading payload (JSON) in bytes (with wire_samples)",
    ),
    ObsSpec::number(
        "bytes_per_message_mqtt",
        "bytes the client sent per reading as an MQTT QoS 0 PUBLISH (with wire_samples)",
    ),
    ObsSpec::number(
        "bytes_per_message_http",
        "bytes the client sent per reading as an HTTP/1.1 POST (with wire_samples)",
    ),
    ObsSpec::number(
        "http_overhead_ratio",
        "bytes_per_message_http / bytes_per_message_mqtt (with wire_samples)",
    ),
    ObsSpec::text(
        "http_target",
        "who answered the POSTs: `agent` or `local` (with wire_samples)",
    ),
    ObsSpec::number(
        "burst_received",
        "burst messages the dashboard received (with burst)",
    ),
    ObsSpec::number(
        "msgs_per_s",
        "burst messages per second through the broker, first publish to last delivery (with burst)",
    ),
];

#[async_trait]
impl Exercise for MqttTelemetry {
    fn name(&self) -> &'static str {
        "mqtt-telemetry"
    }

    fn summary(&self) -> &'static str {
        "sensors publish readings over MQTT at QoS 0, 1 and 2 to a wildcard dashboard; subscriber outages, lost acks, crashes, retained messages, bytes on the wire"
    }

    fn needs(&self) -> &'static [&'static str] {
        &["mosquitto"]
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "service",
                kind: ParamKind::Text,
                default: Value::from("mosquitto"),
                doc: "the Mosquitto service (by name) the clients use; its config decides what it queues",
            },
            ParamSpec::int(
                "sensors",
                3,
                90,
                6,
                "simulated sensors; sensor sN publishes at QoS N mod 3",
            ),
            ParamSpec::int("rounds", 3, 10_000, 30, "readings per sensor"),
            ParamSpec::int("rate_hz", 1, 1000, 20, "readings per second per sensor"),
            ParamSpec::flag(
                "offline",
                false,
                "the dashboard's connection dies for the middle third of the rounds, then it reconnects",
            ),
            ParamSpec::flag(
                "persistent",
                true,
                "the dashboard connects with clean session off (the broker keeps its session while it is away)",
            ),
            ParamSpec::flag(
                "flap_sensors",
                false,
                "halfway, the broker's acks of one round are lost and the sensors' links drop; sensors reconnect",
            ),
            ParamSpec::flag(
                "retain",
                false,
                "readings are published retained (a late subscriber gets each sensor's last one)",
            ),
            ParamSpec::choice(
                "sensor_exit",
                &["none", "crash", "disconnect"],
                "none",
                "how one sensor leaves at the end: its TCP connection dropped, or a proper DISCONNECT",
            ),
            ParamSpec::int(
                "wire_samples",
                0,
                100_000,
                0,
                "readings sent once over MQTT and once as HTTP POST to count bytes on the wire (0: skip)",
            ),
            ParamSpec::int(
                "burst",
                0,
                1_000_000,
                0,
                "messages published as fast as the broker delivers them, to measure msgs_per_s (0: skip)",
            ),
            ParamSpec::int("burst_qos", 0, 2, 1, "QoS of the burst messages"),
        ]
    }

    fn observations(&self) -> &'static [ObsSpec] {
        OBSERVATIONS
    }

    fn milestones(&self) -> &'static [Milestone] {
        const {
            &[
                Milestone::new("sensors-started", "every sensor is connected"),
                Milestone::new("dashboard-offline", "the dashboard went offline"),
                Milestone::new("dashboard-back", "the dashboard reconnected"),
                Milestone::new(
                    "sensor-acks-lost",
                    "the sensors' acknowledgements start being dropped",
                ),
                Milestone::new("sensor-links-cut", "the sensors' links were cut"),
                Milestone::new("readings-published", "every reading is published"),
                Milestone::new("sensor-crashed", "a sensor died without DISCONNECT"),
                Milestone::new("sensor-disconnected", "a sensor disconnected cleanly"),
                Milestone::new(
                    "late-subscriber-done",
                    "the late subscriber got the retained readings",
                ),
                Milestone::new("wire-measured", "bytes on the wire were counted"),
                Milestone::new("burst-started", "the burst publisher starts"),
                Milestone::new(
                    "burst-finished",
                    "the burst's deliveries arrived (or stopped coming)",
                ),
            ]
        }
    }

    async fn run(&self, ctx: &Ctx) -> Result<Observations, ExerciseError> {
        let cfg = Config::from(ctx);
        let net = Net::new(ctx)?;
        let board = Arc::new(Board::new(&net.root));
        let mut obs = Observations::new();

        let mut lab = connect_all(&cfg, &net, &board).await?;
        ctx.mark("sensors-started");
        let published = stream(ctx, &cfg, &net, &board, &mut lab).await;
        let published = match published {
            Ok(p) => p,
            Err(e) => {
                lab.tidy_up(&net).await;
                return Err(e);
            }
        };
        ctx.mark("readings-published");
        // Everything published that can still arrive, has (or stays away for `QUIET`).
        board
            .wait(
                |t| {
                    published
                        .iter()
                        .all(|p| t.deliveries.contains_key(&p.key()))
                },
                QUIET,
                DEADLINE,
            )
            .await;

        if cfg.sensor_exit != "none" {
            one_sensor_leaves(ctx, &cfg, &board, &mut lab.fleet).await;
        }
        let late = retained_check(&cfg, &net, &published).await;
        ctx.mark("late-subscriber-done");
        let extras = async {
            late?.insert_into(&mut obs);
            if cfg.wire_samples > 0 {
                measure_wire(ctx, &cfg, &net, &mut obs).await?;
                ctx.mark("wire-measured");
            }
            if cfg.burst > 0 {
                ctx.mark("burst-started");
                let (received, rate) = burst(&board, &cfg, &net).await?;
                ctx.mark("burst-finished");
                obs.insert("burst_received".into(), Value::from(received));
                obs.insert("msgs_per_s".into(), Value::from(rate.map(f64::round)));
            }
            Ok::<_, ExerciseError>(())
        }
        .await;

        let tally = board.tally().clone_counts();
        lab.tidy_up(&net).await;
        extras?;
        count_per_level(&cfg, &lab.fleet, &published, &tally, &mut obs);
        Ok(obs)
    }
}

/// Where the broker is and the names this scenario uses on it.
struct Net {
    host: String,
    port: u16,
    /// Topic prefix: the scenario's namespace, topic-safe.
    root: String,
    /// Client id prefix.
    ids: String,
}

impl Net {
    /// The Mosquitto service named by the `service` parameter.
    fn new(ctx: &Ctx) -> Result<Net, ExerciseError> {
        let name = ctx.text("service");
        let broker = ctx.services.get(name).ok_or_else(|| {
            ExerciseError(format!(
                "the lab has no service `{name}` (services: {})",
                ctx.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if broker.kind != "mosquitto" {
            return Err(ExerciseError(format!(
                "service `{name}` is a {}, not mosquitto",
                broker.kind
            )));
        }
        let root = topic_root(&ctx.namespace);
        Ok(Net {
            host: broker.host.clone(),
            port: broker.port(),
            ids: root.replace('/', "-"),
            root,
        })
    }

    /// Options for a client of this scenario (`{ids}-{name}`).
    fn options(&self, name: &str) -> MqttOptions {
        mqtt::options(format!("{}-{name}", self.ids), self.host.clone(), self.port)
    }

    /// The topic of the dashboard's last will.
    fn dashboard_will(&self) -> String {
        format!("{}/dashboard/status", self.root)
    }
}

/// The connected clients of a scenario.
struct Fleet {
    dashboard: Dashboard,
    /// Every sensor connects through it, so its links can lose acks and drop.
    relay: Relay,
    fleet: Vec<Sensor>,
}

impl Fleet {
    /// Goodbyes, and no retained messages left behind.
    async fn tidy_up(&mut self, net: &Net) {
        for sensor in &mut self.fleet {
            sensor.disconnect().await;
        }
        self.dashboard.disconnect().await;
        let topics: Vec<String> = self
            .fleet
            .iter()
            .flat_map(|s| [s.temperature.clone(), s.status.clone()])
            .collect();
        clear_retained(net.options("cleanup"), &topics).await;
        self.relay.cut();
    }
}

/// Options for the dashboard: its session kept or not, and a last will, so
/// the exercise can tell when the broker has noticed it is gone.
fn dashboard_options(cfg: &Config, net: &Net) -> MqttOptions {
    let mut o = net.options("dashboard");
    o.set_clean_session(!cfg.persistent)
        .set_last_will(LastWill::new(
            net.dashboard_will(),
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
    o
}

/// The dashboard, then the fleet, every sensor behind one relay.
async fn connect_all(cfg: &Config, net: &Net, board: &Arc<Board>) -> Result<Fleet, ExerciseError> {
    let dashboard = Dashboard::connect(board, dashboard_options(cfg, net)).await?;
    let relay = Relay::start(format!("{}:{}", net.host, net.port))
        .await
        .doing("starting the sensors' relay")?;
    let fleet = (0..cfg.sensors)
        .map(|idx| Sensor::start(idx, net, relay.port(), board))
        .collect();
    let mut lab = Fleet {
        dashboard,
        relay,
        fleet,
    };
    let connected = board
        .wait(
            |t| t.sensor_connects >= cfg.sensors as u64,
            DEADLINE,
            DEADLINE,
        )
        .await;
    if !connected {
        lab.tidy_up(net).await;
        return Err(ExerciseError(
            "the sensors could not connect to the broker".into(),
        ));
    }
    Ok(lab)
}

/// The stream: one reading per sensor per round, paced; the dashboard goes
/// away for the middle third (`offline`), the sensors' acks get lost halfway
/// (`flap_sensors`).
async fn stream(
    ctx: &Ctx,
    cfg: &Config,
    net: &Net,
    board: &Arc<Board>,
    lab: &mut Fleet,
) -> Result<Vec<Published>, ExerciseError> {
    let mut published: Vec<Published> = Vec::new();
    let mut away = false;
    let mut witness: Option<mqtt::Watcher> = None;
    let (leave_at, back_at) = (cfg.rounds / 3, 2 * cfg.rounds / 3);
    let mut tick = pacer(cfg.rate_hz as f64);
    for seq in 0..cfg.rounds {
        tick.tick().await;
        if cfg.offline && seq == leave_at {
            witness = Some(dashboard_goes_away(cfg, net, board, &mut lab.dashboard, seq).await?);
            away = true;
            ctx.mark("dashboard-offline");
        }
        if cfg.offline && seq == back_at {
            if let Some(mut w) = witness.take() {
                // The broker has routed every reading of the outage (queued it
                // for the dashboard's session, or dropped it) before it returns.
                let n = published.iter().filter(|p| p.away).count();
                if w.wait_count(n, DEADLINE).await < n {
                    return Err(ExerciseError(format!(
                        "the broker did not route the {n} readings of the outage within {DEADLINE:?}"
                    )));
                }
                w.close().await;
            }
            lab.dashboard = Dashboard::connect(board, dashboard_options(cfg, net)).await?;
            away = false;
            ctx.mark("dashboard-back");
        }
        let flap = cfg.flap_sensors && seq == cfg.rounds / 2;
        if flap {
            lab.relay.blackhole(true);
            ctx.mark("sensor-acks-lost");
        }
        let dropped_before = lab.relay.dropped();
        for sensor in &lab.fleet {
            sensor
                .client
                .publish(
                    &sensor.temperature,
                    sensor.qos,
                    cfg.retain,
                    reading(sensor.idx, seq),
                )
                .await
                .doing("publishing a reading")?;
            published.push(Published {
                sensor: sensor.idx,
                level: sensor.level,
                seq,
                away,
            });
        }
        if flap {
            // The broker has answered (4 bytes of PUBACK or PUBREC per QoS
            // 1/2 reading) and the answers are gone: now the links die.
            let acks = 4 * lab
                .fleet
                .iter()
                .filter(|s| s.qos != QoS::AtMostOnce)
                .count() as u64;
            let deadline = Instant::now() + Duration::from_secs(2);
            while lab.relay.dropped() < dropped_before + acks && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lab.relay.cut();
            ctx.mark("sensor-links-cut");
        }
    }
    Ok(published)
}

/// The dashboard's connection dies (no DISCONNECT); returns once the broker
/// has noticed (it published the dashboard's will), so every reading from
/// now on is published while the broker knows the dashboard is away. Also
/// returns a witness subscribed to every sensor's readings: once it has the
/// outage's readings, the broker has routed them, and the dashboard may return.
async fn dashboard_goes_away(
    cfg: &Config,
    net: &Net,
    board: &Arc<Board>,
    dashboard: &mut Dashboard,
    seq: u64,
) -> Result<mqtt::Watcher, ExerciseError> {
    // Everything so far has arrived, and every QoS 2 handshake is complete:
    // what goes missing from now on went missing because the dashboard was
    // away. (A new client process knows nothing of a half-done handshake;
    // rumqttc then rejects the broker's PUBREL and cannot reconnect.)
    board
        .wait(
            |t| t.has_all_before(cfg.sensors, seq) && t.qos2_open <= 0,
            QUIET,
            DEADLINE,
        )
        .await;
    let watcher = mqtt::Watcher::subscribe(net.options("will-watcher"), &net.dashboard_will())
        .await
        .doing("watching for the dashboard's will")?;
    let witness = mqtt::Watcher::subscribe(
        net.options("witness"),
        &format!("{}/sensors/+/temperature", net.root),
    )
    .await
    .doing("subscribing the outage's witness")?;
    dashboard.crash().await;
    if !watcher.wait_for(b"offline", DEADLINE).await {
        return Err(ExerciseError(format!(
            "the broker did not publish the dashboard's will within {DEADLINE:?}"
        )));
    }
    Ok(witness)
}

/// One sensor leaves at the end: crashes (its will is published) or says goodbye.
async fn one_sensor_leaves(ctx: &Ctx, cfg: &Config, board: &Arc<Board>, fleet: &mut [Sensor]) {
    let wills_before = board.tally().wills;
    let last = fleet.last_mut().expect("at least three sensors");
    if cfg.sensor_exit == "crash" {
        last.crash().await;
        ctx.mark("sensor-crashed");
    } else {
        last.disconnect().await;
        ctx.mark("sensor-disconnected");
    }
    board
        .wait(|t| t.wills > wills_before, WILL_WAIT, WILL_WAIT)
        .await;
}

/// What a subscriber arriving after the stream got at once.
struct Retained {
    /// Sensors whose reading came retained.
    received: usize,
    /// Of those, readings that were the sensor's last one.
    latest: usize,
}

impl Retained {
    fn insert_into(self, obs: &mut Observations) {
        obs.insert("retained_received".into(), Value::from(self.received));
        obs.insert("retained_latest".into(), Value::from(self.latest));
    }
}

/// A subscriber that arrives after the stream: which sensors' last readings
/// does the broker hand it at once?
async fn retained_check(
    cfg: &Config,
    net: &Net,
    published: &[Published],
) -> Result<Retained, ExerciseError> {
    let mut latest: BTreeMap<usize, u64> = BTreeMap::new();
    for p in published {
        let e = latest.entry(p.sensor).or_insert(p.seq);
        *e = (*e).max(p.seq);
    }
    let retained = late_subscriber(net.options("late"), &net.root, cfg.sensors)
        .await
        .doing("running the late subscriber")?;
    Ok(Retained {
        received: retained.len(),
        latest: retained
            .iter()
            .filter(|(s, q)| latest.get(s) == Some(q))
            .count(),
    })
}

/// Per QoS level: what was published, received, missed while away, duplicated
/// and resent, from the dashboard's tally and the sensors' own packet counts.
fn count_per_level(
    cfg: &Config,
    fleet: &[Sensor],
    published: &[Published],
    tally: &Tally,
    obs: &mut Observations,
) {
    let level = |s: usize| fleet[s].level;
    let mut per_level = [LevelCounts::default(); 3];
    for p in published {
        let l = &mut per_level[p.level];
        l.published += 1;
        if p.away {
            l.while_away += 1;
            if !tally.deliveries.contains_key(&p.key()) {
                l.missing += 1;
            }
        }
    }
    for (&(s, _), &n) in &tally.deliveries {
        let l = &mut per_level[level(s)];
        l.received += 1;
        l.duplicates += u64::from(n) - 1;
    }
    for (n, l) in per_level.iter().enumerate() {
        obs.insert(format!("published_qos{n}"), Value::from(l.published));
        obs.insert(
            format!("published_while_offline_qos{n}"),
            Value::from(l.while_away),
        );
        obs.insert(format!("received_qos{n}"), Value::from(l.received));
        obs.insert(
            format!("missing_while_offline_qos{n}"),
            Value::from(l.missing),
        );
    }
    let sum = |f: fn(&LevelCounts) -> u64| per_level.iter().map(f).sum::<u64>();
    obs.insert(
        "published_while_offline".into(),
        Value::from(sum(|l| l.while_away)),
    );
    obs.insert(
        "missing_while_offline".into(),
        Value::from(sum(|l| l.missing)),
    );
    obs.insert("duplicates".into(), Value::from(sum(|l| l.duplicates)));
    obs.insert(
        "duplicates_qos1".into(),
        Value::from(per_level[1].duplicates),
    );
    obs.insert(
        "duplicates_qos2".into(),
        Value::from(per_level[2].duplicates),
    );
    for n in [1, 2] {
        // Sent minus what was asked for: readings, and `online` on each connect.
        let asked = per_level[n].published + tally.connects_by_level[n];
        obs.insert(
            format!("resent_qos{n}"),
            Value::from(tally.sent_by_level[n].saturating_sub(asked)),
        );
    }
    obs.insert(
        "session_resumed".into(),
        Value::from(tally.sessions_resumed > 0),
    );
    obs.insert(
        "sensor_reconnects".into(),
        Value::from(tally.sensor_connects.saturating_sub(cfg.sensors as u64)),
    );
    obs.insert("will_received".into(), Value::from(tally.wills));
}

struct Config {
    sensors: usize,
    rounds: u64,
    rate_hz: i64,
    offline: bool,
    persistent: bool,
    flap_sensors: bool,
    retain: bool,
    sensor_exit: String,
    wire_samples: usize,
    burst: u64,
    burst_qos: QoS,
}

impl From<&Ctx> for Config {
    fn from(ctx: &Ctx) -> Self {
        Config {
            sensors: ctx.int("sensors").max(3) as usize,
            rounds: ctx.int("rounds").max(3) as u64,
            rate_hz: ctx.int("rate_hz").max(1),
            offline: ctx.flag("offline"),
            persistent: ctx.flag("persistent"),
            flap_sensors: ctx.flag("flap_sensors"),
            retain: ctx.flag("retain"),
            sensor_exit: ctx.text("sensor_exit").to_string(),
            wire_samples: ctx.int("wire_samples").max(0) as usize,
            burst: ctx.int("burst").max(0) as u64,
            burst_qos: LEVELS[ctx.int("burst_qos").clamp(0, 2) as usize],
        }
    }
}

#[derive(Default, Clone, Copy)]
struct LevelCounts {
    published: u64,
    received: u64,
    while_away: u64,
    missing: u64,
    duplicates: u64,
}

struct Published {
    sensor: usize,
    /// The sensor's QoS level (0, 1, 2).
    level: usize,
    seq: u64,
    away: bool,
}

impl Published {
    /// How the dashboard's tally knows this reading.
    fn key(&self) -> (usize, u64) {
        (self.sensor, self.seq)
    }
}

/// One reading, as JSON: the same bytes go over MQTT and HTTP.
#[derive(Serialize, Deserialize)]
struct Reading {
    sensor: String,
    seq: u64,
    celsius: f64,
}

fn reading(sensor: usize, seq: u64) -> Vec<u8> {
    // A plausible, deterministic temperature between 18.0 and 25.9 °C.
    let tenths = (sensor as u64 * 37 + seq * 11) % 80;
    let r = Reading {
        sensor: format!("s{sensor}"),
        seq,
        celsius: 18.0 + tenths as f64 / 10.0,
    };
    serde_json::to_vec(&r).expect("a reading serializes")
}

/// `sN` from a topic `ROOT/sensors/sN/KIND`, with the kind.
fn parse_topic<'a>(root: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = topic.strip_prefix(root)?.strip_prefix("/sensors/")?;
    rest.split_once('/')
}

fn sensor_index(id: &str) -> Option<usize> {
    id.strip_prefix('s')?.parse().ok()
}

/// What the dashboard has seen, shared with its event-loop task.
#[derive(Default)]
struct Tally {
    /// (sensor, seq) → times delivered (live deliveries only, not retained replays).
    deliveries: HashMap<(usize, u64), u32>,
    /// Live `offline` messages on status topics.
    wills: u64,
    /// QoS 2 messages received whose handshake (PUBREL, PUBCOMP) is still open.
    qos2_open: i64,
    /// Times the dashboard became ready: subscribed, or its session resumed.
    ready: u64,
    sessions_resumed: u64,
    sensor_connects: u64,
    /// Per QoS level of the sensors: connections made (each announces `online`).
    connects_by_level: [u64; 3],
    /// Per QoS level: PUBLISH packets the sensors put on the wire, resends included.
    sent_by_level: [u64; 3],
    burst_received: u64,
    burst_last: Option<Instant>,
}

impl Tally {
    fn has_all_before(&self, sensors: usize, seq: u64) -> bool {
        (0..sensors).all(|s| (0..seq).all(|q| self.deliveries.contains_key(&(s, q))))
    }

    fn clone_counts(&self) -> Tally {
        Tally {
            deliveries: self.deliveries.clone(),
            wills: self.wills,
            qos2_open: self.qos2_open,
            ready: self.ready,
            sessions_resumed: self.sessions_resumed,
            sensor_connects: self.sensor_connects,
            connects_by_level: self.connects_by_level,
            sent_by_level: self.sent_by_level,
            burst_received: self.burst_received,
            burst_last: self.burst_last,
        }
    }
}

struct Board {
    root: String,
    tally: Mutex<Tally>,
    changed: watch::Sender<u64>,
}

impl Board {
    fn new(root: &str) -> Self {
        Board {
            root: root.to_string(),
            tally: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self.tally());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until `done` holds; gives up when nothing happened for `quiet` or
    /// after `deadline`. Returns whether `done` held.
    async fn wait(
        &self,
        done: impl Fn(&Tally) -> bool,
        quiet: Duration,
        deadline: Duration,
    ) -> bool {
        let mut rx = self.changed.subscribe();
        let until = Instant::now() + deadline;
        loop {
            if done(&self.tally()) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(quiet.min(left), rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return done(&self.tally()),
            }
        }
    }

    fn on_publish(&self, p: &Publish) {
        // Retained replays (on subscribing) are not deliveries of the stream.
        if p.retain {
            return;
        }
        let Some((id, kind)) = parse_topic(&self.root, &p.topic) else {
            return;
        };
        match kind {
            "temperature" if id == "burst" => self.update(|t| {
                t.burst_received += 1;
                t.burst_last = Some(Instant::now());
            }),
            "temperature" => {
                if let (Some(s), Ok(r)) = (
                    sensor_index(id),
                    serde_json::from_slice::<Reading>(&p.payload),
                ) {
                    self.update(|t| *t.deliveries.entry((s, r.seq)).or_default() += 1);
                }
            }
            "status" if &p.payload[..] == b"offline" => self.update(|t| t.wills += 1),
            _ => {}
        }
    }
}

/// Aborts its task when dropped, so an early return leaves nothing running.
struct Task(Option<JoinHandle<()>>);

impl Task {
    /// Aborts the task and waits until it is gone (its sockets are closed).
    async fn stop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
            let _ = h.await;
        }
    }

    /// Waits for the task to end on its own, at most `limit`, then aborts it.
    async fn join(&mut self, limit: Duration) {
        if let Some(h) = self.0.as_mut()
            && tokio::time::timeout(limit, h).await.is_ok()
        {
            self.0 = None;
        }
        self.stop().await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// The dashboard: one subscriber with a wildcard on every sensor.
struct Dashboard {
    client: AsyncClient,
    task: Task,
}

impl Dashboard {
    /// Connects and waits until it is subscribed (or found its session).
    async fn connect(board: &Arc<Board>, options: MqttOptions) -> Result<Self, ExerciseError> {
        let (client, eventloop) = AsyncClient::new(options, 64);
        let ready_before = board.tally().ready;
        let filters = vec![
            SubscribeFilter::new(
                format!("{}/sensors/+/temperature", board.root),
                QoS::ExactlyOnce,
            ),
            SubscribeFilter::new(format!("{}/sensors/+/status", board.root), QoS::AtLeastOnce),
        ];
        let task = Task(Some(tokio::spawn(dashboard_loop(
            eventloop,
            client.clone(),
            board.clone(),
            filters,
        ))));
        let ready = board
            .wait(|t| t.ready > ready_before, DEADLINE, DEADLINE)
            .await;
        if !ready {
            return Err(ExerciseError(
                "the dashboard could not connect and subscribe to the broker".into(),
            ));
        }
        Ok(Dashboard { client, task })
    }

    /// Dies without a DISCONNECT: the socket just closes.
    async fn crash(&mut self) {
        self.task.stop().await;
    }

    async fn disconnect(&mut self) {
        let _ = self.client.try_disconnect();
        self.task.join(Duration::from_secs(2)).await;
    }
}

async fn dashboard_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    board: Arc<Board>,
    filters: Vec<SubscribeFilter>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.session_present {
                    // The broker kept the subscriptions: nothing to resend.
                    board.update(|t| {
                        t.sessions_resumed += 1;
                        t.ready += 1;
                    });
                } else {
                    let _ = client.try_subscribe_many(filters.clone());
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => board.update(|t| t.ready += 1),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.qos == QoS::ExactlyOnce {
                    board.update(|t| t.qos2_open += 1);
                }
                board.on_publish(&p);
            }
            Ok(Event::Outgoing(Outgoing::PubComp(_))) => board.update(|t| t.qos2_open -= 1),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            // The next poll reconnects (e.g. after a broker restart).
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One simulated sensor: persistent session, last will, `online` on connect.
struct Sensor {
    idx: usize,
    level: usize,
    qos: QoS,
    temperature: String,
    status: String,
    client: AsyncClient,
    leaving: Arc<AtomicBool>,
    task: Task,
}

impl Sensor {
    fn start(idx: usize, net: &Net, relay_port: u16, board: &Arc<Board>) -> Self {
        let level = idx % 3;
        let root = &net.root;
        let temperature = format!("{root}/sensors/s{idx}/temperature");
        let status = format!("{root}/sensors/s{idx}/status");
        let mut options = mqtt::options(format!("{}-s{idx}", net.ids), "127.0.0.1", relay_port);
        options
            .set_clean_session(false)
            .set_last_will(LastWill::new(&status, "offline", QoS::AtLeastOnce, true));
        let (client, eventloop) = AsyncClient::new(options, 256);
        let leaving = Arc::new(AtomicBool::new(false));
        let task = Task(Some(tokio::spawn(sensor_loop(
            eventloop,
            client.clone(),
            board.clone(),
            level,
            status.clone(),
            leaving.clone(),
        ))));
        Sensor {
            idx,
            level,
            qos: LEVELS[level],
            temperature,
            status,
            client,
            leaving,
            task,
        }
    }

    /// The process dies: its TCP connection closes without DISCONNECT.
    async fn crash(&mut self) {
        self.leaving.store(true, Ordering::SeqCst);
        self.task.stop().await;
    }

    /// A proper goodbye: DISCONNECT, so the broker discards the will.
    async fn disconnect(&mut self) {
        if self.task.0.is_none() {
            return;
        }
        self.leaving.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        self.task.join(Duration::from_secs(2)).await;
    }
}

async fn sensor_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    board: Arc<Board>,
    level: usize,
    status: String,
    leaving: Arc<AtomicBool>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                board.update(|t| {
                    t.sensor_connects += 1;
                    t.connects_by_level[level] += 1;
                });
                let _ = client.try_publish(&status, QoS::AtLeastOnce, true, "online");
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                board.update(|t| t.sent_by_level[level] += 1);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(_) if leaving.load(Ordering::SeqCst) => return,
            // rumqttc keeps what was not acknowledged and resends it after the
            // next poll has reconnected (the session is persistent).
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A fresh subscriber after the stream: which sensors' readings does it get
/// at once, as retained messages? Returns sensor → seq.
async fn late_subscriber(
    options: MqttOptions,
    root: &str,
    sensors: usize,
) -> Result<BTreeMap<usize, u64>, String> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut got = BTreeMap::new();
    let mut subscribed_at: Option<Instant> = None;
    let deadline = Instant::now() + DEADLINE;
    loop {
        if got.len() >= sensors {
            break;
        }
        if subscribed_at.is_some_and(|at| at.elapsed() >= RETAINED_WAIT) {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err("no answer from the broker".into());
        }
        let limit = match subscribed_at {
            Some(at) => RETAINED_WAIT.saturating_sub(at.elapsed()),
            None => deadline - now,
        };
        let event = match tokio::time::timeout(limit, eventloop.poll()).await {
            Err(_) => continue,
            Ok(e) => e.map_err(|e| e.to_string())?,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                client
                    .try_subscribe(format!("{root}/sensors/+/temperature"), QoS::AtLeastOnce)
                    .map_err(|e| e.to_string())?;
            }
            Event::Incoming(Packet::SubAck(_)) => subscribed_at = Some(Instant::now()),
            Event::Incoming(Packet::Publish(p)) if p.retain && !p.payload.is_empty() => {
                if let (Some((id, "temperature")), Ok(r)) = (
                    parse_topic(root, &p.topic),
                    serde_json::from_slice::<Reading>(&p.payload),
                ) && let Some(s) = sensor_index(id)
                {
                    got.insert(s, r.seq);
                }
            }
            _ => {}
        }
    }
    disconnect(&client, &mut eventloop).await;
    Ok(got)
}

/// Publishes `burst` messages as fast as the dashboard receives them (at most
/// [`BURST_WINDOW`] ahead) and returns (received, messages per second; none
/// when nothing arrived).
async fn burst(
    board: &Arc<Board>,
    cfg: &Config,
    net: &Net,
) -> Result<(u64, Option<f64>), ExerciseError> {
    let root = &net.root;
    let (client, mut eventloop) = AsyncClient::new(net.options("burst"), 1024);
    let connected = Arc::new(AtomicU64::new(0));
    let flag = connected.clone();
    let mut task = Task(Some(tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    flag.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })));
    let deadline = Instant::now() + DEADLINE;
    while connected.load(Ordering::SeqCst) == 0 {
        if Instant::now() >= deadline {
            return Err(ExerciseError(
                "the burst publisher could not connect".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let topic = format!("{root}/sensors/burst/temperature");
    let before = board.tally().burst_received;
    let received = || board.tally().burst_received - before;
    let started = Instant::now();
    for seq in 0..cfg.burst {
        if seq >= received() + BURST_WINDOW {
            let ok = board
                .wait(
                    |t| seq < t.burst_received - before + BURST_WINDOW,
                    Duration::from_secs(2),
                    DEADLINE,
                )
                .await;
            if !ok {
                break; // The broker stopped delivering: report what arrived.
            }
        }
        client
            .publish(&topic, cfg.burst_qos, false, reading(0, seq))
            .await
            .doing("publishing a burst message")?;
    }
    board
        .wait(
            |t| t.burst_received - before >= cfg.burst,
            Duration::from_secs(2),
            DEADLINE,
        )
        .await;
    let (count, last) = {
        let t = board.tally();
        (t.burst_received - before, t.burst_last)
    };
    let _ = client.try_disconnect();
    task.join(Duration::from_secs(2)).await;
    let elapsed = last
        .map(|l| l.saturating_duration_since(started))
        .unwrap_or_default()
        .as_secs_f64();
    Ok((count, (elapsed > 0.0).then(|| count as f64 / elapsed)))
}

/// Sends the same readings over MQTT and as HTTP POSTs through counting relays.
async fn measure_wire(
    ctx: &Ctx,
    cfg: &Config,
    net: &Net,
    obs: &mut Observations,
) -> Result<(), ExerciseError> {
    let (root, ids) = (&net.root, &net.ids);
    let broker = format!("{}:{}", net.host, net.port);
    let samples: Vec<wire::Sample> = (0..cfg.wire_samples)
        .map(|k| {
            let sensor = k % cfg.sensors;
            wire::Sample {
                topic: format!("{root}/sensors/s{sensor}/temperature"),
                payload: reading(sensor, (k / cfg.sensors) as u64),
            }
        })
        .collect();
    let n = samples.len() as f64;
    // A topic of its own, so the dashboard does not count these.
    let wire_root = format!("{root}/wire");
    let samples: Vec<wire::Sample> = samples
        .into_iter()
        .map(|s| wire::Sample {
            topic: s.topic.replacen(root, &wire_root, 1),
            payload: s.payload,
        })
        .collect();
    let mqtt = wire::mqtt_bytes(
        &broker,
        &format!("{ids}-wire"),
        &format!("{wire_root}/sensors/+/temperature"),
        &samples,
    )
    .await
    .doing("counting MQTT bytes")?;
    let agent = ctx.services.values().find(|e| e.kind == "agent");
    let local;
    let (target, who) = match agent {
        Some(a) => (format!("{}:{}", a.host, a.port()), "agent"),
        None => {
            local = wire::LocalHttp::start()
                .await
                .doing("starting a local HTTP server")?;
            (local.addr().to_string(), "local")
        }
    };
    let http = wire::http_bytes(&target, &samples)
        .await
        .doing("counting HTTP bytes")?;
    let payload: usize = samples.iter().map(|s| s.payload.len()).sum();
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let (per_mqtt, per_http) = (mqtt as f64 / n, http as f64 / n);
    obs.insert(
        "payload_bytes".into(),
        Value::from(round1(payload as f64 / n)),
    );
    obs.insert(
        "bytes_per_message_mqtt".into(),
        Value::from(round1(per_mqtt)),
    );
    obs.insert(
        "bytes_per_message_http".into(),
        Value::from(round1(per_http)),
    );
    obs.insert(
        "http_overhead_ratio".into(),
        Value::from((per_http / per_mqtt * 100.0).round() / 100.0),
    );
    obs.insert("http_target".into(), Value::from(who));
    Ok(())
}

/// Publishes an empty retained message on every topic: the broker forgets
/// what was retained there.
async fn clear_retained(options: MqttOptions, topics: &[String]) {
    let (client, mut eventloop) = AsyncClient::new(options, topics.len() + 8);
    for topic in topics {
        let _ = client.try_publish(topic.as_str(), QoS::AtLeastOnce, true, Vec::new());
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut acked = 0;
        while acked < topics.len() {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        disconnect(&client, &mut eventloop).await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_back() {
        let root = "infralab/r/s";
        assert_eq!(
            parse_topic(root, "infralab/r/s/sensors/s4/temperature"),
            Some(("s4", "temperature"))
        );
        assert_eq!(parse_topic(root, "other/sensors/s4/temperature"), None);
        assert_eq!(sensor_index("s12"), Some(12));
        assert_eq!(sensor_index("burst"), None);
    }

    #[test]
    fn readings_round_trip_and_stay_small() {
        let bytes = reading(5, 17);
        let r: Reading = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((r.sensor.as_str(), r.seq), ("s5", 17));
        assert!((18.0..26.0).contains(&r.celsius));
        assert!(bytes.len() < 60, "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn every_observation_and_param_is_documented_once() {
        let e = MqttTelemetry;
        let mut names: Vec<_> = e.observations().iter().map(|o| o.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        for p in e.params() {
            assert!(p.check(&p.default).is_ok(), "{}", p.name);
        }
    }

    #[tokio::test]
    async fn board_counts_live_deliveries_duplicates_and_wills() {
        let board = Board::new("r");
        let publish = |topic: &str, payload: Vec<u8>, retain: bool| {
            let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
            p.retain = retain;
            p
        };
        board.on_publish(&publish("r/sensors/s1/temperature", reading(1, 3), false));
        board.on_publish(&publish("r/sensors/s1/temperature", reading(1, 3), false));
        board.on_publish(&publish("r/sensors/s2/temperature", reading(2, 3), true));
        board.on_publish(&publish("r/sensors/s2/status", b"offline".to_vec(), false));
        board.on_publish(&publish("r/sensors/s2/status", b"offline".to_vec(), true));
        board.on_publish(&publish(
            "r/sensors/burst/temperature",
            reading(0, 0),
            false,
        ));
        let t = board.tally();
        assert_eq!(t.deliveries.get(&(1, 3)), Some(&2));
        assert_eq!(
            t.deliveries.get(&(2, 3)),
            None,
            "retained replays are not deliveries"
        );
        assert_eq!((t.wills, t.burst_received), (1, 1));
    }

    #[tokio::test]
    async fn board_wait_gives_up_when_quiet() {
        let board = Board::new("r");
        let started = Instant::now();
        let ok = board
            .wait(
                |t| t.wills > 0,
                Duration::from_millis(50),
                Duration::from_secs(5),
            )
            .await;
        assert!(!ok);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
