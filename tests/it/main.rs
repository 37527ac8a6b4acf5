//! Integration tests: the real binary, a real upstream, a real HTTP client. One test binary with
//! modules, so the suite links once.

mod access;
mod account;
mod admin;
mod attacks;
mod attestation;
mod browser;
mod cli;
mod config_files;
mod crash;
mod demo;
mod deploy;
mod email_codes;
mod email_links;
mod express;
mod flows;
mod forward_auth;
mod forwarding;
mod front_proxy;
mod harness;
mod hosts;
mod hypercorn;
mod identity_keys;
mod layers;
mod ldap;
mod mfa;
mod oidc;
mod passkeys;
mod pausing;
mod providers;
mod reload;
mod replicas;
mod security_keys;
mod smtp;
mod upstream;
