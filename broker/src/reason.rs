//! Why a connection was refused or ended, as types: every reason that is
//! matched or counted has a name here, and its label on `/metrics` and in
//! the logs comes from one place.

/// Why a connection was refused before or at CONNECT
/// (`pantau_broker_refused{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// More TLS handshakes waiting than allowed, past the deadline.
    HandshakeQueueFull,
    /// The TLS handshake failed (bad certificate, not TLS at all).
    TlsHandshakeFailed,
    /// The TLS handshake took longer than allowed.
    TlsHandshakeTimeout,
    /// No CONNECT in time after the handshake.
    ConnectTimeout,
    /// Reading the first packet failed.
    Read(End),
    /// Not MQTT 3.1.1.
    ProtocolVersion,
    /// The first packet was not CONNECT.
    NotConnect,
    /// Over the global connection cap.
    ConnectionCap,
    /// Over the per-address connection cap.
    ConnectionCapPerIp,
    /// Too many sockets in TLS or before CONNECT, over all addresses.
    PendingCap,
    /// Too many sockets from one address in TLS or before CONNECT.
    PendingCapPerIp,
    /// A client id rumqttd would choke on.
    ClientIdInvalid,
    /// A certificate and a username that name different gateways.
    CertUsernameMismatch,
    /// A certificate whose CN is not a gateway id.
    BadCertIdentity,
    /// A certificate of a gateway that is not registered.
    UnregisteredGateway,
    /// The state database did not answer.
    AuthUnavailable,
    /// Neither a certificate nor a username.
    NoCredentials,
    /// Unknown gateway or wrong token.
    BadCredentials,
    /// A client id that is not the gateway id.
    ClientIdMismatch,
    /// A last will on another topic than the gateway's status.
    WillAcl,
    /// The router refused the link of a persistent session.
    NoRouterLink,
    /// Commits are failing (a full or failing disk): nothing could be
    /// acknowledged.
    StorageFailing,
    /// `accept()` failed (out of file descriptors and the like).
    AcceptFailed,
}

impl Refused {
    /// The counter label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::HandshakeQueueFull => "handshake_queue_full",
            Refused::TlsHandshakeFailed => "tls_handshake_failed",
            Refused::TlsHandshakeTimeout => "tls_handshake_timeout",
            Refused::ConnectTimeout => "connect_timeout",
            Refused::Read(end) => end.as_str(),
            Refused::ProtocolVersion => "protocol_version",
            Refused::NotConnect => "not_connect",
            Refused::ConnectionCap => "connection_cap",
            Refused::ConnectionCapPerIp => "connection_cap_per_ip",
            Refused::PendingCap => "pending_cap",
            Refused::PendingCapPerIp => "pending_cap_per_ip",
            Refused::ClientIdInvalid => "client_id_invalid",
            Refused::CertUsernameMismatch => "cert_username_mismatch",
            Refused::BadCertIdentity => "bad_cert_identity",
            Refused::UnregisteredGateway => "unregistered_gateway",
            Refused::AuthUnavailable => "auth_unavailable",
            Refused::NoCredentials => "no_credentials",
            Refused::BadCredentials => "bad_credentials",
            Refused::ClientIdMismatch => "client_id_mismatch",
            Refused::WillAcl => "will_acl",
            Refused::NoRouterLink => "router_refused",
            Refused::StorageFailing => "storage_failing",
            Refused::AcceptFailed => "accept_failed",
        }
    }
}

/// Why an established connection ended. Only [`End::Disconnect`] is clean
/// (no last will); every other end publishes the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// DISCONNECT from the client, after its publishes were committed.
    Disconnect,
    /// The peer closed the connection.
    Closed,
    /// Reading or writing the socket failed.
    Io,
    /// A packet over the size limit.
    PacketTooLarge,
    /// A packet that does not decode, or carries reserved flags.
    MalformedPacket,
    /// Silent for 1.5 × keep-alive.
    KeepaliveTimeout,
    /// Writing to the client failed.
    WriteFailed,
    /// A write to the client did not finish within the write deadline
    /// (it stopped reading).
    WriteTimeout,
    /// A publish outside the gateway's ACL.
    PublishAcl,
    /// A subscription outside the gateway's ACL.
    SubscribeAcl,
    /// A packet a client never sends.
    ProtocolError,
    /// The ingest log is full: nothing more is acknowledged.
    LogFull,
    /// A commit failed: nothing more is acknowledged.
    StoreFailed,
    /// Commits before a DISCONNECT did not finish within their bound.
    CommitTimeout,
    /// The router stopped answering the link.
    RouterGone,
    /// The router disconnected the link.
    RouterDisconnect,
    /// The router dropped the link (a newer link of the same client id).
    RouterDropped,
    /// A newer connection of the same gateway took over.
    TakenOver,
    /// The gateway's credentials were revoked.
    Revoked,
    /// The server is shutting down.
    ServerShutdown,
}

impl End {
    /// The counter and log label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Disconnect => "disconnect",
            End::Closed => "closed",
            End::Io => "io_error",
            End::PacketTooLarge => "packet_too_large",
            End::MalformedPacket => "malformed_packet",
            End::KeepaliveTimeout => "keepalive_timeout",
            End::WriteFailed => "write_failed",
            End::WriteTimeout => "write_timeout",
            End::PublishAcl => "publish_acl",
            End::SubscribeAcl => "subscribe_acl",
            End::ProtocolError => "protocol_error",
            End::LogFull => "log_full",
            End::StoreFailed => "store_failed",
            End::CommitTimeout => "commit_timeout",
            End::RouterGone => "router_gone",
            End::RouterDisconnect => "router_disconnect",
            End::RouterDropped => "taken_over",
            End::TakenOver => "taken_over",
            End::Revoked => "revoked",
            End::ServerShutdown => "server_shutdown",
        }
    }

    /// Whether the router already dropped the link, so it must not be
    /// disconnected again (its slot may belong to a newer connection).
    pub(crate) fn router_dropped(self) -> bool {
        matches!(
            self,
            End::RouterGone | End::RouterDisconnect | End::RouterDropped
        )
    }
}

/// Why a subscription got the failure code 0x80
/// (`pantau_broker_subscribe_failed{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeFailed {
    /// The router refused the link or the subscription.
    RouterRefused,
    /// The router did not answer in time.
    RouterTimeout,
}

impl SubscribeFailed {
    /// The counter label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SubscribeFailed::RouterRefused => "router_refused",
            SubscribeFailed::RouterTimeout => "router_timeout",
        }
    }
}
