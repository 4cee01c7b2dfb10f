//! [`Stack`]: the running services of one lab run: one bridge network, one
//! container per service replica, each published on loopback and probed ready.
//!
//! A lab that cuts services off the network (`disconnect`, `partition`) gets a second
//! network per run, the *access* network, on which the ports are published
//! and over which containers cannot talk to each other (Docker's
//! `enable_icc=false`): a container disconnected from the lab network is
//! then cut off from its peers but still reachable from the host, so the
//! exercise can watch what the cut-off side does. Without it, a published
//! port dies with the container's only network.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HostConfig, Network,
    NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::future::try_join_all;

use super::{Engine, EnvError, already_done, labels, ready};
use crate::catalog::{self, ContainerPlan, Endpoint};
use crate::event::{Event, Reporter};
use crate::images::{self, Source};
use crate::lab::{FaultAction, Lab, ServicePlan};

/// The resolver options of every lab container: a name the lab's network
/// does not know (a killed instance's, whose entry Docker removes while it
/// is stopped) goes on to the host's resolver, and glibc's default waits up
/// to 10 s for it (two tries of 5 s). Servers that resolve names in their
/// main thread, Redis Sentinel and replicas among them, stood still that
/// long when the host's resolver was slow under load (Sentinel went into
/// TILT). A lab is offline, so one try of 1 s is enough for any name.
const DNS_OPTIONS: [&str; 2] = ["timeout:1", "attempts:1"];

/// How a stack is started.
#[derive(Debug, Clone, Copy)]
pub struct StackOptions {
    /// `infralab up`: the resources outlive this process until `down`.
    pub keep: bool,
    /// Where images come from.
    pub source: Source,
}

/// One started container.
#[derive(Debug, Clone)]
pub struct Started {
    /// Service name in the lab.
    pub service: String,
    /// Instance id: the service name, or `NAME-i` for replicas.
    pub instance: String,
    /// Kind.
    pub kind: String,
    /// Image it runs.
    pub image: String,
    /// Container name.
    pub container: String,
    /// Network aliases (service and instance names).
    pub aliases: Vec<String>,
    /// How to reach it from the host.
    pub endpoint: Endpoint,
    /// From create to ready.
    pub ready_ms: u64,
    /// Readiness deadline, reused after faults.
    pub ready_timeout: Duration,
}

/// The services of one run.
pub struct Stack {
    /// Engine.
    pub engine: Engine,
    /// Run id.
    pub run_id: String,
    /// The run's network.
    pub network: String,
    /// The labels every resource of the run carries (for networks a
    /// partition creates later).
    pub labels: HashMap<String, String>,
    /// Started containers, in lab order.
    pub services: Vec<Started>,
    /// The lab's name (a label of every resource).
    lab: String,
    /// The access network, when the lab has one.
    access: Option<String>,
    /// Podman's DNS address, for lab files that name a resolver.
    dns: Option<String>,
    /// How the stack was started.
    opts: StackOptions,
}

/// How long a retired extra container may take to stop before the engine
/// kills it.
const RETIRE_GRACE_S: i32 = 5;

/// The name of the container of `instance` in run `run_id`.
pub fn container_name(run_id: &str, instance: &str) -> String {
    format!("infralab-{run_id}-{instance}")
}

/// Removes a container, running or not; one already gone is fine.
async fn remove_container(engine: &Engine, container: &str) -> Result<(), EnvError> {
    let force = RemoveContainerOptionsBuilder::default().force(true).build();
    match engine.docker.remove_container(container, Some(force)).await {
        Err(e) if !already_done(&e) => {
            Err(EnvError::new(format!("cannot remove {container}: {e}")))
        }
        _ => Ok(()),
    }
}

/// A short random run id: unique enough that concurrent runs never collide.
pub fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn labels_for(run_id: &str, lab: &str, keep: bool) -> HashMap<String, String> {
    HashMap::from([
        (labels::RUN.to_string(), run_id.to_string()),
        (labels::LAB.to_string(), lab.to_string()),
        (labels::PID.to_string(), std::process::id().to_string()),
        (labels::KEEP.to_string(), keep.to_string()),
    ])
}

