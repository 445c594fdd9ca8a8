//! Connection caps, global and per source address. A connection over a cap
//! is still answered cleanly (CONNACK "server unavailable") by the
//! connection task; the slot it takes here is released when it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Counts of open connections.
#[derive(Debug)]
pub(crate) struct Admission {
    max: usize,
    max_per_ip: usize,
    open: Arc<AtomicUsize>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why a connection is over a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverCap {
    Global,
    PerIp,
}

/// A counted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    ip: IpAddr,
    open: Arc<AtomicUsize>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Whether this connection exceeded a cap (it will be refused).
    pub(crate) over: Option<OverCap>,
}

impl Admission {
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            max,
            max_per_ip,
            open: Arc::new(AtomicUsize::new(0)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a new connection from `ip` and says whether it is over a cap.
    pub(crate) fn admit(&self, ip: IpAddr) -> Slot {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let from_ip = {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_default();
            *n += 1;
            *n
        };
        let over = if open > self.max {
            Some(OverCap::Global)
        } else if from_ip > self.max_per_ip {
            Some(OverCap::PerIp)
        } else {
            None
        };
        Slot {
            ip,
            open: self.open.clone(),
            per_ip: self.per_ip.clone(),
            over,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let a = Admission::new(3, 2);
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = a.admit(ip1);
        let s2 = a.admit(ip1);
        let s3 = a.admit(ip1);
        assert_eq!(
            (s1.over, s2.over, s3.over),
            (None, None, Some(OverCap::PerIp))
        );
        drop(s3);
        let s4 = a.admit(ip2);
        assert_eq!(s4.over, None);
        let s5 = a.admit(ip2);
        assert_eq!(s5.over, Some(OverCap::Global));
        drop((s1, s5));
        assert_eq!(a.admit(ip2).over, None);
    }
}
