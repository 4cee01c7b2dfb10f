//! Faults: a scenario's fault steps applied to containers, and `heal`, which
//! puts every container back (running, unpaused, connected, ready) so the next
//! scenario starts from a healthy stack.
//!
//! A partition needs no privileged container and no firewall rule: the first
//! group stays on the lab network, every other group moves to a bridge
//! network of its own (with the same aliases), so each group reaches only
//! itself. Ports stay published on the access network (see
//! [`super::stack`]), so the host still reaches every side. Moving a group
//! cuts its open connections, inside the group too; they reconnect by name.

use bollard::models::{EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::KillContainerOptionsBuilder;

use super::stack::{Stack, Started};
use super::{EnvError, already_done, ready};
use crate::catalog;
use crate::lab::FaultAction;

/// Applies one action to one container.
pub async fn apply(stack: &Stack, target: &Started, action: FaultAction) -> Result<(), EnvError> {
    match action {
        FaultAction::Heal => return heal_partition(stack).await,
        FaultAction::Partition => {
            return Err(EnvError::new(
                "a partition applies to groups, not to one service",
            ));
        }
        _ => {}
    }
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
        FaultAction::Partition | FaultAction::Heal => Ok(()),
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
    // Back means ready: a member that rejoins its cluster (etcd naming the
    // leader again, a replica in sync) before the next step counts on it.
    if matches!(
        action,
        FaultAction::Start | FaultAction::Restart | FaultAction::Unpause | FaultAction::Connect
    ) {
        wait_ready(stack, target).await?;
    }
    Ok(())
}

/// Reconnecting must restore the aliases, or peers cannot resolve it again.
async fn connect(stack: &Stack, target: &Started) -> Result<(), bollard::errors::Error> {
    connect_to(stack, &stack.network, target).await
}

/// Joins `target` to `network` under its aliases.
async fn connect_to(
    stack: &Stack,
    network: &str,
    target: &Started,
) -> Result<(), bollard::errors::Error> {
    stack
        .engine
        .docker
        .connect_network(
            network,
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

/// The network of partition group `k` (the first group, 0, keeps the lab
/// network).
fn group_network(stack: &Stack, k: usize) -> String {
    format!("{}-part-{k}", stack.network)
}

/// Splits the lab network: group 0 stays, every other group moves to a
/// network of its own. Services in no group stay on the lab network.
pub async fn partition(stack: &Stack, groups: &[Vec<&Started>]) -> Result<(), EnvError> {
    let failed = |what: &str, e: bollard::errors::Error| {
        EnvError::new(format!("fault partition: {what}: {e}"))
    };
    for (k, group) in groups.iter().enumerate().skip(1) {
        let network = group_network(stack, k);
        // Internal, as the lab network is: never a container's gateway.
        super::stack::create_network(&stack.engine, &network, &stack.labels, None, true).await?;
        for target in group {
            connect_to(stack, &network, target)
                .await
                .or_else(ignore_done)
                .map_err(|e| failed(&format!("moving `{}`", target.instance), e))?;
            stack
                .engine
                .docker
                .disconnect_network(
                    &stack.network,
                    NetworkDisconnectRequest {
                        container: target.container.clone(),
                        force: Some(true),
                    },
                )
                .await
                .or_else(ignore_done)
                .map_err(|e| failed(&format!("moving `{}`", target.instance), e))?;
        }
    }
    Ok(())
}

/// Ends a partition: every container back on the lab network, the group
/// networks removed. Does nothing without one.
pub async fn heal_partition(stack: &Stack) -> Result<(), EnvError> {
    let docker = &stack.engine.docker;
    let mut rejoined = Vec::new();
    for k in 1.. {
        let network = group_network(stack, k);
        let Ok(info) = docker
            .inspect_network(
                &network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        else {
            break;
        };
        let members: Vec<(String, Option<String>)> = info
            .containers
            .unwrap_or_default()
            .into_iter()
            .map(|(id, c)| (id, c.name))
            .collect();
        let moved = |s: &&Started| {
            members
                .iter()
                .any(|(_, n)| n.as_deref() == Some(&s.container))
        };
        for target in stack.services.iter().filter(moved) {
            rejoined.push(target);
            connect(stack, target)
                .await
                .or_else(ignore_done)
                .map_err(|e| {
                    EnvError::new(format!(
                        "fault heal: reconnecting `{}`: {e}",
                        target.instance
                    ))
                })?;
        }
        for (id, _) in &members {
            let _ = docker
                .disconnect_network(
                    &network,
                    NetworkDisconnectRequest {
                        container: id.clone(),
                        force: Some(true),
                    },
                )
                .await;
        }
        docker
            .remove_network(&network)
            .await
            .or_else(ignore_done)
            .map_err(|e| EnvError::new(format!("fault heal: removing {network}: {e}")))?;
    }
    // Ready once every side is whole again: a member needs its peers.
    for target in rejoined {
        wait_ready(stack, target).await?;
    }
    Ok(())
}

/// An engine error that says the thing is already so counts as done: a
/// heal cut short when the exercise ended leaves some containers connected,
/// and the heal after the scenario finds them so (Docker answers 403 for an
/// endpoint that already exists).
fn ignore_done(e: bollard::errors::Error) -> Result<(), bollard::errors::Error> {
    let exists = matches!(
        &e,
        bollard::errors::Error::DockerResponseServerError { status_code: 403, message }
            if message.contains("already exists")
    );
    if exists || already_done(&e) {
        Ok(())
    } else {
        Err(e)
    }
}

async fn wait_ready(stack: &Stack, target: &Started) -> Result<(), EnvError> {
    let kind = catalog::kind(&target.kind).expect("validated kind");
    ready::wait(&stack.engine, kind, &target.endpoint, target.ready_timeout).await
}

/// Brings every container back to running, unpaused and connected (a
/// partition ended), then ready.
pub async fn heal(stack: &Stack) -> Result<(), EnvError> {
    heal_partition(stack).await?;
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