impl Stack {
    /// Resolves images, creates the network and starts every service
    /// concurrently, returning once all answer their protocol probe. On error
    /// the caller tears the run down with [`teardown`] (everything is labelled).
    pub async fn start(
        engine: &Engine,
        run_id: &str,
        lab: &Lab,
        opts: StackOptions,
        reporter: &dyn Reporter,
    ) -> Result<Stack, EnvError> {
        engine.check_ports_reachable()?;
        // Images first, one resolution per distinct (kind, override), concurrently.
        let mut wanted: Vec<(String, Option<String>)> = lab
            .services
            .iter()
            .map(|s| (s.kind.clone(), s.image.clone()))
            .collect();
        wanted.sort();
        wanted.dedup();
        let resolved = try_join_all(wanted.iter().map(|(kind, image)| async move {
            let spec = catalog::spec(kind);
            images::resolve(
                &engine.docker,
                spec,
                image.as_deref(),
                opts.source,
                reporter,
            )
            .await
            .map(|r| ((kind.clone(), image.clone()), r))
        }))
        .await?;
        let images: HashMap<_, _> = resolved.into_iter().collect();

        let labels = labels_for(run_id, &lab.name, opts.keep);
        let network = format!("infralab-{run_id}");
        // With an access network the lab network is internal: Docker never
        // makes an internal network a container's gateway, and the gateway's
        // network is where published ports live; so they stay on the access
        // network when a fault takes the lab network away (were they moved,
        // every open connection from the host would break).
        let access_needed = needs_access_network(lab);
        create_network(engine, &network, &labels, None, access_needed).await?;
        let access = if access_needed {
            // Ports published here, no traffic between containers.
            let access = format!("infralab-{run_id}-access");
            let no_icc = ("com.docker.network.bridge.enable_icc", "false");
            create_network(engine, &access, &labels, Some(no_icc), false).await?;
            Some(access)
        } else {
            None
        };

        let dns = lab_dns(engine, &network).await?;
        let mut jobs = Vec::new();
        for plan in &lab.services {
            let image = &images[&(plan.kind.clone(), plan.image.clone())];
            for instance in plan.instances() {
                jobs.push(start_one(
                    engine,
                    run_id,
                    &lab.name,
                    Networks {
                        lab: &network,
                        access: access.as_deref(),
                        dns: dns.as_deref(),
                    },
                    plan,
                    instance,
                    image,
                    opts,
                    reporter,
                ));
            }
        }
        let services = try_join_all(jobs).await?;
        bootstrap(engine, lab, &network, &services, reporter).await?;
        Ok(Stack {
            engine: engine.clone(),
            run_id: run_id.to_string(),
            network,
            labels,
            services,
            lab: lab.name.clone(),
            access,
            dns,
            opts,
        })
    }

    /// Creates and starts one more container of `plan`'s service as
    /// `instance` (a name no other container of the run has), returning
    /// once the engine has started it, without waiting for it to be ready:
    /// a serverless platform's instance, whose start the caller measures.
    /// Labelled with the run like every other, so teardown removes it.
    pub async fn launch_extra(
        &self,
        plan: &ServicePlan,
        instance: &str,
    ) -> Result<Launched, EnvError> {
        let image = self
            .services
            .iter()
            .find(|s| s.service == plan.name)
            .map(|s| s.image.clone())
            .ok_or_else(|| EnvError::new(format!("`{}` has no started container", plan.name)))?;
        launch(
            &self.engine,
            &self.run_id,
            &self.lab,
            Networks {
                lab: &self.network,
                access: self.access.as_deref(),
                dns: self.dns.as_deref(),
            },
            plan,
            instance.to_string(),
            &image,
            self.opts,
        )
        .await
    }

