//! The group-commit SQLite writer that the ingest log and the embedded
//! store share: one thread owns the write connection and is fed by a
//! bounded channel; it folds whatever is queued into one transaction (many
//! callers share one fsync) and answers each job only after the commit.
//! Async callers queue without blocking a tokio worker: when the channel
//! is full they wait for room on a blocking thread. Jobs are queued in the
//! order their senders called [`Writer::send`] (a fair lock around the
//! queueing), so the commits of one gateway connection, sent one after the
//! other, are committed in that order even while the queue is full —
//! without it a later commit could slip into a freed slot before an
//! earlier one waiting on its blocking thread, and a sensor's readings
//! would reach the log out of order.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::Connection;

use crate::{Error, Result};

/// How a writer groups its jobs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Jobs queued before senders wait.
    pub(crate) depth: usize,
    /// Most jobs folded into one transaction.
    pub(crate) max_group: usize,
    /// Weight (see [`GroupCommit::weight`]) after which a group takes no more.
    pub(crate) max_weight: usize,
    /// How often [`GroupCommit::housekeeping`] runs while idle, if at all.
    pub(crate) idle: Option<Duration>,
}

/// What a writer thread does with a group of jobs.
pub(crate) trait GroupCommit: Send + 'static {
    /// One queued request (it carries its own answer channel).
    type Job: Send + 'static;

    /// How much a job counts against [`Limits::max_weight`].
    fn weight(_job: &Self::Job) -> usize {
        1
    }

    /// Commits the group in one transaction and answers every job.
    fn commit_group(&mut self, group: Vec<Self::Job>);

    /// Runs before each wait for work (retention and the like).
    fn housekeeping(&mut self) {}
}

/// The sending side of a writer thread.
#[derive(Debug)]
pub(crate) struct Writer<J> {
    tx: SyncSender<J>,
    /// Taken while queueing (tokio's mutex grants it in FIFO order).
    turn: tokio::sync::Mutex<()>,
}

impl<J: Send + 'static> Writer<J> {
    /// Starts the thread `name` running `committer`.
    pub(crate) fn spawn<C>(name: &str, path: &Path, committer: C, limits: Limits) -> Result<Self>
    where
        C: GroupCommit<Job = J>,
    {
        let (tx, rx) = sync_channel(limits.depth);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(committer, rx, limits))
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            tx,
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Queues `job`, waiting (off the async workers) while the queue is full.
    pub(crate) async fn send(&self, job: J) -> Result<()> {
        let _turn = self.turn.lock().await;
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(Error::WriterGone),
            Err(TrySendError::Full(job)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|_| Error::WriterGone)?
                    .map_err(|_| Error::WriterGone)
            }
        }
    }
}

fn run<C: GroupCommit>(mut committer: C, rx: Receiver<C::Job>, limits: Limits) {
    loop {
        committer.housekeeping();
        let first = match limits.idle {
            Some(every) => match rx.recv_timeout(every) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut weight = C::weight(&first);
        let mut group = vec![first];
        while group.len() < limits.max_group && weight < limits.max_weight {
            match rx.try_recv() {
                Ok(job) => {
                    weight += C::weight(&job);
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        committer.commit_group(group);
    }
}

/// Opens a database for a group-commit writer or its readers: WAL,
/// `synchronous = FULL`, a busy timeout, then `schema` (idempotent SQL).
pub(crate) fn open_db(path: &Path, schema: &str) -> Result<Connection> {
    let sql = |source| Error::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .map_err(sql)?;
    conn.execute_batch(schema).map_err(sql)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records job order, slowly, so the queue fills.
    struct Slow(std::sync::Arc<std::sync::Mutex<Vec<u32>>>);

    impl GroupCommit for Slow {
        type Job = (u32, tokio::sync::oneshot::Sender<()>);

        fn commit_group(&mut self, group: Vec<Self::Job>) {
            std::thread::sleep(Duration::from_millis(2));
            for (n, done) in group {
                self.0.lock().unwrap().push(n);
                let _ = done.send(());
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_sent_one_after_another_are_committed_in_order_while_the_queue_is_full() {
        use futures::stream::{FuturesOrdered, StreamExt};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let limits = Limits {
            depth: 2,
            max_group: 2,
            max_weight: usize::MAX,
            idle: None,
        };
        let w = std::sync::Arc::new(
            Writer::spawn("order-test", Path::new("."), Slow(seen.clone()), limits).unwrap(),
        );
        // Like one connection's commit pipeline: futures pushed in order,
        // polled together, each queueing its job and waiting for its commit.
        let mut inflight = FuturesOrdered::new();
        for n in 0..400u32 {
            let w = w.clone();
            inflight.push_back(async move {
                let (done, wait) = tokio::sync::oneshot::channel();
                w.send((n, done)).await.unwrap();
                wait.await.unwrap();
            });
        }
        while inflight.next().await.is_some() {}
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (0..400).collect::<Vec<_>>());
    }
}
