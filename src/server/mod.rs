//! Listeners, TLS, HTTP/1.1 + HTTP/2 connections, background tasks and graceful shutdown.
//!
//! Thread-per-core, like nginx's worker processes: `proxy.workers` threads each run a
//! single-threaded tokio runtime with its own accept loop on the shared listening sockets and its
//! own upstream connection pool. A proxied request is then handled start to finish on one thread:
//! the client connection, the upstream connection and the hand-off between them never cross
//! threads. (Measured on 2 cores, the work-stealing runtime spent over half its time in the kernel
//! waking threads for those hand-offs, and served about 40% fewer requests per second.) Shared
//! state (sessions, users) is lock-free or sharded, so workers do not contend; blocking work
//! (the store) goes to each runtime's blocking pool, password hashing to threads of its own at a
//! lower priority (`domain::password`).

mod accept;
mod activity;
mod capacity;
pub mod compose;
mod connection;
pub mod control;
mod crowd;
mod idlest;
pub mod logging;
mod pressure;
pub mod sd_notify;
mod shares;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::base::clock::SharedClock;
use crate::base::secret::KeyFileError;
use crate::config::Config;
use crate::domain::factors::SecondFactors;
use crate::domain::identity::{AssertionSigner, IdentityError};
use crate::domain::password::{HashError, PasswordChecker};
use crate::domain::sign_in::SignIn;
use crate::server::capacity::Capacity;
use crate::server::compose::{ComposeError, Services};
use crate::server::sd_notify::ServiceManager;
use crate::server::shares::Shares;
use crate::store::StoreError;
use crate::web::forward::{Forwarder, ProxySetupError};
use crate::web::pending::Pending;
use crate::web::pending_sign_ins::PerBrowser;
use crate::web::state::App;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Services(#[from] ComposeError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}. Fix: choose a free address in `listen`, or stop what is using it")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Proxy(#[from] ProxySetupError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Telemetry(#[from] crate::server::telemetry::TelemetryError),
    #[error("cannot start worker {index}: {source}")]
    Worker { index: usize, source: std::io::Error },
    #[error("cannot set up the OpenID Connect client: {0}")]
    Oidc(String),
}

/// Says at start how assertions are signed, and warns after an upgrade that moved a setup that
/// had an HS256 key (and chose no algorithm) to EdDSA: its upstreams must switch to the JWKS.
fn announce_identity(settings: &crate::config::IdentitySettings, signer: &AssertionSigner) {
    if settings.algorithm.is_asymmetric() {
        if !settings.algorithm_chosen && settings.secret_file.exists() {
            tracing::warn!(
                secret_file = %settings.secret_file.display(),
                "assertions are now signed with EdDSA; verify them with /.portcullis/jwks.json, or set identity.algorithm = \"HS256\" to keep the shared key"
            );
        }
        let signing = signer.signing_algorithm();
        tracing::info!(
            algorithm = %signing,
            kid = signer.current_kid().unwrap_or_default(),
            key_file = %settings.key_file.display(),
            jwks = crate::web::route::Destination::Jwks.path(),
            "identity assertions are signed with this key; upstreams verify with the public keys at the jwks path"
        );
        if signing != settings.algorithm {
            tracing::warn!(
                "the current identity key is {signing} but identity.algorithm is {}: run `portcullis identity rotate` twice (the second once upstreams have fetched the JWKS) to switch without a gap",
                settings.algorithm
            );
        }
    }
}