    /// Stops and removes an extra container (see [`Stack::launch_extra`]),
    /// returning when its process started and when it finished, as the
    /// engine recorded them.
    pub async fn retire_extra(
        &self,
        container: &str,
    ) -> Result<(SystemTime, SystemTime), EnvError> {
        let docker = &self.engine.docker;
        let stop = StopContainerOptionsBuilder::default()
            .t(RETIRE_GRACE_S)
            .build();
        if let Err(e) = docker.stop_container(container, Some(stop)).await
            && !already_done(&e)
        {
            return Err(EnvError::new(format!("cannot stop {container}: {e}")));
        }
        let info = docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| EnvError::new(format!("cannot inspect {container}: {e}")))?;
        let state = info.state.unwrap_or_default();
        let started = engine_time(state.started_at.as_deref(), container)?;
        let finished = engine_time(state.finished_at.as_deref(), container)?;
        remove_container(&self.engine, container).await?;
        Ok((started, finished))
    }

    /// Endpoints by instance name, for exercises.
    pub fn endpoints(&self) -> BTreeMap<String, Endpoint> {
        self.services
            .iter()
            .map(|s| (s.instance.clone(), s.endpoint.clone()))
            .collect()
    }

    /// Containers of a service or of one instance, for faults.
    pub fn targets(&self, name: &str) -> Vec<&Started> {
        self.services
            .iter()
            .filter(|s| s.service == name || s.instance == name)
            .collect()
    }
}

/// A timestamp from the engine's container state (RFC 3339, nanoseconds).
fn engine_time(text: Option<&str>, container: &str) -> Result<SystemTime, EnvError> {
    text.and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .ok_or_else(|| EnvError::new(format!("{container}: the engine gave no time: {text:?}")))
}

/// Runs the bootstrap step of every service whose kind has one (Redis
/// Cluster), once all its instances are ready, within its readiness
/// deadline.
async fn bootstrap(
    engine: &Engine,
    lab: &Lab,
    network: &str,
    services: &[Started],
    reporter: &dyn Reporter,
) -> Result<(), EnvError> {
    for plan in &lab.services {
        let kind = catalog::kind(&plan.kind).expect("validated kind");
        let Some(what) = kind.bootstrap_step() else {
            continue;
        };
        reporter.event(&Event::Bootstrapping {
            lab: lab.name.clone(),
            service: plan.name.clone(),
            what: what.to_string(),
        });
        let started_at = Instant::now();
        let mut members = Vec::new();
        for s in services.iter().filter(|s| s.service == plan.name) {
            members.push(catalog::Member {
                endpoint: s.endpoint.clone(),
                address: address_on(engine, &s.container, network).await?,
            });
        }
        let failed = |why: String| EnvError::new(format!("`{}`: {what} failed: {why}", plan.name));
        tokio::time::timeout(plan.ready_timeout, kind.bootstrap(&members))
            .await
            .map_err(|_| {
                failed(format!(
                    "not done after {:.1} s",
                    plan.ready_timeout.as_secs_f64()
                ))
            })?
            .map_err(failed)?;
        reporter.event(&Event::Bootstrapped {
            lab: lab.name.clone(),
            service: plan.name.clone(),
            what: what.to_string(),
            ms: started_at.elapsed().as_millis() as u64,
        });
    }
    Ok(())
}

/// A container's IP address on `network`.
async fn address_on(engine: &Engine, container: &str, network: &str) -> Result<String, EnvError> {
    let info = engine
        .docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|e| EnvError::new(format!("cannot inspect {container}: {e}")))?;
    info.network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove(network))
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| EnvError::new(format!("{container} has no address on {network}")))
}

/// Whether the lab cuts services off the lab network (`disconnect`,
/// `partition`), so their ports must live on a network of their own (see the
/// module's doc).
fn needs_access_network(lab: &Lab) -> bool {
    lab.scenarios
        .iter()
        .flat_map(|s| &s.faults)
        .any(|f| matches!(f.action, FaultAction::Disconnect | FaultAction::Partition))
}

