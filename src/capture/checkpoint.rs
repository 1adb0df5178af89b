//! One checkpoint, from runtime call to sealed record: serialize per container, register
//! the call's intent and ask the runtime (CheckpointContainer) to write into a fresh
//! private staging file, seal it with the identity the runtime reports for the container
//! (cross-checked against the archive), remove the plaintext. A call that leaves nothing
//! to seal is a `capture-abandoned` audit event, not a record. Shared by the CRI proxy and
//! the trigger API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cri::{
    CheckpointContainerRequest, CheckpointContainerResponse, ContainerStatusRequest,
    ContainerStatusResponse, GrpcStatus, LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_POD,
    RuntimeClient,
};
use super::staging;
use crate::manifest::{Manifest, Source, SourceKind};
use crate::seal::ClaimedIdentity;
use crate::store::LocalStore;
use crate::vault::intake::Intake;

/// The longest a checkpoint may be given: an hour is far beyond what CRIU needs for any
/// container a node can hold, and keeps every deadline derived from it representable.
pub(crate) const MAX_DEADLINE: Duration = Duration::from_secs(3600);
/// Why a checkpoint did not become a record.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The upload spool is full: the runtime was not asked (nothing was written).
    #[error(transparent)]
    SpoolFull(crate::store::StoreError),
    /// The runtime refused or failed (passed back to the caller unchanged).
    #[error(transparent)]
    Runtime(#[from] GrpcStatus),
    /// The private staging file (or pipe) could not be made: the runtime was not asked.
    #[error(
        "cannot prepare ckvault's private staging for the checkpoint ({0}); the runtime was not asked"
    )]
    Staging(#[source] crate::store::StoreError),
    /// The runtime wrote the archive but sealing failed; the plaintext stays in the
    /// private staging directory and is sealed at the next start.
    #[error(
        "the checkpoint was taken but sealing failed ({0}); the archive is kept in ckvault's private staging directory and will be sealed when ckvault restarts"
    )]
    Seal(#[source] crate::seal::SealError),
    /// Sealing from the pipe failed after the runtime wrote everything: the archive was
    /// never on disk and is lost (`[cri] staging_mode = "fifo"`).
    #[error(
        "the checkpoint was taken but sealing failed ({0}) (staging_mode = fifo: the archive was never on disk and is lost)"
    )]
    SealFromPipe(#[source] crate::seal::SealError),
    /// The capture's task panicked or was cancelled.
    #[error("internal error: the checkpoint task failed ({0})")]
    Task(#[from] tokio::task::JoinError),
}

/// One checkpoint to take: which container, within what time, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRequest {
    /// The runtime's container ID.
    pub container_id: String,
    /// How long the runtime may take (bounded by [`MAX_DEADLINE`] whatever is asked).
    pub deadline: Duration,
    /// What asks, as the record names it: [`SourceKind::CriProxy`], [`SourceKind::Trigger`].
    pub source: SourceKind,
    /// Where the caller wanted the archive (the kubelet's location), if it said.
    pub location: Option<String>,
    /// Who asks, as the record and the audit log name them.
    pub actor: String,
    /// Why (an alert, a schedule, ...), written into the signed manifest (schema v2);
    /// `None` when a person or the kubelet asked directly (the record stays v1).
    pub trigger: Option<crate::manifest::Trigger>,
}

/// Whether a call that failed with `code` may still have the runtime writing its archive
/// (the call was cancelled, ran out of time, or lost the runtime, which may go on).
fn may_still_write(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
    )
}

