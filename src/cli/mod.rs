//! The command line: run the proxy, check a config, manage users, run the demo.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod explain;
mod identity;
mod providers;
mod table;

use clap::{Parser, Subcommand};
use table::{Align, Table};
use zeroize::Zeroizing;

use crate::base::clock::SystemClock;
use crate::config;
use crate::demo;
use crate::domain::operator as admin;
use crate::domain::password;
use crate::domain::users::{self, edit};
use crate::server::Server;
use crate::server::logging;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A reverse proxy that puts a login and two-factor authentication in front of a web app"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "proxy.toml", env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and exit: 0 if it is usable, 1 with every problem if not.
    CheckConfig,
    /// Manage the accounts in the users file.
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Operate on accounts and sessions: through the running proxy when there is one, or
    /// directly on its data when it is stopped.
    Admin {
        /// Print the raw JSON answer instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: AdminCommand,
    },
    /// Which access rule a request meets and what the proxy does with it; `--rules` lists every
    /// rule in force.
    Explain {
        /// The request's method, like GET.
        method: Option<String>,
        /// The full URL, like https://wiki.example.com/admin.
        url: Option<String>,
        /// As if signed in as this user (for rules with `groups`).
        #[arg(long)]
        user: Option<String>,
        /// As if from this client address (for rules with `networks`).
        #[arg(long)]
        from: Option<std::net::IpAddr>,
        /// Print every rule in force instead, the `[sandstorm]` preset's included.
        #[arg(long)]
        rules: bool,
    },
    /// The keys that sign the identity assertion (EdDSA or ES256): rotate them, print the public
    /// keys. Through the running proxy when there is one.
    Identity {
        #[command(subcommand)]
        action: identity::IdentityCommand,
    },
    /// Check what 2FA depends on: the clock (kernel synchronisation, and the offset against
    /// `[clock] ntp_server` when set). Exits 1 if anything needs attention.
    Doctor,
    /// Run a self-contained demo: the proxy in front of a built-in "whoami" app, with a demo user.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Where the demo keeps its config, users, keys and sessions.
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
    },
}

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
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add an account. The password is read from standard input (prompted, without echo, on a
    /// terminal); it is never taken from the command line, where other users could see it.
    Add {
        name: String,
        #[arg(long)]
        email: String,
        /// Comma-separated group names.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Set a new password (read like `add`); the user's existing sessions end.
    Passwd { name: String },
    /// Remove an account; its sessions end at their next request.
    Remove { name: String },
    /// List accounts.
    List,
    /// The same as `admin reset-2fa` (kept for scripts written for earlier versions).
    #[command(name = "reset-2fa")]
    Reset2fa { name: String },
    /// Link an OpenID Connect identity to an account: signing in with it reaches the account
    /// (its second step still applies). The owner is mailed.
    Link {
        name: String,
        /// The `[[login.oidc]]` provider's id.
        #[arg(long)]
        oidc: String,
        /// The identity's `sub` at that provider.
        #[arg(long)]
        subject: String,
    },
    /// Unlink an OpenID Connect identity from an account.
    Unlink {
        name: String,
        #[arg(long)]
        oidc: String,
        #[arg(long)]
        subject: String,
    },
}

pub fn run(cli: Cli) -> ExitCode {
    // Everything Portcullis writes (the store, keys, mails holding sign-in codes and recovery
    // links, the users file) is for its own user only, whatever umask it was started with.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_server(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::Doctor => doctor(&cli.config),
        Command::Explain { rules: true, .. } => explain::rules(&cli.config),
        Command::Explain { method: Some(method), url: Some(url), user, from, rules: false } => {
            explain::explain(&cli.config, explain::Question { method: &method, url: &url, user: user.as_deref(), from })
        }
        Command::Explain { .. } => {
            eprintln!("usage: portcullis explain METHOD URL [--user NAME] [--from IP], or portcullis explain --rules");
            ExitCode::from(2)
        }
        Command::User { action } => match user_command(&cli.config, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Admin { json, action } => admin_command(&cli.config, action, json),
        Command::Identity { action } => identity::run(&cli.config, action),
        Command::Demo { listen, data_dir } => with_runtime(demo::run(listen, data_dir)),
    }
}

fn with_runtime<E: std::fmt::Display>(future: impl Future<Output = Result<(), E>>) -> ExitCode {
    // The main runtime only waits for signals and runs housekeeping; requests are served by the
    // workers' own runtimes (see server.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            let users = match users::read(&config.users_file) {
                Ok(users) => users.len(),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // A damaged or too-open key set stops the proxy at start; say so before that.
            if config.identity.algorithm != config::IdentityAlgorithm::HS256
                && let Err(e) = crate::domain::identity::keys::KeySet::load(&config.identity.key_file)
            {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "{} is valid: {} listener(s), upstream {}, {} account(s)",
                path.display(),
                config.listen.len(),
                config.upstream,
                users
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn doctor(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checked = with_runtime(async {
        let report = crate::domain::clock_health::check(&config.clock).await;
        println!("kernel clock: {:?}", report.kernel);
        match &report.sntp {
            None => println!("sntp: not configured (set [clock] ntp_server to compare against a time server)"),
            Some((server, Ok(offset))) => println!("sntp: this clock is {offset:+.3} s off {server}"),
            Some((server, Err(e))) => println!("sntp: {server} did not answer: {e}"),
        }
        for warning in &report.warnings {
            println!("warning: {warning}");
        }
        if report.warnings.is_empty() { Ok(()) } else { Err("the clock needs attention (see the warnings above)") }
    });
    if checked == ExitCode::SUCCESS {
        println!("ok")
    }
    checked
}

fn run_server(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = logging::init(&config.log_level, &config.audit);
    with_runtime(async move {
        let server = Server::bind(config, Arc::new(SystemClock)).await.map_err(|e| e.to_string())?;
        let shutdown = crate::server::shutdown_signal();
        server.announce();
        server.serve(shutdown).await.map_err(|e| e.to_string())
    })
}

/// Reads a new password: from the terminal without echo (twice), or one line from a pipe.
fn read_new_password() -> Result<Zeroizing<String>, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(rpassword::prompt_password("New password: ").map_err(|e| e.to_string())?);
        let again = Zeroizing::new(rpassword::prompt_password("Repeat it: ").map_err(|e| e.to_string())?);
        if first != again {
            return Err("the two passwords differ; nothing was changed".into());
        }
        first
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;
        Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string())
    };
    check_new_password(&password)?;
    Ok(password)
}