/// One labelled bridge network of the run, with a driver option if any.
pub(super) async fn create_network(
    engine: &Engine,
    name: &str,
    labels: &HashMap<String, String>,
    option: Option<(&str, &str)>,
    internal: bool,
) -> Result<(), EnvError> {
    engine
        .docker
        .create_network(NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone()),
            options: option.map(|(k, v)| HashMap::from([(k.to_string(), v.to_string())])),
            internal: Some(internal),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| EnvError::new(format!("cannot create network {name}: {e}")))
}

/// The networks a container joins.
#[derive(Clone, Copy)]
struct Networks<'a> {
    /// The lab network, where services find each other by alias.
    lab: &'a str,
    /// The access network, when the lab has one.
    access: Option<&'a str>,
    /// Podman's DNS address, for lab files that name a resolver.
    dns: Option<&'a str>,
}

/// Attempts at starting one container when its reserved host port was
/// taken before Docker bound it.
const PORT_ATTEMPTS: u32 = 3;

/// Starts one instance; when another process took a reserved host port in
/// the moment between reserving and binding it (concurrent runs pick
/// ephemeral ports too), removes the container and tries with new ports.
#[allow(clippy::too_many_arguments)]
async fn start_one(
    engine: &Engine,
    run_id: &str,
    lab: &str,
    networks: Networks<'_>,
    plan: &ServicePlan,
    instance: String,
    image: &str,
    opts: StackOptions,
    reporter: &dyn Reporter,
) -> Result<Started, EnvError> {
    let mut attempt = 1;
    loop {
        let started = start_attempt(
            engine,
            run_id,
            lab,
            networks,
            plan,
            instance.clone(),
            image,
            opts,
            reporter,
        )
        .await;
        match started {
            Err(e) if e.message.contains(PORT_BUSY) && attempt < PORT_ATTEMPTS => {
                tracing::info!(%instance, attempt, "host port taken meanwhile; new ports");
                remove_container(engine, &container_name(run_id, &instance)).await?;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// What a start that lost its host port says.
const PORT_BUSY: &str = "a host port is busy";

#[allow(clippy::too_many_arguments)]
async fn start_attempt(
    engine: &Engine,
    run_id: &str,
    lab: &str,
    networks: Networks<'_>,
    plan: &ServicePlan,
    instance: String,
    image: &str,
    opts: StackOptions,
    reporter: &dyn Reporter,
) -> Result<Started, EnvError> {
    let kind = catalog::kind(&plan.kind).expect("validated kind");
    reporter.event(&Event::ServiceStarting {
        lab: lab.to_string(),
        service: instance.clone(),
        kind: plan.kind.clone(),
        image: image.to_string(),
    });
    let started_at = Instant::now();
    let launched = launch(
        engine,
        run_id,
        lab,
        networks,
        plan,
        instance.clone(),
        image,
        opts,
    )
    .await?;
    ready::wait(engine, kind, &launched.endpoint, plan.ready_timeout).await?;
    let ready_ms = started_at.elapsed().as_millis() as u64;
    reporter.event(&Event::ServiceReady {
        lab: lab.to_string(),
        service: instance.clone(),
        url: launched.endpoint.url.clone(),
        ms: ready_ms,
    });
    Ok(Started {
        service: plan.name.clone(),
        instance,
        kind: plan.kind.clone(),
        image: image.to_string(),
        container: launched.container,
        aliases: launched.aliases,
        endpoint: launched.endpoint,
        ready_ms,
        ready_timeout: plan.ready_timeout,
    })
}

/// A container the engine has started, not yet probed ready.
#[derive(Debug, Clone)]
pub struct Launched {
    /// Container name.
    pub container: String,
    /// Network aliases (service and instance names).
    pub aliases: Vec<String>,
    /// How to reach it from the host.
    pub endpoint: Endpoint,
}

/// Creates one labelled container of `plan` as `instance`, on the run's
/// networks with its ports on loopback, and starts it.
#[allow(clippy::too_many_arguments)]
async fn launch(
    engine: &Engine,
    run_id: &str,
    lab: &str,
    networks: Networks<'_>,
    plan: &ServicePlan,
    instance: String,
    image: &str,
    opts: StackOptions,
) -> Result<Launched, EnvError> {
    let kind = catalog::kind(&plan.kind).expect("validated kind");
    let spec = catalog::spec(&plan.kind);
    let container = container_name(run_id, &instance);
    let mut env = spec.env.clone();
    env.extend(plan.env.clone());
    env.insert("INFRALAB_INSTANCE".into(), instance.clone());
    // Host ports are reserved up front so a restarted container (a fault)
    // comes back on the same address, and brokers can advertise them.
    let host_ports = reserve_ports(spec.ports.len())?;
    let mut cplan = ContainerPlan {
        image: image.to_string(),
        local_image: image.starts_with("infralab/"),
        env,
        cmd: plan.command.clone().or_else(|| spec.command.clone()),
        host_ports: spec
            .ports
            .iter()
            .map(|(n, _)| n.clone())
            .zip(host_ports)
            .collect(),
        instance: instance.clone(),
        peers: plan.instances(),
    };
    kind.prepare(&mut cplan);

    let mut labels = labels_for(run_id, lab, opts.keep);
    labels.insert(labels::SERVICE.into(), plan.name.clone());
    labels.insert(labels::INSTANCE.into(), instance.clone());
    labels.insert(labels::KIND.into(), plan.kind.clone());
    let mut bindings = HashMap::new();
    let mut exposed = Vec::new();
    for (name, port) in &spec.ports {
        let key = format!("{port}/tcp");
        exposed.push(key.clone());
        bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(cplan.host_ports[name].to_string()),
            }]),
        );
    }
    let mut binds = Vec::new();
    for (target, source) in &plan.files {
        let source = source
            .canonicalize()
            .map_err(|e| EnvError::new(format!("lab file {}: {e}", source.display())))?;
        let source = match networks.dns {
            Some(dns) => with_engine_dns(&source, dns, run_id, &instance)?,
            None => source,
        };
        binds.push(format!("{}:{target}:ro", source.display()));
    }
    let aliases = if instance == plan.name {
        vec![instance.clone()]
    } else {
        vec![plan.name.clone(), instance.clone()]
    };
    // Created on the network that publishes its ports; joins the lab
    // network before it starts when the two differ.
    let first = networks.access.unwrap_or(networks.lab);
    let lab_endpoint = EndpointSettings {
        aliases: Some(aliases.clone()),
        ..Default::default()
    };
    let first_endpoint = if networks.access.is_some() {
        EndpointSettings::default()
    } else {
        lab_endpoint.clone()
    };
    // Docker makes a hostname that differs from the container name an alias
    // on every network the container joins, the access network included,
    // where it would resolve to an address that carries no traffic: a peer
    // moved by a partition would find its group there. On the access network
    // the container name is the hostname, so there is no such alias.
    let hostname = match networks.access {
        Some(_) => container.clone(),
        None => instance.clone(),
    };
    let body = ContainerCreateBody {
        image: Some(cplan.image.clone()),
        hostname: Some(hostname),
        env: Some(cplan.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: cplan.cmd.clone(),
        labels: Some(labels),
        exposed_ports: Some(exposed),
        host_config: Some(HostConfig {
            port_bindings: Some(bindings),
            binds: (!binds.is_empty()).then_some(binds),
            network_mode: Some(first.to_string()),
            init: Some(true),
            privileged: Some(false),
            ulimits: engine.ulimits(),
            nano_cpus: plan.limits.cpus.map(|c| (c * 1e9) as i64),
            memory: plan.limits.memory.map(|b| b as i64),
            // The same as `memory`: no swap beyond the limit (Docker's default
            // would add as much swap again, hiding the limit).
            memory_swap: plan.limits.memory.map(|b| b as i64),
            dns_options: Some(DNS_OPTIONS.iter().map(|o| o.to_string()).collect()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(first.to_string(), first_endpoint)])),
        }),
        ..Default::default()
    };
    engine
        .docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&container)
                    .build(),
            ),
            body,
        )
        .await
        .map_err(|e| {
            let text = e.to_string();
            let message = format!("cannot create container for `{instance}`: {text}");
            if text.contains("catatonit") {
                // Podman's --init binary: Debian's podman only recommends it.
                EnvError::hint(message, "sudo apt-get install catatonit")
            } else {
                EnvError::new(message)
            }
        })?;
    if networks.access.is_some() {
        engine
            .docker
            .connect_network(
                networks.lab,
                NetworkConnectRequest {
                    container: container.clone(),
                    endpoint_config: Some(lab_endpoint),
                },
            )
            .await
            .map_err(|e| {
                EnvError::new(format!(
                    "cannot connect `{instance}` to {}: {e}",
                    networks.lab
                ))
            })?;
    }
    engine
        .docker
        .start_container(&container, None)
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("already allocated") || text.contains("address already in use") {
                EnvError::hint(
                    format!("cannot start `{instance}`: {PORT_BUSY} ({text})"),
                    "free the port or run again (infralab picks new ephemeral ports each run)",
                )
            } else {
                EnvError::new(format!("cannot start `{instance}`: {text}"))
            }
        })?;

    let mut endpoint = Endpoint {
        service: instance.clone(),
        kind: plan.kind.clone(),
        host: "127.0.0.1".into(),
        ports: cplan.host_ports.clone(),
        env: cplan.env.clone(),
        url: String::new(),
        container: container.clone(),
    };
    endpoint.url = catalog::render_url(&spec.url, &endpoint, &spec.ports[0].0);
    Ok(Launched {
        container,
        aliases,
        endpoint,
    })
}

