//! Views: the model turned into text tables and JSON lines. [`trace`], [`linger`] and
//! [`hist`] render their command's model; [`summary`] the exit counters; [`format`]
//! and [`clock`] are the shared formatting (numbers, durations, addresses, escaping,
//! wall-clock time). [`prometheus`] is `serve`'s view.

pub mod clock;
pub mod doctor;
pub mod format;
pub mod hist;
pub mod linger;
pub mod prometheus;
pub mod summary;
pub mod top;
pub mod trace;
