//! `proxy.toml`: read once, validated once, then carried around as typed values.
//!
//! [`load`] never stops at the first mistake: it reports every unknown key and every bad value
//! together, each with its key, the value it found and how to fix it. A [`Config`] only exists if
//! all of it was right, so the rest of the program never re-checks configuration.
//!
//! `settings` holds the typed values, `validate` turns the file (`raw`) into them, `problems`
//! says what was wrong, `reload` decides what a changed file may change in a running proxy.

pub mod access;
pub mod ldap;
pub mod notify;
pub mod oidc;
pub mod problems;
pub mod providers;
mod raw;
pub mod reload;
pub mod sandstorm;
pub mod settings;
pub mod store;
mod validate;

pub use problems::ConfigError;
pub use providers::{Provider, ProviderId, ProviderKind, ProviderStatus, Providers};
pub use settings::*;
pub use validate::{load, parse};
