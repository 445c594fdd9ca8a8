//! Connection caps, global and per source address, shared by the MQTT
//! gatekeeper and the API. A slot is taken at accept, before any TLS
//! handshake, and released when the connection ends. A connection over a
//! cap is told so: the gatekeeper still answers it cleanly (CONNACK
//! "server unavailable"), the API closes it at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Counts of open connections.
#[derive(Debug)]
pub struct Admission {
    /// Most connections at once.
    max: usize,
    /// Most connections from one address.
    max_per_ip: usize,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// Connections open now, per address.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why a connection is over a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    /// Over the cap for all addresses together.
    Global,
    /// Over the cap for its source address.
    PerIp,
}

/// A counted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    ip: IpAddr,
    open: Arc<AtomicUsize>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Whether this connection exceeded a cap (it will be refused).
    pub over: Option<OverCap>,
}

impl Admission {
    /// Caps of `max` connections, `max_per_ip` from one address.
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            max,
            max_per_ip,
            open: Arc::new(AtomicUsize::new(0)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts a new connection from `ip` and says whether it is over a cap.
    pub fn admit(&self, ip: IpAddr) -> Slot {
        self.admit_with(ip, true)
    }

    /// Like [`Admission::admit`]; `per_ip` false exempts the address from
    /// its own cap (a trusted reverse proxy carries many clients).
    pub fn admit_with(&self, ip: IpAddr, per_ip: bool) -> Slot {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let from_ip = {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_default();
            *n += 1;
            *n
        };
        let over = if open > self.max {
            Some(OverCap::Global)
        } else if per_ip && from_ip > self.max_per_ip {
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
