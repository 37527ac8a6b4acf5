//! HTTP: the gate in front of the upstream, forwarding, routing, and the proxy's own pages.

pub mod app;
pub mod body_timeout;
pub mod forward;
pub mod pages;
pub mod portal;
pub mod return_url;
pub mod route;
