//! [`AgentRecord`]: a record the lab's agent keeps for a challenge's
//! harness (the ledger, the sink, the tickets), under the scenario's
//! namespace. Its URL goes to the learner's program; the harness sets it up
//! and reads it back with the same client.

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{Context, Ctx, ExerciseError};

/// How long one request to the agent may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One record on the agent: `AGENT/ROUTE/NAMESPACE`.
pub struct AgentRecord {
    /// The record's URL, as the program gets it.
    pub url: String,
    http: reqwest::Client,
}

impl AgentRecord {
    /// The scenario's record under `route` (`ledger`, `sink`, `tickets`) on
    /// the lab's `agent` service, which `serves` explains when it is missing.
    pub fn open(ctx: &Ctx, route: &str, serves: &str) -> Result<AgentRecord, ExerciseError> {
        let agent = ctx.service("agent").map_err(|_| {
            ExerciseError(format!(
                "the challenge needs an `agent` service: it serves {serves}"
            ))
        })?;
        let url = format!(
            "{}/{route}/{}",
            agent.url.trim_end_matches('/'),
            ctx.namespace.replace(':', "-")
        );
        let http = crate::client::http::client(TIMEOUT)?;
        Ok(AgentRecord { url, http })
    }

    /// `PUT URL/PATH` with a text `body`; `doing` names the step in errors.
    pub async fn put(&self, path: &str, body: String, doing: &str) -> Result<(), ExerciseError> {
        Self::send(
            self.http.put(format!("{}{path}", self.url)).body(body),
            doing,
        )
        .await
    }

    /// `PUT URL/PATH` with `value` as JSON.
    pub async fn put_json(
        &self,
        path: &str,
        value: &impl serde::Serialize,
        doing: &str,
    ) -> Result<(), ExerciseError> {
        Self::send(
            self.http.put(format!("{}{path}", self.url)).json(value),
            doing,
        )
        .await
    }

    async fn send(request: reqwest::RequestBuilder, doing: &str) -> Result<(), ExerciseError> {
        request
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .doing(doing)?;
        Ok(())
    }

    /// `GET URL/PATH` as JSON; `doing` names the step in errors.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        doing: &str,
    ) -> Result<T, ExerciseError> {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .doing(doing)?
            .json::<T>()
            .await
            .doing(doing)
    }
}
