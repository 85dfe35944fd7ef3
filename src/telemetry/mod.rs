//! What criguard tells operators about itself: logs.

pub mod logging;
