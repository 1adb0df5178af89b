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
//!
//! [`naming_violations`] names the identity fields that break Kubernetes' naming rules
//! (a record flags them; every front-end escapes them before printing).

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

/// Whether `s` is an RFC 1123 label as Kubernetes takes it: 1-63 of `[a-z0-9-]`, starting
/// and ending with a letter or digit (namespaces, container names).
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Whether `s` is an RFC 1123 subdomain as Kubernetes takes it: at most 253 characters,
/// dot-separated RFC 1123 labels (pod names).
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// The identity fields (`namespace`, `pod`, `container`) present with a value Kubernetes
/// would not accept: a namespace or container that is not an RFC 1123 label, a pod that is
/// not an RFC 1123 subdomain. Missing fields are not violations.
pub fn naming_violations(
    namespace: Option<&str>,
    pod: Option<&str>,
    container: Option<&str>,
) -> Vec<String> {
    type Rule = fn(&str) -> bool;
    let checks: [(&str, Option<&str>, Rule); 3] = [
        ("namespace", namespace, is_dns1123_label),
        ("pod", pod, is_dns1123_subdomain),
        ("container", container, is_dns1123_label),
    ];
    checks
        .into_iter()
        .filter(|(_, value, valid)| value.is_some_and(|v| !valid(v)))
        .map(|(field, _, _)| field.to_owned())
        .collect()
}

#[cfg(test)]
mod naming_tests {
    use super::naming_violations;

    #[test]
    fn kubernetes_naming_rules() {
        assert!(naming_violations(Some("forensics"), Some("web-7d4.x"), Some("app")).is_empty());
        assert!(naming_violations(None, None, None).is_empty());
        let long_label = "a".repeat(64);
        for (ns, pod, ctr, want) in [
            ("ns\u{1b}]2;x\u{7}", "web", "app", vec!["namespace"]),
            ("Forensics", "web", "app", vec!["namespace"]),
            ("ns", "web_1", "app", vec!["pod"]),
            ("ns", "-web", "a.b", vec!["pod", "container"]),
            ("ns", "web.", "app", vec!["pod"]),
            (long_label.as_str(), "web", "app", vec!["namespace"]),
            ("", "web", "app", vec!["namespace"]),
            ("ns", "web", "app\n", vec!["container"]),
        ] {
            assert_eq!(
                naming_violations(Some(ns), Some(pod), Some(ctr)),
                want,
                "{ns:?} {pod:?} {ctr:?}"
            );
        }
        assert!(naming_violations(None, Some(&format!("{}.b", "a".repeat(63))), None).is_empty());
        // 253 characters is the longest pod name; 255 is too long.
        assert!(naming_violations(None, Some(&format!("{}a", "a.".repeat(126))), None).is_empty());
        assert_eq!(
            naming_violations(None, Some(&format!("{}a", "a.".repeat(127))), None),
            vec!["pod"]
        );
    }
}
