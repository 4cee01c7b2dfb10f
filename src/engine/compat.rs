//! Requests in the form every engine reads, Podman's compat API included.
//!
//! bollard sends the `changes` of an import (`POST /images/create?fromSrc=-`)
//! or a commit as *one* query parameter whose Dockerfile instructions are
//! joined by newlines. Docker joins its `changes` values with newlines and
//! parses the text as a Dockerfile, so that works there; Podman parses each
//! value as one instruction, so `ENTRYPOINT [...]\nCMD ...\nLABEL ...` becomes
//! one shell-form ENTRYPOINT and every later instruction (labels, env, cmd) is
//! lost. The docker CLI sends one `changes=` parameter per instruction, which
//! both engines read alike: [`repeat_changes`] rewrites the request into that
//! form.
//!
//! Podman also reports a container that exited and was cleaned up as
//! `"Status": "stopped"`, a state the Docker API does not have, so bollard
//! cannot read the answer of an inspect: [`inspect_container`] reads it as
//! `exited` instead.

use bollard::BollardRequest;
use bollard::models::ContainerInspectResponse;
use http_body_util::BodyExt;

use super::Engine;

/// Splits a newline-joined `changes` parameter of an import or commit into one
/// `changes` parameter per instruction; every other request passes unchanged.
pub fn repeat_changes(mut req: BollardRequest) -> BollardRequest {
    let uri = req.uri().to_string();
    let Some((base, query)) = uri.split_once('?') else {
        return req;
    };
    let path = base.rsplit_once("/v1.").map_or(base, |(_, p)| p);
    if !(path.ends_with("/images/create") || path.ends_with("/commit")) {
        return req;
    }
    let Some(query) = split_changes(query) else {
        return req;
    };
    match format!("{base}?{query}").parse() {
        Ok(new) => *req.uri_mut() = new,
        Err(e) => tracing::warn!("cannot rewrite the changes of {base}: {e}"),
    }
    req
}

/// The query with each `changes` value split at its (URL-encoded) newlines,
/// or None when there is nothing to split.
fn split_changes(query: &str) -> Option<String> {
    let mut split = false;
    let parts: Vec<String> = query
        .split('&')
        .flat_map(|pair| match pair.strip_prefix("changes=") {
            Some(value) if value.to_ascii_uppercase().contains("%0A") => {
                split = true;
                let mut out = Vec::new();
                let mut rest = value;
                while let Some(i) = rest.to_ascii_uppercase().find("%0A") {
                    out.push(&rest[..i]);
                    rest = &rest[i + 3..];
                }
                out.push(rest);
                out.into_iter()
                    .filter(|v| !v.is_empty())
                    .map(|v| format!("changes={v}"))
                    .collect::<Vec<_>>()
            }
            _ => vec![pair.to_string()],
        })
        .collect();
    split.then(|| parts.join("&"))
}

/// Inspects a container; when bollard cannot read the engine's answer (a
/// state it does not know), inspects it again over the engine's unix socket
/// and maps Podman's `stopped` to Docker's `exited`.
pub async fn inspect_container(
    engine: &Engine,
    container: &str,
) -> Result<ContainerInspectResponse, String> {
    let e = match engine.docker.inspect_container(container, None).await {
        Ok(info) => return Ok(info),
        Err(e) => e,
    };
    let unreadable = matches!(
        e,
        bollard::errors::Error::JsonDataError { .. }
            | bollard::errors::Error::JsonSerdeError { .. }
    );
    let socket = engine.host.strip_prefix("unix://");
    let (true, Some(socket)) = (unreadable, socket) else {
        return Err(e.to_string());
    };
    let mut json = raw_get(socket, &format!("/containers/{container}/json"))
        .await
        .map_err(|raw| format!("{e} (and read as JSON: {raw})"))?;
    docker_states(&mut json);
    serde_json::from_value(json).map_err(|again| format!("{e} (and with `exited`: {again})"))
}

/// Podman's `stopped` (exited, and cleaned up) is Docker's `exited`.
fn docker_states(inspect: &mut serde_json::Value) {
    if let Some(status) = inspect.pointer_mut("/State/Status")
        && status == "stopped"
    {
        *status = "exited".into();
    }
}

/// GET `path` over a unix socket, as JSON.
async fn raw_get(socket: &str, path: &str) -> Result<serde_json::Value, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {socket}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("Host", "engine")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::query_parameters::CreateImageOptionsBuilder;

    #[test]
    fn newline_joined_changes_become_repeated_parameters() {
        assert_eq!(
            split_changes("fromSrc=-&repo=a%2Fb%3Alocal-1&changes=CMD+%5B%22x%22%5D%0ALABEL+k%3Dv%0aENV+A%3Db"),
            Some(
                "fromSrc=-&repo=a%2Fb%3Alocal-1&changes=CMD+%5B%22x%22%5D&changes=LABEL+k%3Dv&changes=ENV+A%3Db"
                    .into()
            )
        );
        assert_eq!(split_changes("fromSrc=-&changes=LABEL+k%3Dv"), None);
        assert_eq!(split_changes("fromImage=redis&tag=7"), None);
    }

    #[test]
    fn bollard_joins_changes_with_newlines() {
        // The form this module undoes: if bollard ever sends repeated
        // parameters itself, this test says so and the module can go.
        let opts = CreateImageOptionsBuilder::default()
            .from_src("-")
            .changes(vec!["LABEL a=b".into(), "ENV C=d".into()])
            .build();
        let v = serde_json::to_value(&opts).unwrap();
        assert_eq!(v["changes"], "LABEL a=b\nENV C=d");
    }

    #[test]
    fn podmans_stopped_state_reads_as_exited() {
        let mut json = serde_json::json!({
            "Id": "abc",
            "State": { "Status": "stopped", "Running": false, "Paused": false, "ExitCode": 137 }
        });
        assert!(serde_json::from_value::<ContainerInspectResponse>(json.clone()).is_err());
        docker_states(&mut json);
        let info: ContainerInspectResponse = serde_json::from_value(json).unwrap();
        let state = info.state.unwrap();
        assert_eq!(state.running, Some(false));
        assert_eq!(state.exit_code, Some(137));
    }

    #[test]
    fn only_imports_and_commits_are_rewritten() {
        let req = |uri: &str| {
            let mut r = BollardRequest::new(bollard::body_full(Default::default()));
            *r.uri_mut() = uri.parse().unwrap();
            repeat_changes(r).uri().to_string()
        };
        assert_eq!(
            req("http://localhost/v1.41/images/create?fromSrc=-&changes=A%0AB"),
            "http://localhost/v1.41/images/create?fromSrc=-&changes=A&changes=B"
        );
        assert_eq!(
            req("http://localhost/v1.41/commit?container=c&changes=A%0AB"),
            "http://localhost/v1.41/commit?container=c&changes=A&changes=B"
        );
        assert_eq!(
            req("http://localhost/v1.41/containers/create?changes=A%0AB"),
            "http://localhost/v1.41/containers/create?changes=A%0AB"
        );
    }
}
