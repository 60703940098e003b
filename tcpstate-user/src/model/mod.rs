//! The model: plain Rust, no BPF and no command-line types in it, unit-tested with
//! synthetic data. Events and states ([`events`]), the user's [`filter`], the
//! per-socket table ([`sockets`]) and who holds each socket ([`holders`]), the linger
//! report and its rates ([`linger`]), histograms and intervals ([`histogram`],
//! [`hist`]), the exit [`summary`], and what a `serve` scrape shows ([`metrics`]).
//! Built from the probe's plain data.

pub mod container;
pub mod doctor;
pub mod events;
pub mod filter;
pub mod hist;
pub mod histogram;
pub mod holders;
pub mod linger;
pub mod metrics;
pub mod sockets;
pub mod summary;
pub mod top;