/// How a capture through a pipe ended, when not with a record.
enum FifoOutcome {
    /// The runtime cannot write into a pipe (it wrote nothing): retry with a file.
    Refused(GrpcStatus),
    /// Any other failure, for the caller.
    Failed(CheckpointError),
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    n: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Serializes checkpoints per container (runtimes fail concurrent checkpoints of one
/// container) and runs them.
#[derive(Clone)]
pub struct Checkpointer {
    runtime: RuntimeClient,
    intake: Intake,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Whether to hand the runtime a named pipe (`[cri] staging_mode = "fifo"`); cleared
    /// for the rest of the process when the runtime cannot write to one.
    fifo: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    /// A checkpointer for `runtime`, sealing through `intake` (store, recipients, node, and
    /// what follows a seal).
    pub fn new(runtime: RuntimeClient, intake: Intake) -> Self {
        Self {
            runtime,
            intake,
            locks: Arc::default(),
            fifo: Arc::default(),
        }
    }

    /// The same checkpointer with `[cri] staging_mode` applied.
    pub fn with_staging_mode(self, mode: crate::config::StagingMode) -> Self {
        self.fifo.store(
            mode == crate::config::StagingMode::Fifo,
            std::sync::atomic::Ordering::Relaxed,
        );
        self
    }

    /// Where and how it seals.
    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    /// The runtime it asks.
    pub fn runtime(&self) -> &RuntimeClient {
        &self.runtime
    }

    /// The store it seals into.
    pub fn store(&self) -> &LocalStore {
        self.intake.store()
    }

    /// Takes the checkpoint `request` asks for and seals the result.
    ///
    /// The work runs in its own task: a caller that disconnects does not cancel it, so an
    /// archive the runtime writes is always sealed and never stranded in staging.
    pub async fn checkpoint(
        &self,
        request: CheckpointRequest,
    ) -> Result<Manifest, CheckpointError> {
        // A deadline from outside (a gRPC timeout, a query parameter) is bounded here too,
        // whatever the caller checked: timers and the runtime client panic past theirs.
        let request = CheckpointRequest {
            deadline: request.deadline.min(MAX_DEADLINE),
            ..request
        };
        let me = self.clone();
        tokio::spawn(async move { me.run(request).await }).await?
    }

    async fn run(&self, request: CheckpointRequest) -> Result<Manifest, CheckpointError> {
        let CheckpointRequest {
            container_id,
            deadline,
            source,
            location,
            actor,
            trigger,
        } = request;
        let container_id = container_id.as_str();
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(container_id.to_owned()).or_default().clone()
        };
        let _serial = lock.lock().await;
        self.intake
            .check_room()
            .map_err(CheckpointError::SpoolFull)?;
        let status: ContainerStatusResponse = self
            .runtime
            .container_status(
                ContainerStatusRequest {
                    container_id: container_id.to_owned(),
                    verbose: false,
                },
                deadline.min(Duration::from_secs(30)),
            )
            .await?;
        let labels = status.status.map(|s| s.labels).unwrap_or_default();
        let claimed = ClaimedIdentity {
            namespace: labels.get(LABEL_NAMESPACE).cloned(),
            pod: labels.get(LABEL_POD).cloned(),
            container: labels.get(LABEL_CONTAINER).cloned(),
        };
        let intent = staging::Intent {
            namespace: claimed.namespace.clone(),
            pod: claimed.pod.clone(),
            container: claimed.container.clone(),
            container_id: container_id.to_owned(),
            requested_location: location.clone(),
            source: Some(source.clone()),
            actor: actor.clone(),
            started: crate::node::now_rfc3339(),
            trigger: trigger.clone(),
        };
        let mut opts = self.intake.options().clone();
        opts.claimed = claimed;
        opts.actor = actor;
        opts.trigger = trigger;
        opts.source = Source {
            kind: source,
            path: location,
        };
        if self.fifo.load(std::sync::atomic::Ordering::Relaxed) {
            match self
                .run_fifo(container_id, deadline, intent.clone(), &opts)
                .await
            {
                Err(FifoOutcome::Refused(status)) => {
                    tracing::warn!(
                        runtime = %status.message,
                        "the runtime cannot write its checkpoint into a pipe; falling back to \
                         staging files (plaintext on disk until sealed) for the rest of this process"
                    );
                    self.fifo.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Err(FifoOutcome::Failed(e)) => return Err(e),
                Ok(m) => return Ok(m),
            }
        }
        let (staged, file) =
            staging::create(self.intake.store(), intent).map_err(CheckpointError::Staging)?;
        drop(file); // the runtime opens the path itself (O_RDWR|O_CREAT, no O_TRUNC)
        let result: Result<CheckpointContainerResponse, GrpcStatus> = self
            .runtime
            .checkpoint_container(
                CheckpointContainerRequest {
                    container_id: container_id.to_owned(),
                    location: staged.archive.display().to_string(),
                    timeout: deadline.as_secs() as i64,
                },
                deadline,
            )
            .await;
        if let Err(e) = result {
            let empty = std::fs::metadata(&staged.archive).is_ok_and(|m| m.len() == 0);
            let may_still_write = may_still_write(e.code);
            if empty && !may_still_write {
                self.abandon(&staged, &format!("the runtime refused: {}", e.message));
            } else {
                // Keep watching the staging file and seal whatever lands there, so no
                // plaintext outlives the call.
                self.sweep_late(staged, deadline, e.code == tonic::Code::Unavailable);
            }
            return Err(e.into());
        }
        if std::fs::metadata(&staged.archive).is_ok_and(|m| m.len() == 0) {
            self.abandon(&staged, "the runtime reported success and wrote nothing");
            return Err(CheckpointError::Runtime(GrpcStatus::new(
                tonic::Code::Internal,
                "the runtime reported success but wrote no archive",
            )));
        }
        let intake = self.intake.clone();
        let path = staged.archive.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let file =
                crate::fsutil::open_nofollow(&path).map_err(crate::seal::SealError::Input)?;
            intake.seal(file, &opts, &|_| {})
        })
        .await?
        .map_err(CheckpointError::Seal)?;
        staged.remove();
        Ok(sealed)
    }

