//! The environment contract: the variables the learner's program gets,
//! named the way client libraries already read them.
//!
//! | variable | value |
//! | --- | --- |
//! | `REDIS_URL` | the lab's first Redis service |
//! | `DATABASE_URL`, `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE` | the first PostgreSQL |
//! | `AMQP_URL` | the first RabbitMQ |
//! | `KAFKA_BOOTSTRAP_SERVERS` | the first Kafka broker (`host:port`) |
//! | `MQTT_URL` | the first Mosquitto |
//! | `HTTP_URL` | the first agent or Nginx service |
//! | `INFRALAB_URL_<SERVICE>` | every service (replicas too), by name |
//! | `INFRALAB_INSTANCE`, `INFRALAB_INSTANCES` | this instance (1..N), N |
//! | `INFRALAB_NAMESPACE` | prefix for keys, queues and topics |
//! | `INFRALAB_PARAM_<NAME>` | every parameter of the scenario |
//!
//! The harness may add its own endpoints (e.g. `LEDGER_URL`) when it starts
//! the program.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::catalog::Endpoint;

/// The shared environment of every instance (`INFRALAB_INSTANCE` is set per
/// instance when it starts). `services` are in the lab's order.
pub fn contract(
    services: &[Endpoint],
    namespace: &str,
    params: &BTreeMap<String, Value>,
    instances: u32,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut first = |key: &str, value: String| {
        env.entry(key.to_string()).or_insert(value);
    };
    for s in services {
        match s.kind.as_str() {
            "redis" => first("REDIS_URL", s.url.clone()),
            "postgres" => {
                first("DATABASE_URL", s.url.clone());
                first("PGHOST", s.host.clone());
                first("PGPORT", s.port().to_string());
                for (pg, var) in [
                    ("PGUSER", "POSTGRES_USER"),
                    ("PGPASSWORD", "POSTGRES_PASSWORD"),
                    ("PGDATABASE", "POSTGRES_DB"),
                ] {
                    if let Some(v) = s.env.get(var) {
                        first(pg, v.clone());
                    }
                }
            }
            "rabbitmq" => first("AMQP_URL", s.url.clone()),
            "kafka" => first("KAFKA_BOOTSTRAP_SERVERS", s.url.clone()),
            "mosquitto" => first("MQTT_URL", s.url.clone()),
            "agent" | "nginx" => first("HTTP_URL", s.url.clone()),
            _ => {}
        }
    }
    for s in services {
        env.insert(
            format!("INFRALAB_URL_{}", var_name(&s.service)),
            s.url.clone(),
        );
    }
    env.insert("INFRALAB_INSTANCES".into(), instances.to_string());
    env.insert("INFRALAB_NAMESPACE".into(), namespace.to_string());
    for (name, value) in params {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.insert(format!("INFRALAB_PARAM_{}", var_name(name)), text);
    }
    env
}

/// `web-2` → `WEB_2`, `ttl_ms` → `TTL_MS`.
pub fn var_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(service: &str, kind: &str, port: u16, url: &str) -> Endpoint {
        let spec = crate::catalog::spec(kind);
        Endpoint {
            service: service.into(),
            kind: kind.into(),
            host: "127.0.0.1".into(),
            ports: BTreeMap::from([(spec.ports[0].0.clone(), port)]),
            env: BTreeMap::from([
                ("POSTGRES_USER".into(), "lab".into()),
                ("POSTGRES_PASSWORD".into(), "secret".into()),
                ("POSTGRES_DB".into(), "labdb".into()),
            ]),
            url: url.into(),
            container: format!("c-{service}"),
        }
    }

    #[test]
    fn client_variables_name_the_first_service_of_each_kind() {
        let services = [
            endpoint("locks", "redis", 1001, "redis://127.0.0.1:1001"),
            endpoint("storage", "redis", 1002, "redis://127.0.0.1:1002"),
            endpoint(
                "db",
                "postgres",
                1003,
                "postgres://lab:secret@127.0.0.1:1003/labdb",
            ),
            endpoint("ledger", "agent", 1004, "http://127.0.0.1:1004"),
            endpoint("broker", "kafka", 1005, "127.0.0.1:1005"),
            endpoint("mq", "rabbitmq", 1006, "amqp://g:g@127.0.0.1:1006/%2f"),
            endpoint("web-2", "mosquitto", 1007, "mqtt://127.0.0.1:1007"),
        ];
        let params = BTreeMap::from([
            ("increments".to_string(), Value::from(10)),
            ("strategy".to_string(), Value::from("setnx")),
            ("fencing".to_string(), Value::from(true)),
        ]);
        let env = contract(&services, "infralab:ab:setnx", &params, 4);
        assert_eq!(env["REDIS_URL"], "redis://127.0.0.1:1001");
        assert_eq!(env["INFRALAB_URL_STORAGE"], "redis://127.0.0.1:1002");
        assert_eq!(env["INFRALAB_URL_WEB_2"], "mqtt://127.0.0.1:1007");
        assert_eq!(
            env["DATABASE_URL"],
            "postgres://lab:secret@127.0.0.1:1003/labdb"
        );
        assert_eq!(env["PGHOST"], "127.0.0.1");
        assert_eq!(env["PGPORT"], "1003");
        assert_eq!(env["PGUSER"], "lab");
        assert_eq!(env["PGPASSWORD"], "secret");
        assert_eq!(env["PGDATABASE"], "labdb");
        assert_eq!(env["HTTP_URL"], "http://127.0.0.1:1004");
        assert_eq!(env["KAFKA_BOOTSTRAP_SERVERS"], "127.0.0.1:1005");
        assert_eq!(env["AMQP_URL"], "amqp://g:g@127.0.0.1:1006/%2f");
        assert_eq!(env["MQTT_URL"], "mqtt://127.0.0.1:1007");
        assert_eq!(env["INFRALAB_INSTANCES"], "4");
        assert_eq!(env["INFRALAB_NAMESPACE"], "infralab:ab:setnx");
        assert_eq!(env["INFRALAB_PARAM_INCREMENTS"], "10");
        assert_eq!(env["INFRALAB_PARAM_STRATEGY"], "setnx");
        assert_eq!(env["INFRALAB_PARAM_FENCING"], "true");
        assert!(!env.contains_key("INFRALAB_INSTANCE"), "set per instance");
    }
}
