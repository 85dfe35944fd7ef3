//! What criguard tells operators about itself: logs, metrics, readiness, the admin server.

pub mod admin;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod trace;
pub mod traceparent;
