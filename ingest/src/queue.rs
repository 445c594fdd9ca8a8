//! Handing work to a writer thread over a bounded std channel from async
//! code: try without blocking first; when the queue is full, wait for room
//! on a blocking thread so tokio workers never block.

use std::sync::mpsc::{SyncSender, TrySendError};

use crate::{Error, Result};

/// Queues `item`, waiting (off the async workers) while the queue is full.
pub(crate) async fn send<T: Send + 'static>(tx: &SyncSender<T>, item: T) -> Result<()> {
    match tx.try_send(item) {
        Ok(()) => Ok(()),
        Err(TrySendError::Disconnected(_)) => Err(Error::WriterGone),
        Err(TrySendError::Full(item)) => {
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || tx.send(item))
                .await
                .map_err(|_| Error::WriterGone)?
                .map_err(|_| Error::WriterGone)
        }
    }
}