pub fn check_new_password(password: &str) -> Result<(), String> {
    crate::domain::password::check_new_password(password).map_err(|e| format!("{e}; nothing was changed"))
}

fn user_command(path: &Path, action: UserCommand) -> Result<(), String> {
    let config = config::load(path).map_err(|e| e.to_string())?;
    let file = &config.users_file;
    match action {
        UserCommand::Add { name, email, groups, display_name } => {
            // Check the cheap things before asking for a password.
            users::Username::parse(&name).map_err(|e| e.to_string())?;
            if users::read(file).map_err(|e| e.to_string())?.contains_key(&name) {
                return Err(users::UsersError::Exists(name).to_string());
            }
            let password = read_new_password()?;
            let hash = password::hash(password.as_bytes()).map_err(|e| e.to_string())?;
            let new = edit::NewUser {
                name: &name,
                display_name: display_name.as_deref(),
                email: &email,
                groups: &groups,
                password_hash: &hash,
            };
            edit::add(file, new).map_err(|e| e.to_string())?;
            println!("added {name} to {}", file.display());
        }
        UserCommand::Passwd { name } => {
            if !users::read(file).map_err(|e| e.to_string())?.contains_key(&name) {
                return Err(users::UsersError::NotFound(name).to_string());
            }
            let password = read_new_password()?;
            let hash = password::hash(password.as_bytes()).map_err(|e| e.to_string())?;
            edit::set_password_hash(file, &name, &hash).map_err(|e| e.to_string())?;
            println!("password changed for {name}; their existing sessions have ended");
        }
        UserCommand::Remove { name } => {
            let account_key = users::read(file)
                .map_err(|e| e.to_string())?
                .get(&name)
                .map(|u| u.account_key.clone())
                .ok_or_else(|| format!("there is no user `{name}` in {}", file.display()))?;
            edit::remove(file, &name).map_err(|e| e.to_string())?;
            // The running proxy (or, when none runs, the store) forgets the account too, so a
            // new user given this name later inherits nothing.
            let forgotten = admin_request(&config, admin::Request::Forget { user: name.clone(), account_key })
                .map_err(|e| {
                    format!("removed {name} from the users file, but their stored factors were not removed: {e}")
                })?;
            print_reply(&forgotten, AdminView::Plain);
        }
        UserCommand::Link { name, oidc, subject } => {
            let request = admin::Request::Identity { user: name, provider: oidc, subject, link: true };
            print_reply(&admin_request(&config, request)?, AdminView::Plain);
        }
        UserCommand::Unlink { name, oidc, subject } => {
            let request = admin::Request::Identity { user: name, provider: oidc, subject, link: false };
            print_reply(&admin_request(&config, request)?, AdminView::Plain);
        }
        UserCommand::Reset2fa { name } => {
            let reply = admin_request(&config, admin::Request::Reset2fa { user: name })?;
            print_reply(&reply, AdminView::Plain);
        }
        UserCommand::List => {
            let mut all: Vec<_> = users::read(file).map_err(|e| e.to_string())?.into_values().collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            let mut table = Table::new(&[
                ("NAME", Align::Left),
                ("DISPLAY NAME", Align::Left),
                ("EMAIL", Align::Left),
                ("GROUPS", Align::Left),
            ]);
            for u in all {
                table.row(vec![u.name.to_string(), u.display_name.clone(), u.email.clone(), u.groups.join(",")]);
            }
            print!("{}", table.render());
        }
    }
    Ok(())
}

/// How to show an answer: `factors` is a different view of the `users` answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AdminView {
    Plain,
    Factors,
    /// `factors --stranded`.
    Stranded,
    Json,
}

fn admin_command(path: &Path, action: AdminCommand, json: bool) -> ExitCode {
    let (request, view) = match action {
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
fn admin_request(config: &config::Config, request: admin::Request) -> Result<admin::Reply, String> {
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

fn print_reply(reply: &admin::Reply, view: AdminView) {
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
