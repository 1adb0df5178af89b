//! `ckvault proxy`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::capture::checkpoint::Checkpointer;
use crate::capture::cri::RuntimeClient;
use crate::capture::incident::Incidents;
use crate::capture::node::NodeTriggers;
use crate::capture::proxy;
use crate::capture::rules::Kind;
use crate::config::KubeletLocation;

/// Arguments of `ckvault proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    capture: super::common::CaptureArgs,
    /// The socket kubelet connects to (its --container-runtime-endpoint=unix://PATH);
    /// default [cri] listen, /run/ckvault/cri.sock.
    #[arg(long, value_name = "SOCK")]
    listen: Option<PathBuf>,
    /// The real runtime's socket (containerd: /run/containerd/containerd.sock; CRI-O:
    /// /var/run/crio/crio.sock); default [cri] upstream.
    #[arg(long, value_name = "SOCK")]
    runtime: Option<PathBuf>,
    /// Leave nothing at the kubelet's requested location (default [cri] kubelet_location,
    /// `receipt`: a JSON receipt, 0600).
    #[arg(long)]
    no_receipts: bool,
    /// Serve the proxy's counters at http://ADDR/metrics (Prometheus text; counts only);
    /// default [cri] metrics_listen, none.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// Runs `ckvault proxy`.
pub(super) fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let config = args.capture.config()?;
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| config.cri.listen.clone());
    let upstream = args
        .runtime
        .clone()
        .or_else(|| config.cri.upstream.clone())
        .context("name the runtime socket with --runtime or [cri] upstream")?;
    let receipts = !args.no_receipts && config.cri.kubelet_location == KubeletLocation::Receipt;
    let metrics_listen = args.metrics.or(config.cri.metrics_listen);
    let capture = super::common::capture_setup(
        &config,
        &args.capture,
        crate::manifest::SourceKind::CriProxy,
    )?;
    let checkpointer = Checkpointer::new(RuntimeClient::new(&upstream), capture.intake.clone())
        .with_staging_mode(config.cri.staging_mode);
    let node_rules = config.trigger.iter().any(|r| Kind::of(r) != Kind::Alert);
    let mut proxy = proxy::Proxy::new(checkpointer.clone(), receipts);
    proxy.max_intercepted = config.cri.max_intercepted;
    proxy.max_pending_per_connection = config.cri.max_pending_per_connection;
    if node_rules {
        // The node's own triggers (before a stop, schedule, threshold) go through the same
        // gate and use case as alerts, audited in the store's log.
        let local = capture.intake.store();
        let audit = Arc::new(local.audit_log()?);
        let disks = vec![local.staging_dir()?, local.root().to_path_buf()];
        let custody = crate::vault::Custody::new(capture.store.clone(), audit.clone());
        let incidents = Incidents::from_config(&config, Some(checkpointer), custody, audit, disks)?;
        proxy.node = Some(Arc::new(NodeTriggers::new(incidents, &config.capture)?));
    }
    let node = proxy.node.clone();
    let proxy = Arc::new(proxy);
    // One thread: forwarding is I/O-bound and a call hops between several tasks (the
    // kubelet's connection, the handler, the runtime's connection); on one thread those
    // hops are plain wake-ups, not cross-core hand-offs. Sealing runs on the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let uploader = capture.uploader;
    runtime.block_on(async move {
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        if let Some(u) = uploader {
            tokio::spawn(u.run(stop.clone()));
        }
        if let Some(node) = node.filter(|n| n.polls()) {
            tokio::spawn(node.run_polls());
        }
        if let Some(dir) = listen.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let listener =
            proxy::bind(&listen).with_context(|| format!("cannot listen on {}", listen.display()))?;
        let metrics_stop = std::sync::Arc::new(tokio::sync::Notify::new());
        if let Some(addr) = metrics_listen {
            let bound = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for /metrics ([cri] metrics_listen)"))?;
            let addr = bound.local_addr()?;
            let stopped = metrics_stop.clone();
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let shutdown = async move { stopped.notified().await };
                proxy::serve_metrics(proxy, bound, shutdown).await;
            });
            println!("ckvault: CRI proxy metrics on http://{addr}/metrics");
        }
        println!(
            "ckvault: CRI proxy on unix://{} -> unix://{}",
            listen.display(),
            upstream.display()
        );
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            }
        };
        proxy::serve(proxy, listener, shutdown).await;
        stop.notify_waiters();
        metrics_stop.notify_waiters();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