/// How often proxy.toml is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(1);
/// How often the users file is checked for changes.
const USERS_POLL: Duration = Duration::from_secs(1);
/// How often expired sessions are dropped and activity is persisted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A bound, ready server. [`Server::serve`] runs it until shutdown.
pub struct Server {
    app: Arc<App>,
    listeners: Vec<std::net::TcpListener>,
    tls: Option<TlsAcceptor>,
    /// One upstream client per worker: a pooled connection belongs to the runtime that drives it.
    forwarders: Vec<Forwarder>,
    telemetry: Option<crate::server::telemetry::Telemetry>,
    delivery: Option<crate::domain::notify::Delivery>,
    /// Registered at bind, before the proxy announces itself: SIGHUP's default action is to end
    /// the process, so a reload request must never arrive before we listen for it.
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Server {
    /// Opens the store, loads users and keys, and binds every listen address. Nothing is served
    /// until [`Server::serve`].
    pub async fn bind(config: Config, clock: SharedClock) -> Result<Self, StartError> {
        let services = Services::open(&config, clock.clone()).await?;
        services.follow_other_replicas();
        let signer = Arc::new(AssertionSigner::open(&config.identity, clock.clone())?);
        announce_identity(&config.identity, &signer);
        let Services { users, sessions, accounts, regulator, notifier, delivery, sealer, store, .. } = services;
        let pending = Pending::new(crate::domain::flows::Flows::for_store(&store, &sealer), sealer.clone());
        let email_flows = crate::domain::flows::Flows::for_store(&store, &sealer);
        let handoff_flows = crate::domain::flows::Flows::for_store(&store, &sealer);
        let link_flows = crate::domain::flows::Flows::for_store(&store, &sealer);
        // Sign-ins in progress before a session: in the shared store, or bounded in memory.
        let shared_flows = || store.shared().map(|_| crate::domain::flows::Flows::for_store(&store, &sealer));
        let (passkey_logins, oidc_pending) = (PerBrowser::new(shared_flows()), PerBrowser::new(shared_flows()));
        if users.is_empty() {
            tracing::warn!(
                path = %config.users_file.display(),
                "no accounts yet, so nobody can sign in; add one with `portcullis user add NAME --email E`"
            );
        }
        let workers = config.login.hash_workers;
        let queue = config.login.queue_limit;
        let passwords = tokio::task::spawn_blocking(move || PasswordChecker::new(workers, queue))
            .await
            .map_err(|e| HashError::Internal(e.to_string()))??;
        let own_cookies = config.session.own_cookies();
        let asked = config.proxy.upstream_receive_buffer;
        if let Some(most) = crate::base::socket::receive_buffer_limit().filter(|&most| asked > most) {
            tracing::warn!(
                asked,
                most,
                "proxy.upstream_receive_buffer_bytes is above the kernel's net.core.rmem_max, which each upstream connection is held to; Fix: raise the sysctl, or lower the key"
            );
        }
        let forwarders = (0..config.proxy.workers)
            .map(|_| Forwarder::new(&config, own_cookies.clone()))
            .collect::<Result<_, _>>()?;

        let mut listeners = Vec::new();
        for addr in &config.listen {
            let bind_error = |source| StartError::Bind { addr: *addr, source };
            let listener = accept::bind_listener(*addr).map_err(bind_error)?;
            listeners.push(listener.into_std().map_err(bind_error)?);
        }
        let tls = config.tls.as_ref().map(|t| TlsAcceptor::from(t.server_config.clone()));
        let telemetry = match config.metrics_listen {
            Some(addr) => Some(crate::server::telemetry::Telemetry::bind(addr).await?),
            None => None,
        };
        if config.mfa.providers.needing_mail().next().is_some()
            && let crate::config::notify::Transport::File(dir) = &config.notify.transport
        {
            tracing::warn!(
                dir = %dir.display(),
                "sign-in codes by email are written as files into this folder (notify.transport = \"file\"); fine for trying it out, but use SMTP for real users"
            );
        }
        let known_browsers = crate::domain::known_browser::KnownBrowsers::new(sealer.browser_key());
        let sign_in = SignIn {
            users: users.clone(),
            passwords,
            regulator: regulator.clone(),
            known_browsers,
            notifier: notifier.clone(),
            clock: clock.clone(),
            directory: Default::default(),
        };
        let app = Arc::new(App {
            config: Arc::new(arc_swap::ArcSwap::from_pointee(config)),
            users,
            sessions,
            sign_in,
            factors: SecondFactors::with_flows(accounts, sealer, email_flows),
            signer,
            pending,
            passkey_logins,
            email_links: crate::domain::email_link::EmailLinks::new(link_flows),
            oidc: crate::domain::oidc::OidcClients::new().map_err(StartError::Oidc)?,
            oidc_pending,
            handoff: crate::domain::handoff::HandoffCodes::new(handoff_flows),
            regulator,
            clock_warnings: Default::default(),
            notifier,
            clock,
        });
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP ({e}); proxy.toml is still reloaded when it changes");
                None
            }
        };
        Ok(Self { app, listeners, tls, forwarders, telemetry, delivery, hangup })
    }

    /// What signs the identity assertions (the demo upstream verifies with its public keys).
    pub fn identity(&self) -> Arc<AssertionSigner> {
        self.app.signer.clone()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Prints one line per listener on stdout, the signal that the proxy accepts connections (the
    /// tests and scripts wait for it rather than sleeping).
    pub fn announce(&self) {
        use std::io::Write as _;
        let scheme = if self.is_tls() { "https" } else { "http" };
        let mut out = std::io::stdout().lock();
        for addr in self.local_addrs() {
            let _ = writeln!(out, "portcullis listening on {scheme}://{addr}");
        }
        let _ = out.flush();
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// for up to `proxy.shutdown_grace`, and persists sessions.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let Self { app, listeners, tls, forwarders, telemetry, delivery, hangup } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let manager = Arc::new(ServiceManager::from_env());
        let addrs = listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect::<Vec<_>>();
        // One budget of connections for all workers.
        let limits = &app.config().limits;
        let shares = Shares::new(
            limits.max_connections_per_address,
            limits.max_connections_per_ipv6_48,
            app.config().trusted_proxies.clone(),
        );
        let connections = Capacity::new(limits.max_connections, shares);
        let mut background = vec![app.users.clone().watch(USERS_POLL), sweeper(app.clone())];
        background.push(tokio::spawn(clock_check(app.clone())));
        background.push(tokio::spawn(config_watcher(app.clone(), hangup, manager.clone())));
        match crate::server::control::bind(&app.config().data_dir) {
            Ok(listener) => background.push(crate::server::control::spawn(listener, Arc::new(app.admin()))),
            // The proxy works without it; only `portcullis admin` does not.
            Err(e) => tracing::error!("{e}; `portcullis admin` commands will not reach this proxy"),
        }
        if let Some(delivery) = delivery {
            background.push(delivery.spawn());
        }
        background.push(tokio::spawn(connections.clone().report_pressure()));
        if let Some(telemetry) = telemetry {
            let open = connections.clone();
            background.push(telemetry.spawn(app.sessions.clone(), move || open.places_held()));
        }

        let mut workers = Vec::new();
        let mut started = Vec::new();
        for (index, forwarder) in forwarders.into_iter().enumerate() {
            let worker_error = |source| StartError::Worker { index, source };
            let sockets =
                listeners.iter().map(|l| l.try_clone()).collect::<Result<Vec<_>, _>>().map_err(worker_error)?;
            let (app, tls, stop, connections) = (app.clone(), tls.clone(), stop_rx.clone(), connections.clone());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("portcullis-worker-{index}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime.block_on(worker(
                            sockets,
                            app,
                            tls,
                            Arc::new(forwarder),
                            connections,
                            stop,
                            started_tx,
                        )),
                        Err(e) => tracing::error!("worker {index} could not start its runtime: {e}"),
                    }
                    let _ = done_tx.send(());
                })
                .map_err(worker_error)?;
            workers.push(done_rx);
            started.push(started_rx);
        }
        // Ready means served, not just bound: every worker accepts on every listener. A worker
        // that could not start drops its sender; the others serve, so that is still ready.
        for worker_started in started {
            let _ = worker_started.await;
        }
        manager.ready(&format!("serving on {}", addrs.join(", ")));

        shutdown.await;
        manager.stopping();
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
        // The accept loops hear the watch; the connections hear it through their activity.
        connections.stop_all();
        for done in workers {
            let _ = done.await;
        }
        for task in background {
            task.abort();
        }
        let _ = std::fs::remove_file(crate::server::control::socket_path(&app.config().data_dir));
        app.sessions.persist_all().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// One worker: an accept loop per listening socket, on this thread's runtime.
