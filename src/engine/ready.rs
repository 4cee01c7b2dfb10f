//! Readiness: probe the protocol (not the port: docker-proxy accepts TCP
//! before the service listens) with a short backoff under one deadline, and
//! fail fast with the container's last log lines when it exits.

use std::time::{Duration, Instant};

use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;

use super::{Engine, EnvError};
use crate::catalog::{Endpoint, ServiceKind};

const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(250);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until `kind`'s probe succeeds against `endpoint`.
pub async fn wait(
    engine: &Engine,
    kind: &dyn ServiceKind,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<(), EnvError> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, kind.probe(endpoint))
            .await
            .unwrap_or_else(|_| Err("probe timed out".into()));
        let why = match outcome {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        // Checking the container costs a round trip: do it every few attempts.
        if attempts.is_multiple_of(4) {
            check_running(engine, &endpoint.container, &endpoint.service).await?;
        }
        if Instant::now() + pause > deadline {
            check_running(engine, &endpoint.container, &endpoint.service).await?;
            let logs = last_logs(engine, &endpoint.container, 20).await;
            return Err(EnvError::hint(
                format!(
                    "`{}` ({}) was not ready after {:.1} s; last probe: {why}\n--- last log lines ---\n{logs}",
                    endpoint.service,
                    endpoint.kind,
                    timeout.as_secs_f64()
                ),
                "raise `ready_timeout` for this service in the lab file, or check the image with `infralab doctor`",
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(MAX_PAUSE);
    }
}

/// Fails with the container's logs if it is no longer running.
async fn check_running(engine: &Engine, container: &str, service: &str) -> Result<(), EnvError> {
    let info = super::compat::inspect_container(engine, container)
        .await
        .map_err(|e| EnvError::new(format!("cannot inspect `{service}`: {e}")))?;
    let state = info.state.unwrap_or_default();
    if state.running == Some(true) {
        return Ok(());
    }
    let logs = last_logs(engine, container, 20).await;
    Err(EnvError::hint(
        format!(
            "`{service}` exited during start (exit code {}){}\n--- last log lines ---\n{logs}",
            state.exit_code.unwrap_or_default(),
            state
                .error
                .filter(|e| !e.is_empty())
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
        ),
        "check the service's `command`, `env` and files in the lab file",
    ))
}

/// The last `n` lines the container wrote (stdout and stderr).
pub async fn last_logs(engine: &Engine, container: &str, n: usize) -> String {
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&n.to_string())
        .build();
    let mut stream = engine.docker.logs(container, Some(opts));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    if text.trim().is_empty() {
        "(no output)".into()
    } else {
        text.trim_end().to_string()
    }
}
