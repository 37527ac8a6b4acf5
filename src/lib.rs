//! Portcullis: an authenticating reverse proxy that enforces two-factor authentication in front
//! of a web application that has none of its own.
//!
//! The code is a house with one-way stairs: every module may use the layers below it, never one
//! above. From the top:
//!
//! | layer | what lives there |
//! |---|---|
//! | entry: `main.rs`, [`cli`], [`demo`] | parse arguments, build a configuration, call the server |
//! | [`server`] | listeners, worker threads, background tasks, the control socket, logging, metrics, and the composition of the services once |
//! | [`web`] | HTTP: the gate, forwarding, routing, the proxy's own pages, forms and CSRF, one error type mapped to a response |
//! | [`domain`] | the rules, with no HTTP in them: sessions, factors and their verification, the 2FA policy, users, passwords, regulation, notifications, operator actions, clock health |
//! | [`config`] | `proxy.toml` parsed once into validated types |
//! | [`store`], [`base`] | persistence (bytes in keyspaces), and small things everyone uses: the clock, secrets, TLS, header hygiene, text for logs |
//!
//! A proxied request: `server` accepts the connection and hands the request to
//! [`web::gate`], which routes it ([`web::route`]); the proxy's own pages go to [`web::portal`],
//! everything else needs a full [`domain::session`], whose [`domain::identity`] is what
//! [`web::forward`] sends to the upstream. `tests/it/layers.rs` checks the direction of every
//! `use crate::` line.

pub mod base;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod server;
pub mod store;
pub mod web;