async fn worker(
    sockets: Vec<std::net::TcpListener>,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    forwarder: Arc<Forwarder>,
    connections: Arc<Capacity>,
    stop: watch::Receiver<bool>,
    started: tokio::sync::oneshot::Sender<()>,
) {
    let stop = worker_stop(stop);
    let mut loops = Vec::new();
    for socket in sockets {
        match TcpListener::from_std(socket) {
            Ok(listener) => {
                let (app, tls, forwarder, stop) = (app.clone(), tls.clone(), forwarder.clone(), stop.clone());
                loops.push(tokio::spawn(accept::accept_loop(listener, app, tls, forwarder, connections.clone(), stop)));
            }
            Err(e) => tracing::error!("a worker could not use a listening socket: {e}"),
        }
    }
    // The accept loops are spawned; they run as soon as this task awaits them below.
    let _ = started.send(());
    for accept in loops {
        let _ = accept.await;
    }
}

/// The worker's own copy of the stop signal, for its accept loops, which wait on it for every
/// connection they accept: tokio's `watch` registers each waiter under a mutex, which shared by
/// all workers would be a lock every worker takes. (Connections hear the stop through their
/// `Activity`: `Capacity::stop_all`.)
fn worker_stop(mut shared: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (local, receiver) = watch::channel(*shared.borrow_and_update());
    tokio::spawn(async move {
        // Told to stop, or the server's sender is gone: either way the connections stop.
        while !*shared.borrow_and_update() {
            if shared.changed().await.is_err() {
                break;
            }
        }
        let _ = local.send(true);
    });
    receiver
}

