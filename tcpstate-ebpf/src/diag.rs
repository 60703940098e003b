//! Diagnostics for the rare paths (aya-log): a map update or a kernel read that
//! failed, a transition the backup program recovered. Userspace shows them with
//! `--log-level` / `RUST_LOG`.
//!
//! Cost when off: each statement checks aya-log's `AYA_LOG_LEVEL` global, which
//! userspace sets before load (0 = off) in read-only data that the kernel freezes,
//! so the verifier knows its value and removes the statement as dead code. Each
//! lives in its own out-of-line function, called only on its rare path, so the hot
//! path keeps its stack and registers. (Left at aya-log's default, 0xff, records go
//! to the `AYA_LOGS` ring buffer whether or not anyone reads it.)

use aya_log_ebpf::{debug, warn};

/// A socket's `SOCKS` record could not be created: this socket is not tracked.
#[inline(never)]
pub fn table_full(cookie: u64) {
    warn!(
        &(),
        "socket record not created: socket {} not tracked", cookie
    );
}

/// The backup handled a transition the kernel skipped the primary program for.
#[inline(never)]
pub fn recovered(old: i32, new: i32) {
    debug!(&(), "recovered a skipped transition: {} -> {}", old, new);
}

/// A kernel read failed in program `prog` (`tcpstate_common::names`).
#[inline(never)]
pub fn read_failed(prog: &str, err: i32) {
    warn!(&(), "a kernel read failed in {}: {}", prog, err);
}

/// A TIME_WAIT candidate could not be recorded (`TWS` insert failed).
#[inline(never)]
pub fn tw_untracked(err: i32) {
    warn!(
        &(),
        "TIME_WAIT candidate not recorded: TWS insert failed: {}", err
    );
}

/// A histogram sample lost its --by key (went to the spill histogram).
#[inline(never)]
pub fn hist_spilled(state: u32) {
    debug!(
        &(),
        "histogram key not inserted: a state {} sample spilled", state
    );
}
