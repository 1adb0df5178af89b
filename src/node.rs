//! Who and when, for every layer: the clock (RFC 3339 UTC), this machine's host name, this
//! node's name (`[node] name`) and the actor name of local commands. A ground-floor module:
//! it uses only the configuration.

/// The current UTC time as RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// `t` as RFC 3339 (UTC).
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// `cli:USER@HOST` for commands run on this machine.
pub(crate) fn local_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .map(|m| format!("uid{}", m.uid()))
                .unwrap_or_else(|_| "unknown".into())
        });
    format!(
        "cli:{user}@{}",
        host_name().unwrap_or_else(|| "localhost".into())
    )
}

/// This machine's host name, if it has one.
pub(crate) fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// This node's name: `[node] name`, else the host name.
pub(crate) fn node_name(config: &crate::config::Config) -> String {
    config
        .node
        .name
        .clone()
        .or_else(host_name)
        .unwrap_or_else(|| "unknown-node".into())
}
