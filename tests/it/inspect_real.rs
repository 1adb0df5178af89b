//! Inspects REAL checkpoint archives made by Podman + CRIU through the project harness
//! (tests/harness/real-checkpoint.sh: namespace `forensics`, pod `web-7d4`, container `app`,
//! the `memhog` program holding 64 MiB of heap), as .tar, .tar.gz and .tar.zst. Extra
//! archives can be named in CKVAULT_REAL_CHECKPOINT (paths separated by `:`).

use crate::support;

use std::fs::File;
use std::time::Instant;

use ckvault::inspect::{Engine, Limits, inspect_reader, inspect_seekable, render_table};

#[test]
fn real_checkpoint_archive() {
    let mut paths: Vec<String> = Vec::new();
    for compress in ["none", "gzip", "zstd"] {
        let Some(p) = support::real_checkpoint(64, "forensics", "web-7d4", "app", compress) else {
            return;
        };
        paths.push(p.display().to_string());
    }
    if let Ok(extra) = std::env::var("CKVAULT_REAL_CHECKPOINT") {
        paths.extend(
            extra
                .split(':')
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    for path in &paths {
        let path = path.as_str();
        let limits = Limits::default();
        let t = Instant::now();
        let i = inspect_seekable(File::open(path).unwrap(), &limits)
            .unwrap_or_else(|e| panic!("{path} rejected ({}): {e}", e.code()));
        eprintln!("{path}: inspect_seekable took {:?}", t.elapsed());
        let id = &i.identity;
        assert_eq!(id.namespace.as_deref(), Some("forensics"), "{path}");
        assert_eq!(id.pod.as_deref(), Some("web-7d4"));
        assert_eq!(id.container.as_deref(), Some("app"));
        assert_eq!(id.engine, Some(Engine::Podman));
        assert!(
            id.image.as_deref().is_some_and(|i| i.contains("memhog")),
            "{:?}",
            id.image
        );
        assert_eq!(id.runtime.as_deref(), Some("crun"));
        assert_eq!(id.container_id.as_deref().map(str::len), Some(64));
        assert!(id.created_at.is_some());
        assert!(
            i.processes
                .iter()
                .any(|p| p.comm.as_deref() == Some("memhog")),
            "{:?}",
            i.processes
        );
        assert!(i.summary.process_count >= 1);
        assert!(
            i.summary.memory_pages_bytes >= 64 << 20,
            "{}",
            i.summary.memory_pages_bytes
        );
        assert!(i.summary.rootfs_diff_bytes > 0);
        assert!(
            i.criu_images
                .iter()
                .any(|m| m.name == "checkpoint/pstree.img")
        );
        assert!(
            i.criu_images
                .iter()
                .any(|m| m.name == "checkpoint/inventory.img")
        );
        let table = render_table(&i);
        assert!(table.contains("memhog") && table.contains("forensics"));
        // The streaming API reads everything and must find exactly the same.
        let streamed = inspect_reader(File::open(path).unwrap(), &limits).unwrap();
        assert_eq!(
            streamed, i,
            "{path}: inspect_reader and inspect_seekable disagree"
        );
    }
}
