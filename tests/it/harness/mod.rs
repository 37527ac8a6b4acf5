//! Starts the real `portcullis` binary on loopback against a real upstream, and gives tests a
//! browser-like client (cookie jar, no automatic redirects) to walk flows with.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod http_client;
pub use http_client::{Browser, form_field};

pub const BINARY: &str = env!("CARGO_BIN_EXE_portcullis");
/// The longest a test waits for the proxy to do something it announces (start, reload).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Referrer policies under which a browser sends its real `Origin` on a same-origin form POST
/// (Fetch standard, "serializing a request origin": only `no-referrer` always sends `null`).
pub const ORIGIN_SENDING_POLICIES: [&str; 7] = [
    "same-origin",
    "strict-origin-when-cross-origin",
    "strict-origin",
    "origin",
    "origin-when-cross-origin",
    "no-referrer-when-downgrade",
    "unsafe-url",
];

/// An account the harness creates before the proxy starts.
pub struct Account {
    pub name: &'static str,
    pub password: &'static str,
    pub email: &'static str,
    pub groups: &'static [&'static str],
}

pub const ALICE: Account = Account {
    name: "alice",
    password: "correct horse battery",
    email: "alice@example.com",
    groups: &["staff", "wiki-admins"],
};

/// Lines a child process wrote, shared with a reader thread, so a test can wait for a line to
/// appear instead of sleeping.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    /// The last line of a stream that has ended (its process exited or closed it), so that a
    /// test waiting for a line can stop waiting for one that will never come.
    pub const ENDED: &'static str = "(the stream ended)";

    pub fn follow(self, stream: impl std::io::Read + Send + 'static) {
        std::thread::spawn(move || {
            let (lines, ready) = &*self.0;
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
                ready.notify_all();
            }
            lines.lock().unwrap().push(Self::ENDED.to_owned());
            ready.notify_all();
        });
    }

    pub fn all(&self) -> Vec<String> {
        self.0.0.lock().unwrap().clone()
    }

    /// Waits until a line (after the first `skip`) satisfies `matches`; returns it.
    pub fn wait_for(&self, skip: usize, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        let (lines, ready) = &*self.0;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(line) = guard.iter().skip(skip).find(|l| matches(l)) {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = ready.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// As [`Lines::wait_for`], but `None` at once if the stream ends first.
    pub fn wait_for_before_end(&self, skip: usize, matches: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for(skip, |l| l == Self::ENDED || matches(l)).filter(|l| l != Self::ENDED)
    }

    /// Waits until `count` lines (after the first `skip`) satisfy `matches`.
    pub fn wait_for_count(&self, skip: usize, count: usize, matches: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + PATIENCE;
        let (lines, ready) = &*self.0;
        let mut guard = lines.lock().unwrap();
        loop {
            if guard.iter().skip(skip).filter(|l| matches(l)).count() >= count {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            guard = ready.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub fn len(&self) -> usize {
        self.0.0.lock().unwrap().len()
    }
}

pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub stderr: Lines,
    config_path: PathBuf,
}

pub struct ProxyBuilder {
    upstream: String,
    extra: String,
    accounts: Vec<&'static Account>,
    dir: Option<Arc<tempfile::TempDir>>,
    port: Option<u16>,
    scheme: &'static str,
    /// The public URL's host (default 127.0.0.1; a name must be resolved by the test's client).
    host: &'static str,
    public_port: Option<u16>,
    /// Extra environment for the proxy process.
    env: Vec<(String, std::ffi::OsString)>,
    /// Another proxy's users file, read in place (replicas share one).
    users_file: Option<PathBuf>,
}

pub fn proxy(upstream: &str) -> ProxyBuilder {
    ProxyBuilder {
        upstream: upstream.to_string(),
        extra: String::new(),
        accounts: vec![&ALICE],
        dir: None,
        port: None,
        scheme: "http",
        host: "127.0.0.1",
        public_port: None,
        env: Vec::new(),
        users_file: None,
    }
}

impl ProxyBuilder {
    /// Extra TOML appended to the generated proxy.toml.
    pub fn toml(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    /// Another account in the users file from the start.
    pub fn account(mut self, account: &'static Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// A host name for `public_url` instead of the loopback address.
    pub fn public_host(mut self, host: &'static str) -> Self {
        self.host = host;
        self
    }

    /// Listen on `port` (chosen by the test, when something must know it before the proxy starts).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The port browsers use in `public_url`, when a front proxy listens there and not the proxy.
    pub fn public_port(mut self, port: u16) -> Self {
        self.public_port = Some(port);
        self
    }

    /// An environment variable for the proxy process (e.g. `NOTIFY_SOCKET`). `RUST_LOG` set to
    /// nothing removes it, so the config's `log.level` applies.
    pub fn env(mut self, key: &str, value: impl Into<std::ffi::OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn https(mut self) -> Self {
        self.scheme = "https";
        self
    }

    /// Reuse a data folder (and port) from an earlier proxy, as a restart would.
    pub fn restart_of(mut self, earlier: &Proxy) -> Self {
        self.dir = Some(earlier.dir.clone());
        self.port = Some(earlier.addr.port());
        self.accounts.clear();
        self
    }

    /// Reuse a data folder from an earlier proxy, on a new port: a restart that cannot fail
    /// because something else took the old port while no proxy held it.
    pub fn data_of(mut self, earlier: &Proxy) -> Self {
        self.dir = Some(earlier.dir.clone());
        self.accounts.clear();
        self
    }

    /// A replica of `earlier`: its own data folder holding copies of `earlier`'s key files (the
    /// sealing key and the identity keys, which every replica must share), and `earlier`'s users
    /// file read in place. The store is whatever `[store]` the test gives both.
    pub fn replica_of(mut self, earlier: &Proxy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        for file in ["secrets.key", "identity-keys.json"] {
            std::fs::copy(earlier.data_dir().join(file), dir.path().join("data").join(file)).unwrap();
        }
        self.dir = Some(Arc::new(dir));
        self.users_file = Some(earlier.users_file());
        self.accounts.clear();
        self
    }

    pub fn start(self) -> Proxy {
        let fixed = self.port;
        self.try_start().unwrap_or_else(|| panic!("could not start on port {fixed:?}: it was taken"))
    }

    /// As [`Self::start`], but `None` if the port given with [`Self::port`] was taken by the
    /// time the proxy listened (the caller chose it earlier, and must choose again).
    pub fn try_start(self) -> Option<Proxy> {
        let dir = self.dir.clone().unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
        for account in &self.accounts {
            add_account(&dir.path().join("users.toml"), account);
        }
        // Pick a free port, then start on it. Another process can take the port in between; the
        // proxy then exits at once with a bind error and we try another.
        for _ in 0..5 {
            let port = self.port.unwrap_or_else(free_port);
            let config_path = dir.path().join("proxy.toml");
            let text = format!(
                "listen = \"127.0.0.1:{port}\"\nupstream = \"{}\"\npublic_url = \"{}://{}:{}\"\ndata_dir = \"data\"\nusers_file = {:?}\n{}",
                self.upstream,
                self.scheme,
                self.host,
                self.public_port.unwrap_or(port),
                self.users_file.as_deref().map_or("users.toml".to_string(), |p| p.display().to_string()),
                self.extra
            );
            std::fs::write(&config_path, text).unwrap();
            if let Some(proxy) = launch(&config_path, dir.clone(), port, &self.env) {
                return Some(proxy);
            }
            if self.port.is_some() {
                return None;
            }
        }
        panic!("the proxy did not start");
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A counter's value on a metrics listener (`[metrics] listen` at `port`); 0 before it is first
/// counted.
pub async fn metric(port: u16, name: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')).map_or(0, |n| n.trim().parse().unwrap())
}

fn launch(
    config_path: &Path,
    dir: Arc<tempfile::TempDir>,
    port: u16,
    env: &[(String, std::ffi::OsString)],
) -> Option<Proxy> {
    let mut command = Command::new(BINARY);
    command.arg("--config").arg(config_path).env("RUST_LOG", "info").envs(env.iter().map(|(k, v)| (k, v)));
    if env.iter().any(|(k, v)| k == "RUST_LOG" && v.is_empty()) {
        command.env_remove("RUST_LOG");
    }
    let (mut child, stdout, stderr) = spawn_followed(command);
    // The proxy prints this line once it accepts connections; the end of its output means it
    // exited (a port taken since it was picked, most often).
    let announced = stdout.wait_for_before_end(0, |l| l.starts_with("portcullis listening on"));
    if announced.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("proxy failed to start:\n{}", stderr.all().join("\n"));
        return None;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Some(Proxy { child: Some(child), addr, dir, stderr, config_path: config_path.to_path_buf() })
}

/// Starts `command` with its output followed, line by line.
pub fn spawn_followed(mut command: Command) -> (Child, Lines, Lines) {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (stdout, stderr) = (Lines::default(), Lines::default());
    stdout.clone().follow(child.stdout.take().unwrap());
    stderr.clone().follow(child.stderr.take().unwrap());
    (child, stdout, stderr)
}

pub fn add_account(users_file: &Path, account: &Account) {
    let hash = portcullis::domain::password::hash(account.password.as_bytes()).unwrap();
    let groups: Vec<String> = account.groups.iter().map(|g| g.to_string()).collect();
    portcullis::domain::users::edit::add(
        users_file,
        portcullis::domain::users::edit::NewUser {
            name: account.name,
            display_name: None,
            email: account.email,
            groups: &groups,
            password_hash: &hash,
        },
    )
    .unwrap();
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn users_file(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Asks the proxy to stop the way a service manager does (SIGTERM) and waits for it.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    /// Kills the proxy with SIGKILL, as a power cut or the OOM killer would: it gets no chance to
    /// save or flush anything. Reaps it; panics if it had already exited on its own.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("already stopped");
        let early = child.try_wait().unwrap();
        assert!(
            early.is_none(),
            "the proxy exited before it was killed ({early:?}):\n{}",
            self.stderr.all().join("\n")
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for a proxy that was already asked to stop.
    pub fn stop_wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("already stopped").wait().unwrap()
    }

    /// Waits (within a bound) for a notification mail whose text contains `needle`, written by
    /// the file transport into `data_dir/mail`; returns it.
    pub fn wait_for_mail(&self, needle: &str) -> String {
        self.wait_for_new_mail(&HashSet::new(), needle)
    }

    /// Like [`Proxy::wait_for_mail`], among mails not in `before` (from [`Proxy::mail_files`]).
    /// Between looks it waits for the proxy to log a delivered mail, so it never spins.
    pub fn wait_for_new_mail(&self, before: &HashSet<PathBuf>, needle: &str) -> String {
        loop {
            let logged = self.stderr.len();
            let found = self
                .mail_files()
                .into_iter()
                .filter(|path| !before.contains(path))
                .filter_map(|path| std::fs::read_to_string(path).ok())
                // Undo quoted-printable soft line breaks so sentences can be matched whole.
                .map(|m| m.replace("=\r\n", "").replace("=\n", ""))
                .find(|m| m.contains(needle));
            if let Some(mail) = found {
                return mail;
            }
            let delivered = self.stderr.wait_for(logged, |l| l.contains("notification sent"));
            assert!(delivered.is_some(), "no mail containing {needle:?}");
        }
    }

    /// The mail files written so far.
    pub fn mail_files(&self) -> HashSet<PathBuf> {
        std::fs::read_dir(self.data_dir().join("mail"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .collect()
    }

    /// Every notification mail written so far.
    pub fn mails(&self) -> Vec<String> {
        self.mail_files().into_iter().filter_map(|path| std::fs::read_to_string(path).ok()).collect()
    }

    /// The JWK Set the proxy publishes, fetched as an upstream would (no cookie).
    pub async fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        let response = reqwest::get(self.url("/.portcullis/jwks.json")).await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Verifies an assertion as an upstream should: with the key its `kid` names in the published
    /// JWKS, the algorithm pinned to that key's, and the issuer and audience checked. Panics if it
    /// does not verify; returns the claims.
    pub async fn verify_assertion(&self, token: &str) -> serde_json::Value {
        self.try_verify_assertion(token).await.unwrap_or_else(|e| panic!("the assertion does not verify: {e}"))
    }

    pub async fn try_verify_assertion(&self, token: &str) -> Result<serde_json::Value, String> {
        verify_with_jwks(token, &self.jwks().await, &self.origin())
    }
}

/// Verifies an assertion with the key its `kid` names in `set`, for the proxy whose public URL is
/// `origin` (the issuer and audience).
pub fn verify_with_jwks(
    token: &str,
    set: &jsonwebtoken::jwk::JwkSet,
    origin: &str,
) -> Result<serde_json::Value, String> {
    let kid = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or(format!("kid {kid} is not published"))?;
    let algorithm = jwk.common.key_algorithm.ok_or("the key has no alg")?;
    let algorithm: jsonwebtoken::Algorithm = algorithm.to_string().parse().map_err(|_| "an alg JWTs cannot use")?;
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_audience(&[origin]);
    validation.set_issuer(&[format!("{origin}/.portcullis")]);
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map(|t| t.claims).map_err(|e| e.to_string())
}

impl Proxy {
    /// The HS256 shared key the proxy generated (`identity.algorithm = "HS256"`), as an upstream
    /// would read it.
    pub fn identity_key(&self) -> Vec<u8> {
        std::fs::read_to_string(self.data_dir().join("identity.key")).unwrap().trim().as_bytes().to_vec()
    }

    /// Runs the CLI against this proxy's config, with `stdin` as standard input.
    pub fn cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        run_cli(self.config_path(), args, stdin)
    }
}

pub fn run_cli(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses before reading its input closes the pipe early; that is its answer,
    // not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what the proxy said, so a failure seen only in CI can be read.
        if std::thread::panicking() {
            let lines = self.stderr.all();
            let shown = &lines[lines.len().saturating_sub(200)..];
            eprintln!("--- the proxy's last {} log lines ---\n{}", shown.len(), shown.join("\n"));
        }
    }
}

/// A self-signed certificate for 127.0.0.1, as the PEM files a `[tls]` section names, and
/// clients that trust it.
pub struct SelfSigned {
    certified: rcgen::CertifiedKey<rcgen::KeyPair>,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl SelfSigned {
    pub fn new() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        Self { certified, cert, key, _dir: dir }
    }

    /// The `[tls]` section for proxy.toml.
    pub fn toml(&self) -> String {
        format!("[tls]\ncert = \"{}\"\nkey = \"{}\"", self.cert.display(), self.key.display())
    }

    pub fn pem(&self) -> String {
        self.certified.cert.pem()
    }

    /// A TLS client offering `alpn` (ALPN protocol names) that trusts only this certificate.
    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.certified.cert.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(portcullis::base::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|name| name.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Peak resident memory of a process, from /proc (Linux).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Says that `test` cannot run because `missing` is not installed (`install` installs it), and
/// fails instead under CI, which must run everything. Written to the process's own stderr, not
/// through `eprintln!`, which the test runner captures and shows only for failing tests: a skip
/// must be seen in a passing run.
pub fn skip(test: &str, missing: &str, install: &str) {
    assert!(std::env::var_os("CI").is_none(), "CI must run {test}, but {missing} is missing ({install})");
    use std::io::Write as _;
    let _ =
        writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {missing} is not installed ({install}); CI runs it ***\n");
}