/// A half-logged-in session ran out: if the account has a second factor, someone knew the password
/// but not the code, which its owner should hear about (a likely stolen password).
fn tell_abandoned(app: &App, users: &[String]) {
    let mut told = std::collections::HashSet::new();
    for name in users {
        let Some(user) = app.users.get(name) else { continue };
        if app.has_factor(&user) && told.insert(name.clone()) {
            tracing::warn!(target: "portcullis::security", user = %name, "password right, second step abandoned");
            app.notifier.send(&user, crate::domain::notify::SecurityEvent::SecondStepAbandoned, app.clock.now(), false);
        }
    }
}

/// Reloads proxy.toml when it changes on disk, and proxy.toml and the users file on SIGHUP.
/// Each reload is announced to the service manager (`RELOADING=1`, then `READY=1`), so `systemctl
/// reload` and a `Type=notify-reload` unit see when it is done.
async fn config_watcher(app: Arc<App>, mut hangup: Option<tokio::signal::unix::Signal>, manager: Arc<ServiceManager>) {
    let source = app.config().source.clone();
    let mut seen = crate::domain::users::stamp(&source);
    // Providers first, at start: ids factors point at that are gone, and users of deprecated
    // ones to tell. The same after every reload that applied, in this task, so two sweeps never
    // run at once.
    review_providers(&app).await;
    let mut tick = tokio::time::interval(CONFIG_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hung_up = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = crate::domain::users::stamp(&source);
        if !hung_up && now == seen {
            continue;
        }
        manager.reloading();
        let mut users_ok = true;
        if hung_up {
            tracing::info!("SIGHUP: reloading the configuration and the users file");
            if let Err(e) = app.users.reload() {
                users_ok = false;
                tracing::error!("the users file was not reloaded; the running accounts stay: {e}");
            }
        }
        seen = now;
        let config_ok = reload_config(&app, &source);
        if config_ok {
            review_providers(&app).await;
        }
        // READY=1 either way: a refused file leaves the proxy serving its running configuration.
        manager.ready(match (config_ok, users_ok) {
            (true, true) => "serving; configuration reloaded",
            _ => "serving; the last reload was refused (see the log), the running configuration stays",
        });
    }
}

