//! Who the container was: [`resolve`] reads the identity from `spec.dump` (the OCI spec's
//! annotations), the CRI-O labels annotation, Podman's copy of the spec inside
//! `config.dump`, and `config.dump`'s own fields. Every source that names the namespace,
//! pod or container must agree; when two disagree inspection fails closed
//! ([`InspectError::IdentityConflict`]).
//!
//! Engine: `io.container.manager` = `libpod` is Podman, `cri-o` is CRI-O; otherwise the
//! presence of containerd's `io.kubernetes.cri.*` annotations means containerd; otherwise
//! unknown. For Podman without Kubernetes annotations, the container is `config.dump`'s
//! `name` (for CRI-O and containerd that field is an engine-internal name, not used).

use serde::Deserialize;

use super::Limits;
use super::error::InspectError;
use super::json::{StrictMap, parse_guarded};
use super::model::{Engine, Identity};

/// The parts of an OCI runtime spec (`spec.dump`) the inspector reads.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SpecDump {
    annotations: Option<StrictMap>,
}

/// The parts of `config.dump` the inspector reads (CRI-O, containerd and Podman variants).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConfigDump {
    id: Option<String>,
    name: Option<String>,
    #[serde(rename = "rootfsImage")]
    rootfs_image: Option<String>,
    #[serde(rename = "rootfsImageRef")]
    rootfs_image_ref: Option<String>,
    #[serde(rename = "rootfsImageName")]
    rootfs_image_name: Option<String>,
    #[serde(rename = "rootfsImageID")]
    rootfs_image_id: Option<String>,
    runtime: Option<String>,
    #[serde(rename = "createdTime")]
    created_time: Option<String>,
    #[serde(rename = "checkpointedTime")]
    checkpointed_time: Option<String>,
    /// Podman embeds the container's OCI spec.
    spec: Option<SpecDump>,
}

/// Parses `spec.dump` through the JSON guard.
pub(crate) fn parse_spec(bytes: &[u8], limits: &Limits) -> Result<SpecDump, InspectError> {
    parse_guarded("spec.dump", bytes, limits)
}

/// Parses `config.dump` through the JSON guard.
pub(crate) fn parse_config(bytes: &[u8], limits: &Limits) -> Result<ConfigDump, InspectError> {
    parse_guarded("config.dump", bytes, limits)
}

const K8S_KEYS: [&str; 3] = [
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.name",
    "io.kubernetes.container.name",
];
const CONTAINERD_KEYS: [&str; 3] = [
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.container-name",
];
const CRIO_LABELS: &str = "io.kubernetes.cri-o.Labels";
const MANAGER: &str = "io.container.manager";
const FIELDS: [&str; 3] = ["namespace", "pod", "container"];

/// One place that names identity fields: its label and up to three values.
struct Source {
    label: &'static str,
    values: [Option<String>; 3],
}

fn pick(map: &StrictMap, keys: &[&str; 3]) -> [Option<String>; 3] {
    keys.map(|k| map.get(k).map(str::to_owned))
}

/// Collects the identity sources of one annotation map.
fn sources_of(
    map: &StrictMap,
    labels: [&'static str; 3],
    limits: &Limits,
) -> Result<Vec<Source>, InspectError> {
    let [k8s, crio, containerd] = labels;
    let mut out = vec![
        Source {
            label: k8s,
            values: pick(map, &K8S_KEYS),
        },
        Source {
            label: containerd,
            values: pick(map, &CONTAINERD_KEYS),
        },
    ];
    if let Some(raw) = map.get(CRIO_LABELS) {
        let member = format!("{crio} (JSON inside an annotation)");
        let inner: StrictMap = parse_guarded(&member, raw.as_bytes(), limits)?;
        out.push(Source {
            label: crio,
            values: pick(&inner, &K8S_KEYS),
        });
    }
    Ok(out)
}

/// Builds the identity from whichever of the two documents the archive had.
pub(crate) fn resolve(
    spec: Option<&SpecDump>,
    config: Option<&ConfigDump>,
    limits: &Limits,
) -> Result<Identity, InspectError> {
    let spec_ann = spec.and_then(|s| s.annotations.as_ref());
    let config_ann = config
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.annotations.as_ref());
    let mut sources = Vec::new();
    if let Some(a) = spec_ann {
        sources.extend(sources_of(
            a,
            [
                "spec.dump io.kubernetes.* annotations",
                "spec.dump io.kubernetes.cri-o.Labels",
                "spec.dump io.kubernetes.cri.* annotations",
            ],
            limits,
        )?);
    }
    if let Some(a) = config_ann {
        sources.extend(sources_of(
            a,
            [
                "config.dump spec io.kubernetes.* annotations",
                "config.dump spec io.kubernetes.cri-o.Labels",
                "config.dump spec io.kubernetes.cri.* annotations",
            ],
            limits,
        )?);
    }

    let mut agreed: [Option<(String, &'static str)>; 3] = [None, None, None];
    for source in &sources {
        for ((slot, value), field) in agreed.iter_mut().zip(&source.values).zip(FIELDS) {
            let Some(value) = value else { continue };
            match slot {
                None => *slot = Some((value.clone(), source.label)),
                Some((first, first_source)) if first != value => {
                    return Err(InspectError::IdentityConflict {
                        field,
                        first: first.clone(),
                        first_source,
                        second: value.clone(),
                        second_source: source.label,
                    });
                }
                Some(_) => {}
            }
        }
    }

    let manager = spec_ann
        .and_then(|a| a.get(MANAGER))
        .or_else(|| config_ann.and_then(|a| a.get(MANAGER)));
    let has_containerd = [spec_ann, config_ann]
        .into_iter()
        .flatten()
        .any(|a| CONTAINERD_KEYS.iter().any(|k| a.get(k).is_some()));
    let engine = match manager {
        Some("libpod") => Some(Engine::Podman),
        Some("cri-o") => Some(Engine::CriO),
        _ if has_containerd => Some(Engine::Containerd),
        _ => None,
    };

    let [namespace, pod, container] = agreed.map(|s| s.map(|(v, _)| v));
    let mut identity = Identity {
        namespace,
        pod,
        container,
        engine,
        ..Identity::default()
    };
    if let Some(c) = config {
        if identity.container.is_none() && engine == Some(Engine::Podman) {
            identity.container.clone_from(&c.name);
        }
        identity.container_id.clone_from(&c.id);
        identity.image = c
            .rootfs_image_name
            .clone()
            .or_else(|| c.rootfs_image.clone());
        identity.image_ref = c
            .rootfs_image_ref
            .clone()
            .or_else(|| c.rootfs_image_id.clone());
        identity.runtime.clone_from(&c.runtime);
        identity.created_at.clone_from(&c.created_time);
        identity.checkpointed_at.clone_from(&c.checkpointed_time);
    }
    Ok(identity)
}
