//! MQTT 3.1.1 framing over any async stream with rumqttd's public codec.
//! `Publish`'s QoS and packet id are crate-private in rumqttd, so they are
//! read from the raw frame, located with the public `v4::check()`.

use bytes::BytesMut;
use rumqttd::protocol::v4::{check, FixedHeader, V4};
use rumqttd::protocol::{Error as ProtoError, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::reason::End;

/// A decoded packet plus the publish fields rumqttd keeps private.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) packet: Packet,
    /// QoS of a PUBLISH (0 otherwise).
    pub(crate) qos: u8,
    /// Packet id of a PUBLISH with QoS > 0 (0 otherwise).
    pub(crate) pkid: u16,
}

/// Why reading from a client failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Protocol(ProtoError),
    #[error("malformed packet: reserved fixed-header flags {0:#06b} for packet type {1}")]
    Flags(u8, u8),
    #[error("write did not finish within {0:?}: the client does not read")]
    WriteTimeout(std::time::Duration),
}

impl WireError {
    /// How the connection ends because of it.
    pub(crate) fn end(&self) -> End {
        match self {
            WireError::Closed => End::Closed,
            WireError::Io(_) => End::Io,
            WireError::Protocol(ProtoError::PayloadSizeLimitExceeded(_)) => End::PacketTooLarge,
            WireError::Protocol(_) | WireError::Flags(..) => End::MalformedPacket,
            WireError::WriteTimeout(_) => End::WriteTimeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_header_flags() {
        assert!(check_flags(0x10).is_ok()); // CONNECT
        assert!(check_flags(0x11).is_err());
        assert!(check_flags(0x32).is_ok()); // PUBLISH QoS 1
        assert!(check_flags(0x36).is_err()); // QoS 3
        assert!(check_flags(0x38).is_err()); // DUP at QoS 0
        assert!(check_flags(0x62).is_ok()); // PUBREL
        assert!(check_flags(0x60).is_err());
        assert!(check_flags(0x82).is_ok()); // SUBSCRIBE
        assert!(check_flags(0x80).is_err());
        assert!(check_flags(0xc0).is_ok()); // PINGREQ
        assert!(check_flags(0xe1).is_err());
    }
}

/// What the gatekeeper's reader makes of `input` arriving in `pieces`
/// (each the length of one read; the rest comes in one last read): each
/// packet as read, up to and including the error that would end the
/// connection. For the fuzz targets: the outcome may not depend on how
/// the bytes were split, and no input may stall or crash the reader.
pub fn frames(input: &[u8], pieces: &[usize], max_packet: usize) -> Vec<String> {
    let (io, _peer) = tokio::io::duplex(1);
    let mut wire = Wire::new(io, max_packet, std::time::Duration::from_secs(1));
    let mut out = Vec::new();
    let mut rest = input;
    let reads = pieces.iter().copied().chain(std::iter::once(usize::MAX));
    for n in reads {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(n.min(rest.len()));
        rest = later;
        wire.rbuf.extend_from_slice(now);
        while let Some(frame) = wire.read_buffered() {
            match frame {
                Ok(f) => out.push(format!("{:?} qos={} pkid={}", f.packet, f.qos, f.pkid)),
                Err(e) => {
                    out.push(format!("end: {e}"));
                    return out;
                }
            }
        }
    }
    out
}

/// A client connection with read and write buffers.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Largest remaining length accepted.
    max_packet: usize,
    /// Most time one flush may take.
    write_timeout: std::time::Duration,
}

fn publish_meta(h: &FixedHeader, buf: &[u8]) -> (u8, u16) {
    if h.byte1 >> 4 != 3 {
        return (0, 0);
    }
    let qos = (h.byte1 >> 1) & 0b11;
    if qos == 0 {
        return (0, 0);
    }
    let at = h.fixed_header_len;
    let topic_len = match buf.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
        None => return (qos, 0),
    };
    let p = at + 2 + topic_len;
    match buf.get(p..p + 2) {
        Some(b) => (qos, u16::from_be_bytes([b[0], b[1]])),
        None => (qos, 0),
    }
}

/// MQTT 3.1.1 §2.2.2: the flags each packet type must carry (rumqttd's
/// codec does not check them). PUBLISH may not use QoS 3, nor DUP at QoS 0.
fn check_flags(byte1: u8) -> Result<(), WireError> {
    let (kind, flags) = (byte1 >> 4, byte1 & 0x0f);
    let ok = match kind {
        3 => (flags >> 1) & 0b11 != 3 && !(flags & 0b1000 != 0 && (flags >> 1) & 0b11 == 0),
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::Flags(flags, kind))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(io: S, max_packet: usize, write_timeout: std::time::Duration) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            max_packet,
            write_timeout,
        }
    }

    /// Reads one packet. Cancel-safe: partial input stays buffered.
    pub(crate) async fn read(&mut self) -> Result<Frame, WireError> {
        loop {
            if let Some(frame) = self.read_buffered() {
                return frame;
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }

    /// The next packet if it is already buffered in full, without I/O.
    pub(crate) fn read_buffered(&mut self) -> Option<Result<Frame, WireError>> {
        match check(self.rbuf.iter(), self.max_packet) {
            Ok(header) => Some(check_flags(header.byte1).and_then(|()| {
                let (qos, pkid) = publish_meta(&header, &self.rbuf);
                let packet = V4
                    .read_mut(&mut self.rbuf, self.max_packet)
                    .map_err(WireError::Protocol)?;
                Ok(Frame { packet, qos, pkid })
            })),
            Err(ProtoError::InsufficientBytes(_)) => None,
            Err(e) => Some(Err(WireError::Protocol(e))),
        }
    }

    /// Queues a packet for [`Wire::flush`].
    pub(crate) fn queue(&mut self, packet: Packet) -> Result<(), WireError> {
        V4.write(packet, &mut self.wbuf)
            .map(drop)
            .map_err(WireError::Protocol)
    }

    /// Writes everything queued, within the write deadline.
    pub(crate) async fn flush(&mut self) -> Result<(), WireError> {
        let write = async {
            if !self.wbuf.is_empty() {
                self.io.write_all(&self.wbuf).await?;
                self.wbuf.clear();
            }
            self.io.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(WireError::WriteTimeout(self.write_timeout)),
        }
    }

    /// Writes one packet now.
    pub(crate) async fn send(&mut self, packet: Packet) -> Result<(), WireError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Closes the write side (TLS close_notify), within the write deadline:
    /// a client that stopped reading must not hold its task here.
    pub(crate) async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.write_timeout, self.io.shutdown()).await;
    }
}
