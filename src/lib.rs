//! Portcullis: an authenticating reverse proxy that puts a login (and, from part 2, a second
//! factor) in front of a web application that has none.
//!
//! `main.rs` only parses arguments; [`cli::run`] dispatches, and [`server::Server`] is the proxy.
//! A request flows: [`server`] (connection) → [`app`] (the gate) → [`route`] (own page or not)
//! → [`portal`] (our pages) or [`session`] + [`identity`] + [`proxy`] (forward to the upstream).

pub mod admin;
pub mod app;
pub mod body_timeout;
pub mod cli;
pub mod clock;
pub mod clock_health;
pub mod config;
pub mod demo;
pub mod factors;
pub mod headers;
pub mod identity;
pub mod known_browser;
pub mod logging;
pub mod notify;
pub mod pages;
pub mod password;
pub mod policy;
pub mod portal;
pub mod proxy;
pub mod regulation;
pub mod return_url;
pub mod route;
pub mod secret;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod user_agent;
pub mod users;
