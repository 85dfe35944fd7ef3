//! The layers of the stack, one concern each. `app.rs` assembles them.

pub mod access;
pub mod audit;
pub mod cri_only;
pub mod learn;
pub mod limits;
pub mod log;
pub mod log_reduction;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod read_head;
pub mod refusals;
pub mod respond;
pub mod trace;
