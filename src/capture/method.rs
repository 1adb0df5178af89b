//! Which gRPC method a client's request header block names, decided the way the runtime
//! behind the CRI proxy will route it, not on one spelling of it.
//!
//! A runtime routes a request by its `:path`. Servers differ in what they accept: grpc-go
//! before the fix for CVE-2026-33186 strips a leading `/` only when present and splits at
//! the last `/`, so `runtime.v1.RuntimeService/CheckpointContainer` (no leading slash)
//! reaches the CheckpointContainer handler; other servers take the first of two `:path`
//! fields where grpc-go takes the last. A proxy that intercepts one spelling and forwards
//! the rest lets a checkpoint reach the runtime unsealed. So [`route`] accepts only the
//! canonical form — exactly one `:path`, matching `^/[A-Za-z0-9_.]+/[A-Za-z0-9_]+$` — and
//! refuses everything else before it is forwarded; among canonical paths it recognises
//! CheckpointContainer by its method name in any letter case, under any service (on a CRI
//! socket only the runtime's services exist, and intercepting too much fails closed).
//! `StopContainer` and `StopPodSandbox` are recognised only as the kubelet spells them
//! (`/runtime.v1.RuntimeService/...`, exactly): the proxy intercepts them when a rule
//! captures before a stop, and issues them again itself, so a spelling the runtime would
//! not route must not become a stop (it is relayed, and the runtime answers it).
//!
//! [`parse_grpc_timeout`] reads the deadline a request carries (`grpc-timeout`), which the
//! proxy gives an intercepted call and a stop's capture budget comes from.
//!
//! [`grpc_go`] models how grpc-go routes a `:path` before and after the fix; the fuzz
//! target `grpc_path` holds [`route`] against it and `tests/it/cri_proxy_paths.rs` holds the
//! model against a real grpc-go server.

/// Parses a gRPC timeout header (`<digits><unit>`, units H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The CRI method the proxy must never forward.
pub const CHECKPOINT_METHOD: &str = "CheckpointContainer";

/// What the proxy does with a request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A CheckpointContainer call: answered by ckvault, sealed, never forwarded.
    Checkpoint,
    /// `StopContainer` or `StopPodSandbox` as the kubelet spells them: relayed untouched,
    /// or intercepted when a rule captures before a stop.
    Stop(Stop),
    /// Any other method in canonical form: relayed to the runtime untouched.
    Forward,
    /// Not a method path the proxy can be sure of: answered with an error, never forwarded.
    Refuse(Refusal),
}

/// Which stop a [`Route::Stop`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `StopContainer`.
    Container,
    /// `StopPodSandbox`.
    PodSandbox,
}

/// Why a request's `:path` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The header block has no `:path`.
    #[error("the request has no :path")]
    Missing,
    /// The header block has more than one `:path` (servers differ on which they use).
    #[error("the request has more than one :path")]
    Repeated,
    /// The `:path` is not `/service/method` in the characters gRPC names use.
    #[error("the request's :path is not a canonical gRPC method path (/service/method)")]
    NotCanonical,
}

/// The route for a request whose header block carried the `:path` values `paths`, in order.
pub fn route(paths: &[&[u8]]) -> Route {
    let path = match paths {
        [] => return Route::Refuse(Refusal::Missing),
        [one] => *one,
        _ => return Route::Refuse(Refusal::Repeated),
    };
    match canonical_method(path) {
        None => Route::Refuse(Refusal::NotCanonical),
        Some(method) if method.eq_ignore_ascii_case(CHECKPOINT_METHOD.as_bytes()) => {
            Route::Checkpoint
        }
        Some(_) if path == super::cri::STOP_CONTAINER.as_bytes() => Route::Stop(Stop::Container),
        Some(_) if path == super::cri::STOP_POD_SANDBOX.as_bytes() => Route::Stop(Stop::PodSandbox),
        Some(_) => Route::Forward,
    }
}

