//! The command line: run the proxy, check a config, manage users, run the demo.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod explain;
mod identity;
mod migrate;
mod operate;
mod providers;
mod table;

use clap::{Parser, Subcommand};
use operate::{AdminCommand, AdminView, admin_command, admin_request, print_reply};
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
            identity_reply(admin_request(&config, request)?)?;
        }
        UserCommand::Unlink { name, oidc, subject } => {
            let request = admin::Request::Identity { user: name, provider: oidc, subject, link: false };
            identity_reply(admin_request(&config, request)?)?;
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

/// Prints a link or unlink answer; a refusal is an error (a failing exit status for scripts).
fn identity_reply(reply: admin::Reply) -> Result<(), String> {
    match reply {
        admin::Reply::Refused { reason } => Err(reason),
        reply => {
            print_reply(&reply, AdminView::Plain);
            Ok(())
        }
    }
}
