//! Portcullis: an authenticating reverse proxy that enforces two-factor authentication in front
//! of a web application that has none of its own.
//!
//! The code is a house with one-way stairs: every module may use the layers below it, never one
//! above. From the top:
//!
//! | layer | what lives there |
//! |---|---|
//! | entry: `main.rs`, [`cli`], `demo` | parse arguments, build a configuration, call the server |
//! | `server` | listeners, worker threads, background tasks, the control socket, logging, metrics, and the composition of the services once |
//! | `web` | HTTP: the gate, forwarding, routing, the proxy's own pages, forms and CSRF, one error type mapped to a response |
//! | [`domain`] | the rules, with no HTTP in them: sessions, factors and their verification, the 2FA policy, users, passwords, regulation, notifications, operator actions, clock health |
//! | `config` | `proxy.toml` parsed once into validated types |
//! | `store`, [`base`] | persistence (bytes in keyspaces), and small things everyone uses: the clock, secrets, TLS, header hygiene, text for logs |
//!
//! A proxied request: `server` accepts the connection and hands the request to `web::gate`, which
//! refuses malformed requests and routes it (`web::route`). The proxy's own pages go to
//! `web::portal`, whose handlers ask the domain ([`domain::sign_in`] for a password,
//! [`domain::factors::SecondFactors`] for a code) and get back a proof, the only thing
//! [`domain::session::Sessions`] makes a full session from; their errors are one `WebError`,
//! turned into a page in one place. Everything else needs a full session, whose identity
//! ([`domain::identity`]) is what `web::forward` sends to the upstream.
//!
//! `tests/it/layers.rs` checks the direction of every `use crate::` line and that no modules use
//! each other in a circle. Only what the binary, the integration tests and the `compile_fail`
//! doctests need is public ([`cli`], [`domain`], [`base`], and `fuzzing` for the fuzz targets); the rest
//! is crate-private.

pub mod base;
pub mod cli;
pub(crate) mod config;
pub(crate) mod demo;
pub mod domain;
pub(crate) mod server;
pub(crate) mod store;
pub(crate) mod web;

/// What the fuzz targets in `fuzz/` drive: pure functions over untrusted input.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::config::parse as parse_config;
    pub use crate::web::return_url::validate as validate_return_url;
    pub use crate::web::route::{Route, normalize, route};
}