/// Logs factors whose provider is not configured, and mails users of deprecated providers who
/// were not told yet.
async fn review_providers(app: &App) {
    let providers = app.config().mfa.providers.clone();
    let accounts = &app.factors.accounts;
    crate::domain::factors::providers::warn_unconfigured(&app.users, accounts, &providers);
    let now = app.clock.now();
    match crate::domain::factors::providers::mail_retirements(&app.users, accounts, &app.notifier, &providers, now)
        .await
    {
        Ok(mailed) => tracing::info!(mailed, "providers reviewed: users of deprecated providers told"),
        Err(e) => tracing::error!("users of deprecated providers could not be told: {e}"),
    }
}

/// Returns whether the new configuration was applied.
fn reload_config(app: &App, source: &std::path::Path) -> bool {
    let new = match crate::config::load(source) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!("proxy.toml was not reloaded; the running configuration stays: {e}");
            return false;
        }
    };
    let reloaded = match crate::config::reload::merge(&app.config(), new) {
        Ok(reloaded) => reloaded,
        Err(e) => {
            tracing::error!("proxy.toml was not reloaded; the running configuration stays: {e}");
            return false;
        }
    };
    app.config.store(Arc::new(reloaded.config));
    tracing::info!(applied = ?reloaded.applied, "configuration reloaded");
    if !reloaded.needs_restart.is_empty() {
        tracing::warn!(
            keys = ?reloaded.needs_restart,
            "these settings changed in proxy.toml but take effect only after a restart; their running values stay until then"
        );
    }
    true
}

/// The clock self-check at start-up, in the background (an SNTP query may take seconds).
async fn clock_check(app: Arc<App>) {
    let report = crate::domain::clock_health::check(&app.config().clock).await;
    for warning in &report.warnings {
        tracing::warn!("clock: {warning}");
    }
    if report.warnings.is_empty() {
        tracing::info!(kernel = ?report.kernel, "clock looks healthy");
    }
    app.clock_warnings.store(Arc::new(report.warnings));
}

/// Housekeeping once a minute: expired sessions, session activity, abandoned enrollments and
/// stale regulation records.
fn sweeper(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut skew_reported = false;
        let mut rounds: u64 = 0;
        loop {
            tick.tick().await;
            rounds += 1;
            // Every fifth round (5 minutes): the directory's accounts, asked again.
            if rounds.is_multiple_of(5)
                && let Some(ldap) = app.config().login.ldap.clone()
            {
                let report = app.sign_in.directory.recheck(&ldap, &app.users, &app.sessions).await;
                if !report.ended.is_empty() || report.refreshed > 0 {
                    tracing::warn!(target: "portcullis::security", ended = ?report.ended, refreshed = report.refreshed, "directory accounts re-checked");
                }
            }
            match app.sessions.sweep().await {
                Ok(report) => {
                    if report.expired > 0 {
                        tracing::info!(expired = report.expired, "expired sessions removed");
                    }
                    tell_abandoned(&app, &report.abandoned);
                }
                Err(e) => tracing::error!("session sweep failed: {e}"),
            }
            app.pending.sweep();
            app.factors.email_codes.sweep();
            app.handoff.sweep();
            app.passkey_logins.sweep(app.clock.now());
            app.email_links.sweep();
            app.oidc_pending.sweep(app.clock.now());
            let drift = app.factors.drift.report();
            if drift.skew_likely() != skew_reported {
                skew_reported = drift.skew_likely();
                if skew_reported {
                    tracing::warn!(
                        samples = drift.samples,
                        previous_step = format_args!("{:.0}%", drift.previous_step * 100.0),
                        next_step = format_args!("{:.0}%", drift.next_step * 100.0),
                        "clock: most TOTP codes match a neighbouring time step; this server's clock is probably off. Run `portcullis doctor`"
                    );
                }
            }
            if let Err(e) = app.regulator.sweep().await {
                tracing::error!("regulation sweep failed: {e}");
            }
        }
    })
}

/// Completes on Ctrl-C or SIGTERM: what `serve` waits for to shut down gracefully.
///
/// The handlers are registered when this is called, not when the future is first polled: call it
/// before the proxy announces itself, so a SIGTERM sent as soon as the announcement is seen (a
/// service manager, a test) stops it gracefully instead of killing it with the signal's default
/// action, which it would meet while `serve` is still starting its workers.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
