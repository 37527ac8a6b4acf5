//! HTTP: the gate in front of the upstream, forwarding, routing, the proxy's own pages, forms and
//! their checks, and the one error type every handler answers with.
//!
//! Inside the layer, too, dependencies point one way: `forward_auth` → `gate` → `portal` (the pages) → `forms`,
//! `cookies`, `respond` → `state` (the shared services) → `pending`, `route`, `key_pages` → `pages`, `error`.

pub mod answer_framing;
pub mod body_timeout;
pub mod client_body;
pub mod cookies;
pub mod error;
pub mod express;
pub mod forms;
pub mod forward;
pub mod forward_auth;
pub mod gate;
pub(crate) mod idle_stack;
pub mod key_pages;
pub mod link_pages;
pub mod malformed;
pub mod pages;
pub mod pending;
pub mod pending_sign_ins;
pub mod portal;
pub mod raw_upstream;
pub mod respond;
pub mod return_url;
pub mod route;
pub mod state;
pub mod upstream_pool;
