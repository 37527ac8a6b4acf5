//! `portcullis demo`: the proxy in front of a built-in "whoami" app, with a demo account, so a
//! newcomer sees the whole flow with nothing else installed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use askama::Template;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::base::clock::SystemClock;
use crate::base::secret;
use crate::config::{self, Config};
use crate::domain::users::{self, edit};
use crate::domain::{identity, password};
use crate::server::Server;
use crate::server::logging;
use crate::web::pages::{self, Body};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Users(#[from] users::UsersError),
    #[error(transparent)]
    Key(#[from] secret::KeyFileError),
    #[error(transparent)]
    Start(#[from] crate::server::StartError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Hash(#[from] password::HashError),
}

pub const DEMO_USER: &str = "demo";

/// A password that is easy to read off a terminal: 16 characters from an alphabet without
/// look-alikes (about 79 bits), grouped in fours.
pub fn readable_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut chars = Vec::with_capacity(16);
    while chars.len() < 16 {
        for byte in secret::random_bytes::<32>() {
            // Rejection sampling keeps every character equally likely.
            if (byte as usize) < ALPHABET.len() * (256 / ALPHABET.len()) && chars.len() < 16 {
                chars.push(ALPHABET[byte as usize % ALPHABET.len()] as char);
            }
        }
    }
    chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
}

pub async fn run(listen: SocketAddr, data_dir: PathBuf) -> Result<(), DemoError> {
    let io = |source| DemoError::Io { path: data_dir.clone(), source };
    crate::base::secret::secure_private_dir(&data_dir).map_err(io)?;
    let data_dir = data_dir.canonicalize().map_err(io)?;

    let upstream = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
    let upstream_addr = upstream.local_addr().map_err(io)?;
    let config_path = data_dir.join("proxy.toml");
    let config_text = format!(
        "# Written by `portcullis demo` at every start; see the proxy.toml in the repository for every key.\n\
         listen = \"{listen}\"\n\
         upstream = \"http://{upstream_addr}\"\n\
         public_url = \"http://{listen}\"\n\
         data_dir = \".\"\n\
         users_file = \"users.toml\"\n\
         [mfa]\n\
         email_otp = true\n\
         [admin]\n\
         group = \"demo\"\n"
    );
    std::fs::write(&config_path, config_text).map_err(io)?;
    let config = config::load(&config_path)?;
    let _log = logging::init("info", &config.audit);

    let password = readable_password();
    let hash = password::hash(password.as_bytes())?;
    if users::read(&config.users_file)?.contains_key(DEMO_USER) {
        edit::set_password_hash(&config.users_file, DEMO_USER, &hash)?;
    } else {
        let groups = ["demo".to_string()];
        let new = edit::NewUser {
            name: DEMO_USER,
            display_name: Some("Demo User"),
            email: "demo@example.com",
            groups: &groups,
            password_hash: &hash,
        };
        edit::add(&config.users_file, new)?;
    }

    let whoami_config = config.clone();
    let server = Server::bind(config, Arc::new(SystemClock)).await?;
    // The demo app verifies as an upstream should: with the published public keys only (asked
    // for at each request, so a rotation is seen at once), never the private key.
    let whoami = Arc::new(Whoami {
        signer: server.identity(),
        issuer: whoami_config.identity.issuer.clone(),
        audience: whoami_config.identity.audience.clone(),
        config: whoami_config,
    });
    tokio::spawn(serve_whoami(upstream, whoami));
    let shutdown = crate::server::shutdown_signal();
    server.announce();
    println!();
    println!("  Portcullis demo is running. Open http://{listen}/ and sign in:");
    println!("    user name: {DEMO_USER}");
    println!("    password:  {password}   (a new one at every start of the demo)");
    println!();
    println!("  Set up two-step verification from the account page (an authenticator app, or codes by");
    println!("  email), then visit http://{listen}/.portcullis/admin.");
    println!(
        "  Mails (security notices, emailed codes) are written as .eml files to {}.",
        data_dir.join("mail").display()
    );
    println!("  Demo data (config, users, keys, sessions) is in {}. Stop with Ctrl-C.", data_dir.display());
    server.serve(shutdown).await?;
    Ok(())
}

/// The demo upstream: shows what it received from the proxy and whether the assertion verified.
struct Whoami {
    signer: Arc<identity::AssertionSigner>,
    issuer: String,
    audience: String,
    config: Config,
}

#[derive(Template)]
#[template(path = "demo_whoami.html")]
struct WhoamiPage<'a> {
    method: &'a str,
    path: &'a str,
    user: Option<&'a str>,
    verdict: Result<String, String>,
    headers: Vec<(String, String)>,
}

async fn serve_whoami(listener: TcpListener, whoami: Arc<Whoami>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let whoami = whoami.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let whoami = whoami.clone();
                async move { Ok::<_, std::convert::Infallible>(whoami.answer(&request)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Whoami {
    fn answer(&self, request: &Request<Incoming>) -> Response<Body> {
        let names = &self.config.identity.headers;
        let header_text = |name: &http::HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
        let verdict = match header_text(&names.assertion) {
            None => Err("no assertion header arrived".to_string()),
            Some(token) => identity::verify(token, &self.signer.verifying_keys(), &self.issuer, &self.audience)
                .map(|claims| serde_json::to_string_pretty(&claims).unwrap_or_default())
                .map_err(|e| format!("the assertion did not verify: {e}")),
        };
        let page = WhoamiPage {
            method: request.method().as_str(),
            path: request.uri().path(),
            user: header_text(&names.user),
            verdict,
            headers: request
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        };
        let mut response = pages::html(StatusCode::OK, &page);
        response.headers_mut().remove(header::CACHE_CONTROL);
        response
    }
}
