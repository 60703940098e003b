//! Commands: each wires the probe, the model and a view, and holds no logic of its
//! own. [`session`] is the event loop they share; [`stdout`] notices a reader that
//! has gone.

pub mod doctor;
pub mod hist;
pub mod ident;
pub mod linger;
pub mod serve;
pub mod session;
pub mod stdout;
pub mod top;
pub mod trace;
pub mod walk;
