//! The rules, with no HTTP in them: who may do what, and what is kept about it.

pub mod access;
pub mod clock_health;
pub mod directory;
pub mod email_link;
pub mod factors;
pub mod first_factor;
pub mod flows;
pub mod handoff;
pub mod identities;
pub mod identity;
pub mod known_browser;
pub mod notify;
pub mod oidc;
pub mod operator;
pub mod password;
pub mod policy;
pub mod regulation;
pub mod session;
pub mod sign_in;
pub mod users;
