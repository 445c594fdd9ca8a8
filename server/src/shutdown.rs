//! The shutdown manager and supervisor of `pantau up` and `pantau ingest`
//! (STYLE.md rule 3): every task the process starts is named and belongs to
//! a stage; stages stop in the order they were added (demo gateways before
//! the broker, the broker before the drain, the API last), each cancelled
//! and awaited in turn, and past a grace period the process logs the names
//! of the tasks still pending and exits.
//!
//! A task that ends on its own before shutdown is never left dead behind a
//! healthy-looking process. It is logged with its error (or panic) and,
//! depending on how it was spawned, either restarted with backoff (its
//! readiness part down meanwhile) or it stops the process, which then exits
//! non-zero ([`Supervisor::run`] returns the failure).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pantau_ingest::{Health, Part};
use pantau_model::backoff::Backoff;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A task that stopped the process.
#[derive(Debug, thiserror::Error)]
#[error("{task} stopped unexpectedly: {why}")]
pub struct TaskFailed {
    /// The task's name.
    pub task: String,
    /// Its error, or that it panicked or returned.
    pub why: String,
}

/// One group of tasks stopped together.
#[derive(Debug)]
struct Stage {
    name: &'static str,
    /// Fired when the stage stops.
    token: CancellationToken,
    /// Its tasks, awaited at stop.
    tracker: TaskTracker,
}

/// Identifies a stage of a [`Supervisor`].
#[derive(Debug, Clone, Copy)]
pub struct StageId(usize);

/// Names of the tasks still running.
type Pending = Arc<Mutex<BTreeSet<String>>>;

/// Owns every task of the process; see the module docs.
#[derive(Debug)]
pub struct Supervisor {
    /// In stop order.
    stages: Vec<Stage>,
    /// Tasks still running, by name, for the grace-period message.
    pending: Pending,
    /// Where critical tasks report that they stopped.
    failed_tx: mpsc::UnboundedSender<TaskFailed>,
    failed_rx: mpsc::UnboundedReceiver<TaskFailed>,
    /// Readiness of the process's parts.
    health: Health,
}

/// The delay before restarting a task: from 1 s doubling to 30 s, reset
/// once a task ran this long.
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
const HEALTHY_RUN: Duration = Duration::from_secs(60);

fn describe<E: std::fmt::Display>(result: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => "it returned".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            format!("it panicked: {message}")
        }
        Err(e) => e.to_string(),
    }
}

impl Supervisor {
    /// A supervisor reporting readiness to `health`.
    pub fn new(health: Health) -> Self {
        let (failed_tx, failed_rx) = mpsc::unbounded_channel();
        Self {
            stages: Vec::new(),
            pending: Pending::default(),
            failed_tx,
            failed_rx,
            health,
        }
    }

    /// Adds a stage; stages stop in the order they are added.
    pub fn stage(&mut self, name: &'static str) -> StageId {
        self.stages.push(Stage {
            name,
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        StageId(self.stages.len() - 1)
    }

    /// The token that fires when `stage` stops.
    pub fn token(&self, stage: StageId) -> CancellationToken {
        self.stages[stage.0].token.clone()
    }

    /// Starts `make(token)` as task `name`; whenever it ends before its
    /// stage stops (error, panic or plain return) it is logged, `part` (if
    /// any) is down with the reason, and it is started again after a
    /// jittered backoff.
    pub fn spawn_restarting<F, Fut, E>(
        &self,
        stage: StageId,
        name: impl Into<String>,
        part: Option<Part>,
        mut make: F,
    ) where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let name = name.into();
        let token = self.token(stage);
        let health = self.health.clone();
        let guard = PendingGuard::new(&self.pending, &name);
        self.stages[stage.0].tracker.spawn(async move {
            let _guard = guard;
            let mut backoff = Backoff::new(RESTART_MIN, RESTART_MAX).expect("valid backoff bounds");
            loop {
                let started = Instant::now();
                let result = tokio::spawn(make(token.clone())).await;
                if token.is_cancelled() {
                    return;
                }
                if started.elapsed() >= HEALTHY_RUN {
                    backoff.reset();
                }
                let why = describe(result);
                let delay = backoff.next_delay();
                tracing::error!(task = %name, error = %why, retry_in_ms = delay.as_millis() as u64, "Task stopped unexpectedly; restarting.");
                if let Some(part) = part {
                    health.down(part, format_args!("{name} stopped: {why}; restarting"));
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => return,
                }
            }
        });
    }

    /// Starts `make(token)` as task `name`; if it ends before its stage
    /// stops, it is logged, `part` (if any) is down, and the process shuts
    /// down and exits non-zero.
    pub fn spawn_critical<F, Fut, E>(
        &self,
        stage: StageId,
        name: impl Into<String>,
        part: Option<Part>,
        make: F,
    ) where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let name = name.into();
        let token = self.token(stage);
        let (health, failed) = (self.health.clone(), self.failed_tx.clone());
        let guard = PendingGuard::new(&self.pending, &name);
        let task = make(token.clone());
        self.stages[stage.0].tracker.spawn(async move {
            let _guard = guard;
            let result = tokio::spawn(task).await;
            if token.is_cancelled() && matches!(result, Ok(Ok(()))) {
                return;
            }
            let why = describe(result);
            tracing::error!(task = %name, error = %why, "Task stopped unexpectedly; stopping the process.");
            if let Some(part) = part {
                health.down(part, format_args!("{name} stopped: {why}"));
            }
            let _ = failed.send(TaskFailed { task: name, why });
        });
    }