/// Docker's embedded DNS answers on 127.0.0.11 in every container of a user
/// network, and lab files name it (nginx's `resolver 127.0.0.11`). Podman's
/// DNS (aardvark-dns) answers on the network's gateway instead. On Podman
/// this returns that address, so lab files can be adjusted; None on Docker.
async fn lab_dns(engine: &Engine, network: &str) -> Result<Option<String>, EnvError> {
    if engine.product != super::Product::Podman {
        return Ok(None);
    }
    let info = engine
        .docker
        .inspect_network(
            network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(|e| EnvError::new(format!("cannot inspect network {network}: {e}")))?;
    Ok(info
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway)))
}

/// Where a run's adjusted lab files live (removed by [`teardown`]).
fn run_files_dir(run_id: &str) -> std::path::PathBuf {
    images::cache_dir().join("runs").join(run_id)
}

/// `source` itself, or, when it names Docker's DNS address 127.0.0.11, a copy
/// naming `dns` instead (under [`run_files_dir`]).
fn with_engine_dns(
    source: &std::path::Path,
    dns: &str,
    run_id: &str,
    instance: &str,
) -> Result<std::path::PathBuf, EnvError> {
    let Ok(text) = std::fs::read_to_string(source) else {
        return Ok(source.to_path_buf()); // not text: mounted as is
    };
    if !text.contains(DOCKER_DNS) {
        return Ok(source.to_path_buf());
    }
    let dir = run_files_dir(run_id).join(instance);
    std::fs::create_dir_all(&dir)
        .map_err(|e| EnvError::new(format!("cannot create {}: {e}", dir.display())))?;
    let name = source.file_name().unwrap_or_default();
    let copy = dir.join(name);
    std::fs::write(&copy, text.replace(DOCKER_DNS, dns))
        .map_err(|e| EnvError::new(format!("cannot write {}: {e}", copy.display())))?;
    tracing::info!(
        "{} names {DOCKER_DNS} (Docker's DNS); mounted with {dns} (the engine's)",
        source.display()
    );
    Ok(copy)
}

