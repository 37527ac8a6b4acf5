//! Small things every layer uses, depending on nothing above them.

pub mod clock;
pub mod fields;
pub mod forwarding;
pub mod headers;
pub mod metrics;
pub mod secret;
pub mod socket;
pub mod text;
pub mod tls;
pub mod user_agent;
