//! The commit pipeline of one connection: batch → submit → complete.
//!
//! - **Batch**: the telemetry publishes of one read are collected, so a
//!   pipelining gateway's envelopes go to the ingest path as one request.
//! - **Submit**: a batch becomes one commit in flight; a status publish
//!   (nothing to commit) takes its place in the same queue, so it is
//!   acknowledged after the telemetry before it.
//! - **Complete**: commits finish in any order but come out of
//!   [`Commits::next`] strictly in arrival order, so acknowledgements leave
//!   in the order the publishes came in. Up to the connection's window of
//!   publishes are in flight at once.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use pantau_ingest::Ingestor;

/// A publish whose commit finished (or that needed none).
#[derive(Debug)]
pub(crate) struct Completed {
    /// Its QoS (what acknowledgement it wants).
    pub(crate) qos: u8,
    /// Its packet id.
    pub(crate) pkid: u16,
    /// What to hand to rumqttd for live fan-out: topic, payload, retain.
    pub(crate) forward: Option<(Bytes, Bytes, bool)>,
}

/// A telemetry publish read but not yet handed to the ingest path.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) qos: u8,
    pub(crate) pkid: u16,
    pub(crate) topic: Bytes,
    pub(crate) payload: Bytes,
}

/// The outcome of one commit: its publishes, or why nothing of it may be
/// acknowledged.
pub(crate) type Outcome = Result<Vec<Completed>, pantau_ingest::Error>;

/// The commits of one connection, in arrival order.
pub(crate) struct Commits {
    /// Commits in flight, completed in arrival order.
    inflight: FuturesOrdered<BoxFuture<'static, Outcome>>,
    /// Publishes in `inflight` and `batch`.
    publishes: usize,
    /// Telemetry of the current read, not yet submitted.
    batch: Vec<Telemetry>,
    /// Where telemetry is committed.
    ingestor: Arc<Ingestor>,
    /// The connection's gateway.
    gateway: String,
    /// Whether committed telemetry goes to rumqttd too.
    fanout: bool,
}

impl Commits {
    pub(crate) fn new(ingestor: Arc<Ingestor>, gateway: String, fanout: bool) -> Self {
        Self {
            inflight: FuturesOrdered::new(),
            publishes: 0,
            batch: Vec::new(),
            ingestor,
            gateway,
            fanout,
        }
    }

    /// Publishes read and not yet completed.
    pub(crate) fn in_flight(&self) -> usize {
        self.publishes
    }

    /// Whether no commit is in flight (a batch may still wait to be submitted).
    pub(crate) fn is_idle(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Adds a telemetry publish to the current batch.
    pub(crate) fn push_telemetry(&mut self, t: Telemetry) {
        self.publishes += 1;
        self.batch.push(t);
    }

    /// Queues a publish that needs no commit, after everything before it.
    pub(crate) fn push_done(&mut self, c: Completed) {
        self.submit();
        self.publishes += 1;
        self.inflight
            .push_back(futures::future::ready(Ok(vec![c])).boxed());
    }

    /// Hands the current batch to the ingest path as one request.
    pub(crate) fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let (ingestor, gateway, fanout) =
            (self.ingestor.clone(), self.gateway.clone(), self.fanout);
        self.inflight.push_back(
            async move {
                let payloads: Vec<&[u8]> = batch.iter().map(|t| &t.payload[..]).collect();
                let outcomes = ingestor.ingest_many(&gateway, &payloads).await?;
                Ok(batch
                    .into_iter()
                    .zip(outcomes)
                    .map(|(t, outcome)| Completed {
                        qos: t.qos,
                        pkid: t.pkid,
                        forward: (fanout && outcome.envelope_error.is_none())
                            .then_some((t.topic, t.payload, false)),
                    })
                    .collect())
            }
            .boxed(),
        );
    }

    /// The next commit to finish, in arrival order (never, while none is
    /// in flight).
    pub(crate) async fn next(&mut self) -> Outcome {
        match self.inflight.next().await {
            Some(outcome) => self.count(outcome),
            None => std::future::pending().await,
        }
    }

    /// The next commit if it has already finished.
    pub(crate) fn next_ready(&mut self) -> Option<Outcome> {
        let outcome = self.inflight.next().now_or_never().flatten()?;
        Some(self.count(outcome))
    }

    fn count(&mut self, outcome: Outcome) -> Outcome {
        if let Ok(completed) = &outcome {
            self.publishes -= completed.len();
        }
        outcome
    }
}
