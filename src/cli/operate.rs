//! `portcullis admin ...`: operations on the running proxy (through its control socket) or, when
//! none runs, on its store; and how their replies are printed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use super::providers;
use super::table::{Align, Table};
use crate::base::clock::SystemClock;
use crate::config;
use crate::domain::operator as admin;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Every account: its factors, when it enrolled and last signed in, what the policy asks of
    /// it, and its live sessions.
    Users,
    /// Who has which factor (that counts under the configured providers).
    Factors {
        /// Only the accounts whose every factor belongs to a disabled or unconfigured provider:
        /// locked out where 2FA is required, without 2FA where it is optional.
        #[arg(long)]
        stranded: bool,
    },
    /// The factor providers: kind, name, status, and how many accounts use each.
    Providers,
    /// How many accounts have 2FA, overall and per group, and who is still missing it where it is
    /// required.
    Adoption,
    /// Remove a user's second factors and recovery codes (a lost phone), lift a factor lock,
    /// end their sessions, and email them. They set up a new
    /// authenticator at their next sign-in (if 2FA is required) or from their account page.
    #[command(name = "reset-2fa")]
    Reset2fa { name: String },
    /// End the sessions of one user, or of everyone with --all.
    Revoke {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Send every full session back to the second step, e.g. after tightening the 2FA policy
    /// (sessions of accounts without a second factor end: they sign in again).
    DowngradeAll,
    /// Brute-force bans and second-factor locks in force.
    Bans,
    /// Lift a ban or lock, named as `bans` shows it: account:NAME, address:IP or browser:ID.
    Unban { subject: String },
    /// Make a one-time recovery link for a user who lost every second factor: with the link and
    /// their password, they set up a new authenticator and the old factors stop working.
    /// Printed here, or emailed to the user with --email. A new link replaces an older one.
    RecoveryLink {
        name: String,
        /// How long it works, e.g. "2h" or "3d" (10 minutes to 7 days; default
        /// `admin.recovery_link_valid`).
        #[arg(long)]
        valid: Option<humantime::Duration>,
        #[arg(long)]
        email: bool,
    },
    /// Ask the directory ([login.ldap]) again about the accounts it vouched for, now: sessions of
    /// accounts it no longer has end (otherwise this happens every five minutes).
    #[command(name = "recheck-directory")]
    RecheckDirectory,
    /// Copy every account, session and ban from the embedded store (data_dir/store) into the
    /// Redis that [store] names, or back (--to sled). The destination must be empty; stop the
    /// proxy first.
    Migrate {
        #[arg(long, value_enum)]
        to: super::migrate::Destination,
    },
}

/// How to show an answer: `factors` is a different view of the `users` answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AdminView {
    Plain,
    Factors,
    /// `factors --stranded`.
    Stranded,
    Json,
}