/// The method of a canonical `/service/method` path: `service` is one or more of
/// `[A-Za-z0-9_.]`, `method` one or more of `[A-Za-z0-9_]`.
fn canonical_method(path: &[u8]) -> Option<&[u8]> {
    let rest = path.strip_prefix(b"/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (service, method) = (rest.get(..slash)?, rest.get(slash + 1..)?);
    let service_ok = !service.is_empty()
        && service
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    let method_ok = !method.is_empty()
        && method
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_');
    (service_ok && method_ok).then_some(method)
}

/// How grpc-go's server routes a `:path` (`Server.handleStream`), for holding [`route`]
/// against it in the fuzz target and the tests. Not used by the proxy itself.
#[doc(hidden)]
pub mod grpc_go {
    /// The (service, method) grpc-go looks up for `:path`, or `None` where it answers
    /// "malformed method name". `fixed`: a grpc-go with the fix for CVE-2026-33186
    /// (a `:path` must start with `/`); before it, a leading `/` is stripped only when
    /// present. Lookups are exact (letter case matters).
    pub fn route(path: &[u8], fixed: bool) -> Option<(&[u8], &[u8])> {
        let sm = match path.strip_prefix(b"/") {
            Some(rest) => rest,
            None if fixed => return None,
            None => path,
        };
        let pos = sm.iter().rposition(|&b| b == b'/')?;
        Some((sm.get(..pos)?, sm.get(pos + 1..)?))
    }

    /// Which `:path` of a header block grpc-go uses: the last (each field overwrites it).
    pub fn chosen<'a>(paths: &[&'a [u8]]) -> Option<&'a [u8]> {
        paths.last().copied()
    }

    /// Whether a grpc-go runtime serving CRI v1 (and v1alpha2) would run its
    /// CheckpointContainer handler for this header block.
    pub fn reaches_checkpoint(paths: &[&[u8]], fixed: bool) -> bool {
        // Other servers take the first `:path`: a block is dangerous if either would.
        [paths.first().copied(), chosen(paths)]
            .into_iter()
            .flatten()
            .filter_map(|p| route(p, fixed))
            .any(|(service, method)| {
                (service == b"runtime.v1.RuntimeService"
                    || service == b"runtime.v1alpha2.RuntimeService")
                    && method == super::CHECKPOINT_METHOD.as_bytes()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("120S"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12X"), None);
        assert_eq!(parse_grpc_timeout("999999999H"), None);
    }

    #[test]
    fn only_canonical_single_paths_are_forwarded() {
        let forward = [
            &b"/runtime.v1.RuntimeService/Version"[..],
            b"/runtime.v1.ImageService/ListImages",
            b"/grpc.health.v1.Health/Check",
            b"/a/b",
        ];
        for p in forward {
            assert_eq!(
                route(&[p]),
                Route::Forward,
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        let refused = [
            &b"runtime.v1.RuntimeService/CheckpointContainer"[..],
            b"runtime.v1.RuntimeService/Version",
            b"//runtime.v1.RuntimeService/CheckpointContainer",
            b"/runtime.v1.RuntimeService/CheckpointContainer/",
            b"/runtime.v1.RuntimeService/CheckpointContainer?x=1",
            b"/runtime.v1.RuntimeService//CheckpointContainer",
            b"/x/runtime.v1.RuntimeService/CheckpointContainer",
            b"/runtime.v1.RuntimeService/Checkpoint%43ontainer",
            b"/runtime.v1.RuntimeService/CheckpointContainer\0",
            b"/runtime.v1.RuntimeService/CheckpointContainer ",
            b"/runtime.v1.RuntimeService",
            b"/",
            b"",
            b"*",
            b"/runtime.v1.RuntimeService/Version\xff",
        ];
        for p in refused {
            assert_eq!(
                route(&[p]),
                Route::Refuse(Refusal::NotCanonical),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        assert_eq!(route(&[]), Route::Refuse(Refusal::Missing));
        let v = &b"/runtime.v1.RuntimeService/Version"[..];
        let c = &b"/runtime.v1.RuntimeService/CheckpointContainer"[..];
        assert_eq!(route(&[v, c]), Route::Refuse(Refusal::Repeated));
        assert_eq!(route(&[c, v]), Route::Refuse(Refusal::Repeated));
        assert_eq!(route(&[v, v]), Route::Refuse(Refusal::Repeated));
    }

    #[test]
    fn stops_are_recognised_only_as_the_kubelet_spells_them() {
        assert_eq!(
            route(&[b"/runtime.v1.RuntimeService/StopContainer"]),
            Route::Stop(Stop::Container)
        );
        assert_eq!(
            route(&[b"/runtime.v1.RuntimeService/StopPodSandbox"]),
            Route::Stop(Stop::PodSandbox)
        );
        for p in [
            &b"/runtime.v1.RuntimeService/stopcontainer"[..],
            b"/runtime.v1alpha2.RuntimeService/StopContainer",
            b"/other.Service/StopPodSandbox",
        ] {
            assert_eq!(
                route(&[p]),
                Route::Forward,
                "{}",
                String::from_utf8_lossy(p)
            );
        }
    }

    #[test]
    fn checkpoint_container_is_recognised_in_any_letter_case_and_service() {
        for p in [
            &b"/runtime.v1.RuntimeService/CheckpointContainer"[..],
            b"/runtime.v1.RuntimeService/checkpointcontainer",
            b"/runtime.v1.RuntimeService/CHECKPOINTCONTAINER",
            b"/RUNTIME.V1.RUNTIMESERVICE/CheckpointContainer",
            b"/runtime.v1alpha2.RuntimeService/CheckpointContainer",
            b"/other.Service/CheckpointContainer",
        ] {
            assert_eq!(
                route(&[p]),
                Route::Checkpoint,
                "{}",
                String::from_utf8_lossy(p)
            );
        }
    }

    proptest::proptest! {
        /// The fuzz target's property on spellings built from the pieces that matter: what
        /// is relayed reaches no CheckpointContainer handler on any server model.
        #[test]
        fn nothing_relayed_reaches_checkpoint_container(
            picks in proptest::collection::vec(
                proptest::collection::vec(0usize..12, 1..7), 1..4)
        ) {
            const PIECES: [&[u8]; 12] = [
                b"/", b"runtime.v1.RuntimeService", b"runtime.v1alpha2.RuntimeService",
                b"CheckpointContainer", b"checkpointcontainer", b"Version", b".", b"?",
                b"%2F", b"\0", b" ", b"RuntimeService",
            ];
            let paths: Vec<Vec<u8>> = picks
                .iter()
                .map(|p| p.iter().flat_map(|&i| PIECES[i].iter().copied()).collect())
                .collect();
            let refs: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
            if route(&refs) == Route::Forward {
                proptest::prop_assert!(!grpc_go::reaches_checkpoint(&refs, false));
                for p in &refs {
                    if let Some((_, m)) = grpc_go::route(p, false) {
                        proptest::prop_assert!(!m.eq_ignore_ascii_case(CHECKPOINT_METHOD.as_bytes()));
                    }
                }
            }
        }
    }

    #[test]
    fn the_grpc_go_model_routes_as_the_server_code_reads() {
        let c = b"runtime.v1.RuntimeService/CheckpointContainer";
        assert!(grpc_go::reaches_checkpoint(&[c], false));
        assert!(!grpc_go::reaches_checkpoint(&[c], true));
        assert_eq!(
            grpc_go::route(b"//a/b", false),
            Some((&b"/a"[..], &b"b"[..]))
        );
        assert_eq!(grpc_go::route(b"ab", false), None);
        assert_eq!(grpc_go::route(b"/a/", false), Some((&b"a"[..], &b""[..])));
    }
}
