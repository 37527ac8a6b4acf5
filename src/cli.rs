//! The command line: run the proxy, check a config, manage users, run the demo.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use crate::clock::SystemClock;
use crate::config;
use crate::server::Server;
use crate::users::{self, edit};
use crate::{demo, logging, password};

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
    /// Remove a user's second factors and recovery codes and end their sessions, for a user who
    /// lost their phone and their codes. They set up a new authenticator at their next sign-in
    /// (if 2FA is required) or from their account page. Run it while the proxy is stopped: the
    /// data store admits one process at a time.
    #[command(name = "reset-2fa")]
    Reset2fa { name: String },
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_server(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::Doctor => doctor(&cli.config),
        Command::User { action } => match user_command(&cli.config, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
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
        let report = crate::clock_health::check(&config.clock).await;
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

/// Resolves when the process is asked to stop (SIGTERM from a service manager, or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Prints one line per listener on stdout, the signal that the proxy accepts connections (the
/// tests and scripts wait for it rather than sleeping).
pub fn announce(server: &Server) {
    let scheme = if server.is_tls() { "https" } else { "http" };
    let mut out = std::io::stdout().lock();
    for addr in server.local_addrs() {
        let _ = writeln!(out, "portcullis listening on {scheme}://{addr}");
    }
    let _ = out.flush();
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
        announce(&server);
        server.serve(shutdown_signal()).await.map_err(|e| e.to_string())
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

/// NIST SP 800-63B §3.1.1.2: at least 8 characters, and allow long passphrases.
pub fn check_new_password(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < 8 {
        return Err("the password must have at least 8 characters; nothing was changed".into());
    }
    if password.len() > 1024 {
        return Err("the password is longer than 1024 bytes; nothing was changed".into());
    }
    Ok(())
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
            edit::remove(file, &name).map_err(|e| e.to_string())?;
            println!("removed {name}; their sessions have ended");
        }
        UserCommand::Reset2fa { name } => {
            if !users::read(file).map_err(|e| e.to_string())?.contains_key(&name) {
                return Err(users::UsersError::NotFound(name).to_string());
            }
            let ended = reset_second_factor(&config, &name).map_err(|e| match e {
                crate::store::StoreError::Locked { .. } => {
                    format!("{e}\nStop the proxy, run this again, then start it; the reset takes effect at once.")
                }
                other => other.to_string(),
            })?;
            println!("two-step verification reset for {name}; {ended} session(s) ended");
        }
        UserCommand::List => {
            let mut all: Vec<_> = users::read(file).map_err(|e| e.to_string())?.into_values().collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            println!("{:<24} {:<32} {:<32} GROUPS", "NAME", "DISPLAY NAME", "EMAIL");
            for u in all {
                println!("{:<24} {:<32} {:<32} {}", u.name, u.display_name, u.email, u.groups.join(","));
            }
        }
    }
    Ok(())
}

/// Clears an account's factors and deletes its sessions, directly in the store.
fn reset_second_factor(config: &config::Config, name: &str) -> Result<usize, crate::store::StoreError> {
    use crate::store::Store;
    let store = crate::store::sled_store::SledStore::open(&config.data_dir.join("store"))?;
    store.put_account(name, &crate::factors::AccountRecord::default())?;
    // A locked second factor (100 failures in a row) is unlocked by the reset, too.
    store.delete_regulation(&crate::regulation::Subject::Account(name.to_string()).store_key())?;
    let mut ended = 0;
    for (key, record) in store.sessions()? {
        if record.user == name {
            store.delete_session(&key)?;
            ended += 1;
        }
    }
    store.flush()?;
    Ok(ended)
}