/// Docker's embedded DNS server inside containers on user networks.
const DOCKER_DNS: &str = "127.0.0.11";

/// Asks the kernel for `n` free loopback ports.
fn reserve_ports(n: usize) -> Result<Vec<u16>, EnvError> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| EnvError::new(format!("cannot reserve a loopback port: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| EnvError::new(format!("cannot reserve a loopback port: {e}")))
}

/// Containers (stopped ones too) and networks carrying a label filter
/// (`io.infralab.run` for all runs, `io.infralab.run=ID` for one).
pub async fn list_labelled(
    engine: &Engine,
    filter: &str,
) -> Result<(Vec<ContainerSummary>, Vec<Network>), EnvError> {
    let filters = HashMap::from([("label", vec![filter])]);
    let containers = engine
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| EnvError::new(format!("cannot list containers: {e}")))?;
    let networks = engine
        .docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| EnvError::new(format!("cannot list networks: {e}")))?;
    Ok((containers, networks))
}

/// Removes every container and network labelled with `filter` (e.g.
/// `io.infralab.run=ID`). Idempotent: what is already gone is fine. Returns
/// how many resources were removed.
pub async fn remove_labelled(engine: &Engine, filter: &str) -> Result<usize, EnvError> {
    let (containers, networks) = list_labelled(engine, filter).await?;
    let removals = containers.into_iter().filter_map(|c| {
        // A paused container is unpaused first: some engines refuse to kill it.
        let paused = c.state.as_ref().is_some_and(|s| s.to_string() == "paused");
        c.id.map(|id| async move {
            if paused {
                let _ = engine.docker.unpause_container(&id).await;
            }
            let opts = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match engine.docker.remove_container(&id, Some(opts)).await {
                Ok(()) => Ok(1),
                Err(e) if already_done(&e) => Ok(0),
                Err(e) => Err(EnvError::new(format!("cannot remove container {id}: {e}"))),
            }
        })
    });
    let mut removed: usize = try_join_all(removals).await?.into_iter().sum();
    for n in networks {
        let Some(id) = n.id else { continue };
        match engine.docker.remove_network(&id).await {
            Ok(()) => removed += 1,
            Err(e) if already_done(&e) => {}
            Err(e) => return Err(EnvError::new(format!("cannot remove network {id}: {e}"))),
        }
    }
    Ok(removed)
}

