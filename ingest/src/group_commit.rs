//! The group-commit SQLite writer that the ingest log and the embedded
//! store share: one thread owns the write connection and is fed by a
//! bounded channel; it folds whatever is queued into one transaction (many
//! callers share one fsync) and answers each job only after the commit.
//! Async callers queue without blocking a tokio worker: when the channel
//! is full they wait for room on a blocking thread.

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
        Ok(Self { tx })
    }

    /// Queues `job`, waiting (off the async workers) while the queue is full.
    pub(crate) async fn send(&self, job: J) -> Result<()> {
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