    /// The runtime writes into a private named pipe while ckvault seals from it: no
    /// plaintext on disk. The pipe is always read to its end (the runtime never blocks on
    /// it); a runtime that refuses the pipe without writing to it is `Refused`, and the
    /// caller retries with a file.
    async fn run_fifo(
        &self,
        container_id: &str,
        deadline: Duration,
        intent: staging::Intent,
        opts: &crate::seal::SealOptions,
    ) -> Result<Manifest, FifoOutcome> {
        let staged = staging::create_fifo(self.intake.store(), intent)
            .map_err(|e| FifoOutcome::Failed(CheckpointError::Staging(e)))?;
        let intake = self.intake.clone();
        let path = staged.archive.clone();
        let o = opts.clone();
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = read.clone();
        let sealer = tokio::task::spawn_blocking(move || {
            let pipe = crate::fsutil::open_fifo_reader(&path, 1 << 20)
                .map_err(crate::seal::SealError::Input)?;
            intake.seal_reader(
                CountingReader {
                    inner: pipe,
                    n: counted,
                },
                &o,
            )
        });
        let result: Result<CheckpointContainerResponse, GrpcStatus> = self
            .runtime
            .checkpoint_container(
                CheckpointContainerRequest {
                    container_id: container_id.to_owned(),
                    location: staged.archive.display().to_string(),
                    timeout: deadline.as_secs() as i64,
                },
                deadline,
            )
            .await;
        // The runtime has closed the pipe (or never opened it): release a reader still
        // waiting for a writer, then take the sealing pass's result.
        // (Until it has finished: a release before the reader opened the pipe finds no
        // reader and does nothing.)
        while !sealer.is_finished() {
            crate::fsutil::release_fifo_reader(&staged.archive);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sealed = sealer
            .await
            .map_err(|e| FifoOutcome::Failed(CheckpointError::Task(e)))?;
        let wrote = read.load(std::sync::atomic::Ordering::Relaxed);
        match (result, sealed) {
            (Ok(_), Ok(m)) => {
                staged.remove();
                Ok(m)
            }
            (Err(e), sealed) => {
                let named_pipe = e.message.contains(&staged.archive.display().to_string())
                    || e.message.contains("pipe");
                match sealed {
                    Ok(m) => tracing::warn!(
                        runtime = %e.message,
                        bytes = wrote,
                        record = %m.id,
                        "the runtime failed after writing; what it wrote is sealed"
                    ),
                    Err(_) => self.abandon(
                        &staged,
                        &format!("the runtime failed and wrote nothing: {}", e.message),
                    ),
                }
                staged.remove();
                if wrote == 0 && named_pipe && !may_still_write(e.code) {
                    return Err(FifoOutcome::Refused(e));
                }
                Err(FifoOutcome::Failed(e.into()))
            }
            (Ok(_), Err(crate::seal::SealError::Empty)) => {
                self.abandon(&staged, "the runtime reported success and wrote nothing");
                Err(FifoOutcome::Failed(CheckpointError::Runtime(
                    GrpcStatus::new(
                        tonic::Code::Internal,
                        "the runtime reported success but wrote no archive",
                    ),
                )))
            }
            (Ok(_), Err(e)) => {
                // The stream was read to its end and nothing stays in plaintext anywhere;
                // the archive is lost, and said so.
                self.abandon(&staged, &format!("sealing from the pipe failed: {e}"));
                Err(FifoOutcome::Failed(CheckpointError::SealFromPipe(e)))
            }
        }
    }

    /// A capture that left nothing to seal: a `capture-abandoned` audit event, and its
    /// staging files go.
    fn abandon(&self, staged: &staging::Staged, why: &str) {
        if let Err(e) = staging::abandoned(self.intake.store(), &staged.intent, why) {
            tracing::error!(error = %e, "cannot record an abandoned capture");
        }
        staged.remove();
    }

    /// After a failed call, polls the staging file for up to ten deadlines (at most ten
    /// minutes; 5 s when the runtime went away, `gone`): once it holds bytes that stop
    /// changing, it is sealed (source `cri-late-write`) and removed; a file still empty at
    /// the end is a `capture-abandoned` event.
    fn sweep_late(&self, staged: staging::Staged, deadline: Duration, gone: bool) {
        let me = self.clone();
        let mut opts = self.intake.options().clone();
        opts.actor = staged.intent.actor.clone();
        opts.claimed = staged.intent.claimed();
        opts.trigger = staged.intent.trigger.clone();
        opts.source = Source {
            kind: crate::manifest::SourceKind::CriLateWrite,
            path: staged.intent.requested_location.clone(),
        };
        let window = if gone {
            Duration::from_secs(5)
        } else {
            (deadline * 10).clamp(Duration::from_secs(5), Duration::from_secs(600))
        };
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            let mut last = None;
            while start.elapsed() < window {
                std::thread::sleep(Duration::from_millis(500));
                let Ok(meta) = std::fs::symlink_metadata(&staged.archive) else {
                    return; // gone
                };
                let now = (meta.len(), meta.modified().ok());
                if meta.len() > 0 && last == Some(now) {
                    if let Ok(file) = crate::fsutil::open_nofollow(&staged.archive)
                        && me.intake.seal(file, &opts, &|_| {}).is_ok()
                    {
                        staged.remove();
                    }
                    return;
                }
                last = Some(now);
            }
            if std::fs::metadata(&staged.archive).is_ok_and(|m| m.len() == 0) {
                me.abandon(&staged, "the call failed and the runtime wrote nothing");
            }
        });
    }
}
