//! [`OnDemand`]: the engine behind [`Functions`], for exercises that start
//! instances of a lab service while a scenario runs (a serverless
//! platform's). Each instance is a container of the service's own plan,
//! labelled with the run; whatever the exercise leaves running is removed
//! when the scenario ends, and teardown removes anything else.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::describe;
use crate::catalog::Endpoint;
use crate::engine::Stack;
use crate::engine::stack;
use crate::exercise::ExerciseError;
use crate::exercise::functions::{Functions, Lifetime};
use crate::lab::ServicePlan;

/// Instances on demand of one run's services.
pub struct OnDemand {
    stack: Arc<Stack>,
    plans: Vec<ServicePlan>,
    /// Numbers instances across the run, so no two share a container name.
    next: AtomicU32,
    /// Containers started and not yet stopped.
    live: Mutex<BTreeSet<String>>,
}

impl OnDemand {
    /// Instances of the services of `plans`, started beside `stack`.
    pub fn new(stack: Arc<Stack>, plans: Vec<ServicePlan>) -> Self {
        OnDemand {
            stack,
            plans,
            next: AtomicU32::new(1),
            live: Mutex::default(),
        }
    }

    /// Stops and removes every instance still running (a scenario's end).
    pub async fn clear(&self) {
        let left = std::mem::take(&mut *self.live.lock().expect("live"));
        for container in left {
            if let Err(e) = self.stack.retire_extra(&container).await {
                tracing::warn!("{}", describe(&e));
            }
        }
    }
}

#[async_trait]
impl Functions for OnDemand {
    async fn start(&self, service: &str) -> Result<Endpoint, ExerciseError> {
        let plan = self
            .plans
            .iter()
            .find(|p| p.name == service)
            .ok_or_else(|| ExerciseError(format!("the lab has no service `{service}`")))?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let instance = format!("{service}-demand-{n}");
        // Known before the engine is asked, so a scenario that ends while
        // it starts still removes it.
        let container = stack::container_name(&self.stack.run_id, &instance);
        self.live.lock().expect("live").insert(container);
        let launched = self
            .stack
            .launch_extra(plan, &instance)
            .await
            .map_err(|e| ExerciseError(describe(&e)))?;
        Ok(launched.endpoint)
    }

    async fn stop(&self, instance: &Endpoint) -> Result<Lifetime, ExerciseError> {
        let (started, finished) = self
            .stack
            .retire_extra(&instance.container)
            .await
            .map_err(|e| ExerciseError(describe(&e)))?;
        self.live.lock().expect("live").remove(&instance.container);
        Ok(Lifetime { started, finished })
    }
}
