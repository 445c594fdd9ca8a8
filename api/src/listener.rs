//! The API's listener: HTTPS (rustls) on every address but loopback, where
//! plain HTTP serves development and a local reverse proxy that terminates
//! TLS itself. Every socket is admitted against the connection caps
//! ([`ConnGate`]) as it is accepted, before any handshake. TLS handshakes
//! run in tasks of their own, each bounded in time and all together in
//! number, so a client that connects and stalls never delays anyone's
//! accept (the same rule as the MQTT listener). A failed accept (out of
//! file descriptors) backs off instead of spinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pantau_state::admission::Slot;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use crate::serve::ConnGate;

/// Connections whose handshake finished, waiting for the server to take them.
const READY_QUEUE: usize = 128;
/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// TLS limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Most time a client may take to finish its handshake (including the
    /// wait for a handshake slot).
    pub timeout: Duration,
    /// Most handshakes in progress at once.
    pub max_in_progress: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_in_progress: 256,
        }
    }
}

/// Where the API is served from.
#[derive(Debug)]
pub struct ApiListener {
    inner: Inner,
    local: SocketAddr,
    /// The connection caps (shared with the accept task).
    pub(crate) gate: Arc<ConnGate>,
}

#[derive(Debug)]
enum Inner {
    Plain(TcpListener),
    /// Streams whose handshake succeeded, from the accept task.
    Tls(mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr, Slot)>),
}

/// An accepted connection: its stream, its peer and its admission slot.
pub(crate) type Accepted = (Either<TcpStream, TlsStream<TcpStream>>, SocketAddr, Slot);

impl ApiListener {
    /// Plain HTTP; refused on anything but a loopback address.
    pub fn plain(listener: TcpListener, gate: Arc<ConnGate>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("plain HTTP on {local}: only loopback addresses may serve without TLS"),
            ));
        }
        Ok(Self {
            inner: Inner::Plain(listener),
            local,
            gate,
        })
    }

    /// HTTPS with `config` (ALPN `http/1.1` is set here). Spawns the task
    /// that accepts and handshakes; it ends when this listener is dropped.
    pub fn https(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        limits: HandshakeLimits,
        gate: Arc<ConnGate>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let permits = Arc::new(Semaphore::new(limits.max_in_progress.max(1)));
        let (ready, rx) = mpsc::channel(READY_QUEUE);
        let task_gate = gate.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    // The server is gone.
                    _ = ready.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off a
                        // little instead of spinning.
                        tracing::warn!(error = %e, "API accept failed.");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Over a cap: closed before any handshake work.
                let Some(slot) = task_gate.admit(peer) else {
                    continue;
                };
                let (acceptor, permits, ready) = (acceptor.clone(), permits.clone(), ready.clone());
                tokio::spawn(async move {
                    tune(&tcp);
                    let handshake = async {
                        let _permit = permits.acquire().await.ok()?;
                        acceptor.accept(tcp).await.ok()
                    };
                    match tokio::time::timeout(limits.timeout, handshake).await {
                        Ok(Some(tls)) => {
                            let _ = ready.send((tls, peer, slot)).await;
                        }
                        Ok(None) => tracing::debug!(%peer, "API TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out."),
                    }
                });
            }
        });
        Ok(Self {
            inner: Inner::Tls(rx),
            local,
            gate,
        })
    }

    /// Whether this listener serves HTTPS.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }
}

impl ApiListener {
    /// The next admitted connection.
    pub(crate) async fn accept(&mut self) -> Accepted {
        match &mut self.inner {
            Inner::Plain(l) => loop {
                let (io, peer) = match l.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "API accept failed.");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let Some(slot) = self.gate.admit(peer) else {
                    continue;
                };
                tune(&io);
                return (Either::Left(io), peer, slot);
            },
            Inner::Tls(rx) => match rx.recv().await {
                Some((io, peer, slot)) => (Either::Right(io), peer, slot),
                // The accept task ended: nothing will come again.
                None => std::future::pending().await,
            },
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Unsent bytes the kernel holds for one API connection before the socket
/// stops being writable.
pub(crate) const NOTSENT_LOWAT: u32 = 64 * 1024;

/// Socket options of an API connection: no Nagle delay (live events are
/// small writes), and at most [`NOTSENT_LOWAT`] of unsent data in the
/// kernel — without it the send buffer autotunes to 4 MiB for a client
/// that stopped reading, and a few thousand stalled live streams would
/// hold gigabytes of the kernel's TCP memory that the gateways share.
fn tune(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set.");
    }
}