pub(super) fn admin_command(path: &Path, action: AdminCommand, json: bool) -> ExitCode {
    let (request, view) = match action {
        AdminCommand::Migrate { to } => return super::migrate::migrate(path, to),
        AdminCommand::Users => (admin::Request::Users, AdminView::Plain),
        AdminCommand::Factors { stranded: false } => (admin::Request::Users, AdminView::Factors),
        AdminCommand::Factors { stranded: true } => (admin::Request::Users, AdminView::Stranded),
        AdminCommand::Providers => (admin::Request::Providers, AdminView::Plain),
        AdminCommand::Adoption => (admin::Request::Adoption, AdminView::Plain),
        AdminCommand::Reset2fa { name } => (admin::Request::Reset2fa { user: name }, AdminView::Plain),
        AdminCommand::Revoke { name, all: _ } => {
            let target = name.map_or(admin::Target::Everyone, admin::Target::User);
            (admin::Request::Revoke { target }, AdminView::Plain)
        }
        AdminCommand::DowngradeAll => (admin::Request::DowngradeAll, AdminView::Plain),
        AdminCommand::RecheckDirectory => (admin::Request::RecheckDirectory, AdminView::Plain),
        AdminCommand::Bans => (admin::Request::Bans, AdminView::Plain),
        AdminCommand::Unban { subject } => (admin::Request::Unban { subject }, AdminView::Plain),
        AdminCommand::RecoveryLink { name, valid, email } => {
            let valid_for = valid.map(|v| std::time::Duration::from(v).as_secs());
            (admin::Request::RecoveryLink { user: name, valid_for, email }, AdminView::Plain)
        }
    };
    let reply = config::load(path).map_err(|e| e.to_string()).and_then(|config| admin_request(&config, request));
    match reply {
        Ok(reply) => {
            print_reply(&reply, if json { AdminView::Json } else { view });
            if matches!(reply, admin::Reply::Refused { .. }) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the running proxy; if none runs on this data_dir, opens its store and does it here.
pub(super) fn admin_request(config: &config::Config, request: admin::Request) -> Result<admin::Reply, String> {
    if let Some(reply) = crate::server::control::call(&config.data_dir, &request).map_err(|e| e.to_string())? {
        return Ok(reply);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(admin_offline(config, request))
}

async fn admin_offline(config: &config::Config, request: admin::Request) -> Result<admin::Reply, String> {
    let clock: crate::base::clock::SharedClock = Arc::new(SystemClock);
    let services = crate::server::compose::Services::open(config, clock).await.map_err(|e| match e {
        crate::server::compose::ComposeError::Store(crate::store::StoreError::Locked { .. }) => format!(
            "{e}\nA proxy seems to be running, but its control socket {} does not answer; restart it.",
            crate::server::control::socket_path(&config.data_dir).display()
        ),
        other => other.to_string(),
    })?;
    let operator = services.admin(Arc::new(arc_swap::ArcSwap::from_pointee(config.clone())));
    let uid = crate::server::control::effective_uid();
    let reply = operator.execute(request, &format!("cli offline (uid {uid})")).await;
    // Deliver what the operation queued before exiting: dropping the last sender ends the queue.
    drop(operator);
    let crate::server::compose::Services { delivery, notifier, .. } = services;
    drop(notifier);
    if let Some(delivery) = delivery {
        let _ = delivery.spawn().await;
    }
    reply.map_err(|e| e.to_string())
}

fn when(at: Option<crate::base::clock::UnixTime>) -> String {
    at.map_or("-".to_string(), crate::base::text::format_utc)
}

pub(super) fn print_reply(reply: &admin::Reply, view: AdminView) {
    use admin::Reply;
    if view == AdminView::Json {
        println!("{}", serde_json::to_string_pretty(reply).unwrap_or_default());
        return;
    }
    match reply {
        Reply::Users { users } if view == AdminView::Stranded => providers::print_stranded(users),
        Reply::Providers { providers } => providers::print_providers(providers),
        Reply::Users { users } if view == AdminView::Factors => {
            let with = |factor: &str| -> Vec<&str> {
                users.iter().filter(|u| u.factors.iter().any(|f| f == factor)).map(|u| u.name.as_str()).collect()
            };
            let none: Vec<&str> = users.iter().filter(|u| u.factors.is_empty()).map(|u| u.name.as_str()).collect();
            println!("totp:           {}", with("totp").join(" "));
            println!("email:          {}", with("email").join(" "));
            let keys: Vec<String> = users
                .iter()
                .filter(|u| !u.security_keys.is_empty())
                .map(|u| format!("{} ({})", u.name, u.security_keys.join(", ")))
                .collect();
            println!("security keys:  {}", keys.join(" "));
            println!("recovery codes: {}", with("recovery_codes").join(" "));
            println!("none:           {}", none.join(" "));
        }
        Reply::Users { users } => {
            let mut table = Table::new(&[
                ("NAME", Align::Left),
                ("FACTORS", Align::Left),
                ("POLICY", Align::Left),
                ("ENROLLED", Align::Left),
                ("LAST SIGN-IN", Align::Left),
                ("CODES LEFT", Align::Right),
                ("SESSIONS FULL/PARTIAL", Align::Left),
                ("ALSO SIGNS IN AS", Align::Left),
            ]);
            for u in users {
                let factors = if u.factors.is_empty() { "none".to_string() } else { u.factors.join(",") };
                let policy = match u.required_from {
                    Some(at) => format!("required from {}", when(Some(at))),
                    None => u.requirement.clone(),
                };
                table.row(vec![
                    u.name.clone(),
                    factors,
                    policy,
                    when(u.enrolled_at),
                    when(u.last_sign_in),
                    u.recovery_codes_left.to_string(),
                    format!("{}/{}", u.full_sessions, u.partial_sessions),
                    if u.identities.is_empty() { "-".into() } else { u.identities.join(" ") },
                ]);
            }
            print!("{}", table.render());
        }
        Reply::Adoption { groups } => {
            let mut table = Table::new(&[
                ("GROUP", Align::Left),
                ("ACCOUNTS", Align::Right),
                ("WITH 2FA", Align::Right),
                ("SHARE", Align::Right),
                ("REQUIRED", Align::Right),
                ("MISSING WHERE REQUIRED", Align::Left),
            ]);
            for g in groups {
                let share = if g.accounts == 0 { 0.0 } else { 100.0 * g.with_second_factor as f64 / g.accounts as f64 };
                table.row(vec![
                    if g.group == "*" { "(everyone)".into() } else { g.group.clone() },
                    g.accounts.to_string(),
                    g.with_second_factor.to_string(),
                    format!("{share:.0}%"),
                    g.required.to_string(),
                    g.missing.join(" "),
                ]);
            }
            print!("{}", table.render());
        }
        Reply::Reset { user, ended } => println!(
            "two-step verification reset for {user}; {ended} session(s) ended; they were emailed. They set up a new factor after their password."
        ),
        Reply::Revoked { ended } => println!("{ended} session(s) ended"),
        Reply::Downgraded { downgraded, ended } => println!(
            "{downgraded} session(s) sent back to the second step; {ended} session(s) of accounts without a second factor ended"
        ),
        Reply::Bans { bans } if bans.is_empty() => println!("no bans or locks in force"),
        Reply::Bans { bans } => {
            let mut table = Table::new(&[
                ("SUBJECT", Align::Left),
                ("BANNED UNTIL", Align::Left),
                ("FACTOR LOCKED", Align::Left),
                ("BANS IN A ROW", Align::Right),
            ]);
            for b in bans {
                table.row(vec![
                    b.subject.clone(),
                    when(b.banned_until),
                    if b.second_factor_locked { "yes" } else { "no" }.into(),
                    b.bans_in_a_row.to_string(),
                ]);
            }
            print!("{}", table.render());
        }
        Reply::Rechecked { ended, refreshed, unknown } => println!(
            "directory accounts re-checked: {} ended ({}), {refreshed} refreshed, {unknown} could not be asked",
            ended.len(),
            if ended.is_empty() { "none".to_string() } else { ended.join(", ") }
        ),
        Reply::Identity { user, provider, link: true, changed, .. } => {
            println!("{} {provider} identity to {user}", if *changed { "linked the" } else { "already linked: the" })
        }
        Reply::Identity { user, provider, link: false, changed, .. } => println!(
            "{} {provider} identity from {user}",
            if *changed { "unlinked the" } else { "nothing to unlink: no such" }
        ),
        Reply::Forgotten { user, ended } => println!(
            "removed {user}: their second factors, recovery codes and remembered browsers are deleted, and {ended} session(s) ended"
        ),
        Reply::Unbanned { subject, existed: true } => println!("lifted everything held against {subject}"),
        Reply::Unbanned { subject, existed: false } => println!("nothing was held against {subject}"),
        Reply::RecoveryLink { user, url: Some(url), expires_at } => {
            println!("one-time recovery link for {user}, valid until {}:", when(Some(*expires_at)));
            println!("{url}");
            println!(
                "Give it to {user} over a channel you trust: with their password, it replaces their second factors."
            );
        }
        Reply::RecoveryLink { user, url: None, expires_at } => {
            println!("a one-time recovery link was emailed to {user}; it works until {}", when(Some(*expires_at)))
        }
        Reply::IdentityKeyRotated { rotation } => println!("identity key rotated; {} signs now", rotation.current),
        Reply::Refused { reason } => eprintln!("refused: {reason}"),
    }
}