    /// Waits for SIGINT/SIGTERM or a critical task's failure, then stops
    /// every stage in order within `grace`. Returns the failure, if one
    /// started the shutdown.
    pub async fn run(self, grace: Duration) -> Result<(), TaskFailed> {
        let Self {
            stages,
            pending,
            failed_tx,
            mut failed_rx,
            ..
        } = self;
        drop(failed_tx);
        let failure = tokio::select! {
            _ = signal() => None,
            Some(f) = failed_rx.recv() => Some(f),
        };
        match &failure {
            None => tracing::info!("Shutting down."),
            Some(f) => {
                tracing::error!(task = %f.task, error = %f.why, "Shutting down after a task stopped.")
            }
        }
        stop(&stages, &pending, grace).await;
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// Stops the stages in order; past `grace`, logs what is still pending.
async fn stop(stages: &[Stage], pending: &Pending, grace: Duration) {
    let ordered = async {
        for stage in stages {
            tracing::debug!(stage = stage.name, "Stopping.");
            stage.token.cancel();
            stage.tracker.close();
            stage.tracker.wait().await;
        }
    };
    if tokio::time::timeout(grace, ordered).await.is_err() {
        let names: Vec<String> = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        tracing::warn!(
            grace_s = grace.as_secs(),
            pending = %names.join(", "),
            "Shutdown grace period passed; exiting with tasks pending."
        );
    }
}

/// Keeps a task's name in the pending set while the task lives.
#[derive(Debug)]
struct PendingGuard {
    pending: Pending,
    name: String,
}

impl PendingGuard {
    fn new(pending: &Pending, name: &str) -> Self {
        pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
        Self {
            pending: pending.clone(),
            name: name.to_owned(),
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// From now on, SIGHUP reloads the TLS server certificates from their files
/// (`tls/server.pem`, `tls/server-key.pem`) for new handshakes, without
/// closing a connection; a pair that does not load is logged and the
/// previous one stays in use.
pub fn reload_certificates_on_sighup() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                for (path, outcome) in pantau_broker::tls::reload_all() {
                    match outcome {
                        Ok(serial) => tracing::info!(
                            path = %path.display(),
                            serial,
                            "Reloaded the TLS certificate."
                        ),
                        Err(e) => tracing::error!(
                            path = %path.display(),
                            error = %e,
                            "The TLS certificate did not reload; the previous one stays in use."
                        ),
                    }
                }
            }
        });
    }
    Ok(())
}

/// Returns when SIGINT or SIGTERM arrives.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_with_backoff_and_its_part_is_down() {
        let health = Health::default();
        health.register(Part::Drain);
        let mut sup = Supervisor::new(health.clone());
        let stage = sup.stage("drain");
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        sup.spawn_restarting(stage, "drain", Some(Part::Drain), move |token| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    return Err(format!("store unwritable (run {n})"));
                }
                token.cancelled().await;
                Ok(())
            }
        });
        // Two failures, each followed by a backoff of at most 2 × 2 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(matches!(
            health.state(Part::Drain),
            Some(pantau_ingest::health::PartState::Down(r)) if r.contains("store unwritable (run 1)")
        ));
        let (pending, stages) = (sup.pending.clone(), std::mem::take(&mut sup.stages));
        stop(&stages, &pending, Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "not restarted after stop");
        assert!(pending.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_task_that_ends_stops_the_process_with_its_error() {
        let health = Health::default();
        let mut sup = Supervisor::new(health.clone());
        let api = sup.stage("api");
        sup.spawn_critical(api, "api", Some(Part::Api), |_token| async {
            Err::<(), _>("listener closed")
        });
        let err = sup.run(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.task, "api");
        assert!(err.why.contains("listener closed"), "{err}");
        assert!(!health.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_reported_with_its_message() {
        let mut sup = Supervisor::new(Health::default());
        let broker = sup.stage("broker");
        sup.spawn_critical(broker, "broker", None, |_token| async {
            if true {
                panic!("router thread gone");
            }
            Ok::<(), String>(())
        });
        let err = sup.run(Duration::from_secs(1)).await.unwrap_err();
        assert!(err.why.contains("panicked: router thread gone"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_grace_period_the_pending_tasks_are_named() {
        let mut sup = Supervisor::new(Health::default());
        let stage = sup.stage("demo");
        sup.spawn_restarting(stage, "stuck gateway", None, |_token| async {
            // Ignores its token.
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        });
        let (pending, stages) = (sup.pending.clone(), std::mem::take(&mut sup.stages));
        stop(&stages, &pending, Duration::from_secs(2)).await;
        assert!(pending.lock().unwrap().contains("stuck gateway"));
    }
}
