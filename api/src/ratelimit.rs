//! Per-client rate limiting of the public routes (governor's keyed GCRA
//! limiter, keyed by the client's IP address). A refused request gets a
//! JSON 429 with `Retry-After`; refusals are counted.
//!
//! The client's address is the connection's peer, unless the peer is a
//! trusted proxy (`--trusted-proxy`): then it is the rightmost address of
//! `X-Forwarded-For` that is not a trusted proxy itself. Entries left of
//! it could be written by anyone and are never believed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;

use crate::{ApiError, AppState};

/// Requests between two sweeps of idle clients out of the limiter's map.
const SWEEP_EVERY: u64 = 4096;

/// The public routes' limiter.
#[derive(Debug)]
pub struct PublicLimiter {
    limiter: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>,
    /// Requests seen, to sweep the map now and then.
    seen: AtomicU64,
    /// Requests refused.
    pub refused: Counter,
}

impl PublicLimiter {
    /// `per_second` sustained, bursts of `burst`, per client address.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::hashmap(Quota::per_second(per_second).allow_burst(burst)),
            seen: AtomicU64::new(0),
            refused: Counter::default(),
        }
    }

    /// `Err(seconds to wait)` when `ip` is over its rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.seen.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Forget clients whose bucket is full again: bounded memory.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            self.refused.inc();
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Addresses (`127.0.0.1`) or networks (`10.0.0.0/8`).
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, String> {
        list.iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is neither an IP address nor a network"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => client = ip,
                Ok(ip) => return ip,
                // Unreadable: what lies left of it cannot be trusted.
                Err(_) => return client,
            }
        }
        client
    }
}

/// Middleware for the public routes.
pub(crate) async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let ip = state.trusted_proxies.client(peer, req.headers());
    match state.public_limit.check(ip) {
        Ok(()) => next.run(req).await,
        Err(retry_after_s) => ApiError::RateLimited {
            retry_after_s: retry_after_s.max(1),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let t = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap();
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            t.client(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        // Behind a trusted proxy: the rightmost untrusted hop; a spoofed
        // entry on the left is ignored.
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(t.client(ip("127.0.0.1"), &h), ip("198.51.100.7"));
        // No header, or only proxies in it: the last proxy seen.
        assert_eq!(t.client(ip("127.0.0.1"), &headers(&[])), ip("127.0.0.1"));
        assert_eq!(
            t.client(ip("127.0.0.1"), &headers(&["10.9.9.9"])),
            ip("10.9.9.9")
        );
        // Garbage stops the walk.
        assert_eq!(
            t.client(ip("127.0.0.1"), &headers(&["1.2.3.4, bogus"])),
            ip("127.0.0.1")
        );
        // Nothing trusted by default.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("127.0.0.1"), &headers(&["1.2.3.4"])),
            ip("127.0.0.1")
        );
        assert!(TrustedProxies::parse(&["not-an-ip"]).is_err());
    }
}
