//! Faults: a scenario's fault steps applied to containers, and `heal`, which
//! puts every container back (running, unpaused, connected, ready) so the next
//! scenario starts from a healthy stack.

use bollard::models::{EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::KillContainerOptionsBuilder;

use super::stack::{Stack, Started};
use super::{EnvError, already_done, ready};
use crate::catalog;
use crate::lab::FaultAction;

/// Applies one action to one container.
pub async fn apply(stack: &Stack, target: &Started, action: FaultAction) -> Result<(), EnvError> {
    let docker = &stack.engine.docker;
    let c = target.container.as_str();
    let result = match action {
        FaultAction::Kill => {
            docker
                .kill_container(
                    c,
                    Some(
                        KillContainerOptionsBuilder::default()
                            .signal("SIGKILL")
                            .build(),
                    ),
                )
                .await
        }
        FaultAction::Stop => docker.stop_container(c, None).await,
        FaultAction::Start => docker.start_container(c, None).await,
        FaultAction::Restart => docker.restart_container(c, None).await,
        FaultAction::Pause => docker.pause_container(c).await,
        FaultAction::Unpause => docker.unpause_container(c).await,
        FaultAction::Disconnect => {
            docker
                .disconnect_network(
                    &stack.network,
                    NetworkDisconnectRequest {
                        container: c.to_string(),
                        force: Some(true),
                    },
                )
                .await
        }
        FaultAction::Connect => connect(stack, target).await,
    };
    match result {
        Ok(()) => {}
        Err(e) if already_done(&e) => {}
        Err(e) => {
            return Err(EnvError::new(format!(
                "fault {} on `{}`: {e}",
                action.name(),
                target.instance
            )));
        }
    }
    if matches!(
        action,
        FaultAction::Start | FaultAction::Restart | FaultAction::Unpause
    ) {
        wait_ready(stack, target).await?;
    }
    Ok(())
}

/// Reconnecting must restore the aliases, or peers cannot resolve it again.
async fn connect(stack: &Stack, target: &Started) -> Result<(), bollard::errors::Error> {
    stack
        .engine
        .docker
        .connect_network(
            &stack.network,
            NetworkConnectRequest {
                container: target.container.clone(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(target.aliases.clone()),
                    ..Default::default()
                }),
            },
        )
        .await
}

async fn wait_ready(stack: &Stack, target: &Started) -> Result<(), EnvError> {
    let kind = catalog::kind(&target.kind).expect("validated kind");
    ready::wait(&stack.engine, kind, &target.endpoint, target.ready_timeout).await
}

/// Brings every container back to running, unpaused and connected, then ready.
pub async fn heal(stack: &Stack) -> Result<(), EnvError> {
    for s in &stack.services {
        let info = super::compat::inspect_container(&stack.engine, &s.container)
            .await
            .map_err(|e| EnvError::new(format!("cannot inspect `{}`: {e}", s.instance)))?;
        let state = info.state.clone().unwrap_or_default();
        if state.paused == Some(true) {
            apply(stack, s, FaultAction::Unpause).await?;
        } else if state.running != Some(true) {
            apply(stack, s, FaultAction::Start).await?;
        }
        let connected = info
            .network_settings
            .and_then(|n| n.networks)
            .is_some_and(|n| n.contains_key(&stack.network));
        if !connected {
            apply(stack, s, FaultAction::Connect).await?;
        }
    }
    Ok(())
}
