//! Per-client rate limiting of the public routes (governor's keyed GCRA
//! limiter, keyed by the client's IP address). A refused request gets a
//! JSON 429 with `Retry-After`; refusals are counted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
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

/// Middleware for the public routes.
pub(crate) async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    match state.public_limit.check(ip) {
        Ok(()) => next.run(req).await,
        Err(retry_after_s) => ApiError::RateLimited {
            retry_after_s: retry_after_s.max(1),
        }
        .into_response(),
    }
}
