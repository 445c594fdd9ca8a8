//! The process's open-file limit: raised to the hard limit at start-up (a
//! platform serving thousands of gateways and public clients needs far more
//! than the usual soft limit of 1 024), and read back to size the API's
//! share of descriptors.

/// Raises the soft open-file limit to the hard limit and logs the result.
pub fn raise_open_files() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(nofile = limit, "Open-file limit set."),
        Err(e) => {
            tracing::warn!(error = %e, nofile = open_files(), "Cannot raise the open-file limit.")
        }
    }
}

/// The soft open-file limit now (a conservative 1 024 if it cannot be read).
pub fn open_files() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1_024)
}