/// Removes everything of one run (and its adjusted lab files, if any).
pub async fn teardown(engine: &Engine, run_id: &str) -> Result<usize, EnvError> {
    let removed = remove_labelled(engine, &format!("{}={run_id}", labels::RUN)).await?;
    let _ = std::fs::remove_dir_all(run_files_dir(run_id));
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_files_naming_docker_dns_get_the_engine_dns() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, "resolver  127.0.0.11  valid=5s;\n").unwrap();
        let plain = dir.path().join("plain.conf");
        std::fs::write(&plain, "listen 80;\n").unwrap();
        let run_id = format!("test-{}", new_run_id());
        let copy = with_engine_dns(&conf, "10.89.0.1", &run_id, "nginx").unwrap();
        assert_ne!(copy, conf);
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            "resolver  10.89.0.1  valid=5s;\n"
        );
        assert_eq!(
            with_engine_dns(&plain, "10.89.0.1", &run_id, "nginx").unwrap(),
            plain
        );
        std::fs::remove_dir_all(run_files_dir(&run_id)).unwrap();
    }

    #[test]
    fn reads_the_engines_timestamps_to_the_nanosecond() {
        let a = engine_time(Some("2026-12-03T00:50:13.123456789Z"), "c").unwrap();
        let b = engine_time(Some("2026-12-03T00:50:14.5Z"), "c").unwrap();
        let gap = b.duration_since(a).unwrap();
        assert_eq!(gap, Duration::from_nanos(1_376_543_211));
        assert!(engine_time(None, "c").is_err());
        assert!(engine_time(Some("soon"), "c").is_err());
    }
}
