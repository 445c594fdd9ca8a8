//! The API's listener: HTTPS (rustls) on every address but loopback, where
//! plain HTTP serves development and a local reverse proxy that terminates
//! TLS itself. TLS handshakes run in tasks of their own, each bounded in
//! time and all together in number, so a client that connects and stalls
//! never delays anyone's accept (the same rule as the MQTT listener).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

/// Connections whose handshake finished, waiting for the server to take them.
const READY_QUEUE: usize = 128;

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
}

#[derive(Debug)]
enum Inner {
    Plain(TcpListener),
    /// Streams whose handshake succeeded, from the accept task.
    Tls(mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>),
}

impl ApiListener {
    /// Plain HTTP; refused on anything but a loopback address.
    pub fn plain(listener: TcpListener) -> std::io::Result<Self> {
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
        })
    }

    /// HTTPS with `config` (ALPN `http/1.1` is set here). Spawns the task
    /// that accepts and handshakes; it ends when this listener is dropped.
    pub fn https(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        limits: HandshakeLimits,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let permits = Arc::new(Semaphore::new(limits.max_in_progress.max(1)));
        let (ready, rx) = mpsc::channel(READY_QUEUE);
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
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, permits, ready) = (acceptor.clone(), permits.clone(), ready.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let handshake = async {
                        let _permit = permits.acquire().await.ok()?;
                        acceptor.accept(tcp).await.ok()
                    };
                    match tokio::time::timeout(limits.timeout, handshake).await {
                        Ok(Some(tls)) => {
                            let _ = ready.send((tls, peer)).await;
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
        })
    }

    /// Whether this listener serves HTTPS.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match &mut self.inner {
            Inner::Plain(l) => {
                let (io, addr) = axum::serve::Listener::accept(l).await;
                // Live events are small writes: no Nagle delay on them.
                let _ = io.set_nodelay(true);
                (Either::Left(io), addr)
            }
            Inner::Tls(rx) => match rx.recv().await {
                Some((io, addr)) => (Either::Right(io), addr),
                // The accept task ended: nothing will come again.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
