//! Which running container a request names, as the runtime knows it: never trusted from
//! the request. Names (namespace, pod, container) are looked up with the labels kubelet
//! sets (`ListPodSandbox`, then `ListContainers`, running only); a container ID (Falco's
//! 12-character short ID, or a full one) is matched as a prefix among the running
//! containers, and one that matches more than one is refused. Shared by the trigger API
//! and the alert receivers.

use std::collections::HashMap;
use std::time::Duration;

use super::cri::{
    CONTAINER_RUNNING, Container, ContainerFilter, ContainerStateValue, GrpcStatus,
    LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_POD, ListContainersRequest, ListPodSandboxRequest,
    PodSandboxFilter, PodSandboxStateValue, RuntimeClient, SANDBOX_READY,
};

/// How long a lookup may take.
const LOOKUP: Duration = Duration::from_secs(30);
/// The shortest container ID prefix accepted (Falco's short IDs are 12 hex digits).
pub(crate) const MIN_ID_PREFIX: usize = 12;

/// What a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wanted<'a> {
    /// By the names kubelet gives it.
    Names {
        /// Namespace.
        namespace: &'a str,
        /// Pod.
        pod: &'a str,
        /// Container.
        container: &'a str,
    },
    /// By the runtime's container ID, or a prefix of it of at least [`MIN_ID_PREFIX`].
    Id(&'a str),
}

/// A running container the runtime named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Running {
    /// The runtime's ID.
    pub(crate) id: String,
    /// Its namespace, pod and container names (kubelet's labels; empty when absent).
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) container: String,
}

impl Running {
    pub(crate) fn of(c: &Container) -> Self {
        let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        Self {
            id: c.id.clone(),
            namespace: label(LABEL_NAMESPACE),
            pod: label(LABEL_POD),
            container: label(LABEL_CONTAINER),
        }
    }
}

/// Why no single running container was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResolveError {
    /// No ready pod of that name in that namespace.
    #[error("pod does not exist")]
    NoPod,
    /// No running container of that name in the pod (or with that ID).
    #[error("container {0} does not exist or is not running")]
    NotRunning(String),
    /// An ID prefix that is too short or not hexadecimal.
    #[error("container ID {0:?} is not a container ID (at least 12 hexadecimal digits)")]
    BadId(String),
    /// An ID prefix that more than one running container starts with.
    #[error("container ID {prefix} matches {count} running containers; give more of it")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// How many matched.
        count: usize,
    },
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] GrpcStatus),
}

/// Finds the running container `wanted` names.
pub(crate) async fn running(
    runtime: &RuntimeClient,
    wanted: Wanted<'_>,
) -> Result<Running, ResolveError> {
    match wanted {
        Wanted::Names {
            namespace,
            pod,
            container,
        } => by_names(runtime, namespace, pod, container).await,
        Wanted::Id(prefix) => by_id(runtime, prefix).await,
    }
}

async fn by_names(
    runtime: &RuntimeClient,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Running, ResolveError> {
    let sandboxes = runtime
        .list_pod_sandbox(
            ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    state: Some(PodSandboxStateValue {
                        state: SANDBOX_READY,
                    }),
                    label_selector: HashMap::from([
                        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
                        (LABEL_POD.to_owned(), pod.to_owned()),
                    ]),
                    ..Default::default()
                }),
            },
            LOOKUP,
        )
        .await?;
    let Some(sandbox) = sandboxes.items.first() else {
        return Err(ResolveError::NoPod);
    };
    let containers = runtime
        .list_containers(
            ListContainersRequest {
                filter: Some(ContainerFilter {
                    state: Some(ContainerStateValue {
                        state: CONTAINER_RUNNING,
                    }),
                    pod_sandbox_id: sandbox.id.clone(),
                    label_selector: HashMap::from([
                        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
                        (LABEL_POD.to_owned(), pod.to_owned()),
                        (LABEL_CONTAINER.to_owned(), container.to_owned()),
                    ]),
                    ..Default::default()
                }),
            },
            LOOKUP,
        )
        .await?;
    containers
        .containers
        .first()
        .map(Running::of)
        .ok_or_else(|| ResolveError::NotRunning(container.to_owned()))
}

/// Every running container of `runtime` (one `ListContainers`).
pub(crate) async fn all_running(runtime: &RuntimeClient) -> Result<Vec<Container>, GrpcStatus> {
    let all = runtime
        .list_containers(
            ListContainersRequest {
                filter: Some(ContainerFilter {
                    state: Some(ContainerStateValue {
                        state: CONTAINER_RUNNING,
                    }),
                    ..Default::default()
                }),
            },
            LOOKUP,
        )
        .await?;
    Ok(all.containers)
}

async fn by_id(runtime: &RuntimeClient, prefix: &str) -> Result<Running, ResolveError> {
    let prefix = id_prefix(prefix)?;
    pick(&all_running(runtime).await?, prefix)
}

/// `prefix` lower-cased, if it can be a container ID prefix.
fn id_prefix(prefix: &str) -> Result<String, ResolveError> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < MIN_ID_PREFIX
        || prefix.len() > 64
        || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ResolveError::BadId(prefix.chars().take(80).collect()));
    }
    Ok(prefix)
}

/// The one container of `running` whose ID starts with `prefix`.
fn pick(running: &[Container], prefix: String) -> Result<Running, ResolveError> {
    let matching: Vec<&Container> = running
        .iter()
        .filter(|c| c.id.starts_with(&prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(Running::of(one)),
        [] => Err(ResolveError::NotRunning(prefix)),
        many => Err(ResolveError::Ambiguous {
            prefix,
            count: many.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, ns: &str) -> Container {
        Container {
            id: id.to_owned(),
            labels: HashMap::from([
                (LABEL_NAMESPACE.to_owned(), ns.to_owned()),
                (LABEL_POD.to_owned(), "p".to_owned()),
                (LABEL_CONTAINER.to_owned(), "c".to_owned()),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn a_short_id_names_one_running_container_or_is_refused() {
        let running = [
            container(&format!("3ad7b26ded6d{}", "a".repeat(52)), "shop"),
            container(&format!("3ad7b26ded6e{}", "b".repeat(52)), "kube-system"),
            container(&format!("3ad7b26ded6e{}", "c".repeat(52)), "other"),
        ];
        let one = pick(&running, id_prefix("3AD7B26DED6D").unwrap()).unwrap();
        assert_eq!(one.namespace, "shop");
        assert_eq!(
            pick(&running, id_prefix("3ad7b26ded6e").unwrap()),
            Err(ResolveError::Ambiguous {
                prefix: "3ad7b26ded6e".into(),
                count: 2
            })
        );
        // More of the ID tells them apart.
        let longer = format!("3ad7b26ded6e{}", "b".repeat(4));
        assert_eq!(
            pick(&running, id_prefix(&longer).unwrap())
                .unwrap()
                .namespace,
            "kube-system"
        );
        assert!(matches!(
            pick(&running, id_prefix("ffffffffffff").unwrap()),
            Err(ResolveError::NotRunning(_))
        ));
        for bad in ["3ad7b26", "3ad7b26ded6z", "../../etc/passwd", ""] {
            assert!(
                matches!(id_prefix(bad), Err(ResolveError::BadId(_))),
                "{bad}"
            );
        }
    }
}
