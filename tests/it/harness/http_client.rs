//! The browser stand-in tests walk flows with: reqwest with a cookie jar, no automatic
//! redirects (tests look at each hop).

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::cookie::{CookieStore, Jar};

use super::{Account, PATIENCE, Proxy};

/// A browser stand-in: a cookie jar, no automatic redirects (tests look at each hop).
pub struct Browser {
    pub http: reqwest::Client,
    pub jar: Arc<Jar>,
}

impl Browser {
    pub fn new() -> Self {
        Self::with(|builder| builder)
    }

    /// A browser that closes each connection after its request (for tests that count the
    /// proxy's connections).
    pub fn without_keep_alive() -> Self {
        Self::with(|builder| builder.pool_max_idle_per_host(0))
    }

    /// A browser whose `hosts` resolve to `addr` (a proxy or a front proxy on loopback).
    pub fn resolving(addr: SocketAddr, hosts: &[&str]) -> Self {
        Self::with(|builder| hosts.iter().fold(builder, |builder, host| builder.resolve(host, addr)))
    }

    /// A browser that trusts `certificate` (a proxy on TLS with it).
    pub fn trusting(certificate: &crate::harness::SelfSigned) -> Self {
        let root = reqwest::Certificate::from_pem(certificate.pem().as_bytes()).unwrap();
        Self::with(|builder| builder.add_root_certificate(root))
    }

    /// The stand-in's client (a cookie jar, no redirects followed, [`PATIENCE`]), as `configure`
    /// adjusts it.
    fn with(configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder) -> Self {
        let jar = Arc::new(Jar::default());
        let builder = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PATIENCE);
        Self { http: configure(builder).build().unwrap(), jar }
    }

    /// The `Cookie` header the browser would send to `url`.
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        self.jar.cookies(&url.parse().unwrap()).map(|v| v.to_str().unwrap().to_string())
    }

    pub async fn navigate(&self, url: &str) -> reqwest::Response {
        self.navigate_request(url).send().await.unwrap()
    }

    /// A navigation to `url`, for a test to add headers to before sending it.
    pub fn navigate_request(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url).header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
    }

    /// Loads the login page and returns its CSRF token.
    pub async fn login_form(&self, proxy: &Proxy, query: &str) -> String {
        self.login_form_at(&proxy.origin(), query).await
    }

    pub async fn login_form_at(&self, base: &str, query: &str) -> String {
        let page = self.navigate(&format!("{base}/.portcullis/login{query}")).await;
        assert_eq!(page.status(), 200);
        form_field(&page.text().await.unwrap(), "csrf").expect("the login page has a csrf field")
    }

    /// Submits the login form as a browser on our origin would.
    pub async fn submit_login(&self, proxy: &Proxy, user: &str, password: &str, rd: &str) -> reqwest::Response {
        self.submit_login_at(&proxy.origin(), user, password, rd).await
    }

    pub async fn submit_login_at(&self, base: &str, user: &str, password: &str, rd: &str) -> reqwest::Response {
        let csrf = self.login_form_at(base, "").await;
        self.http
            .post(format!("{base}/.portcullis/login"))
            .header("origin", base)
            .form(&[("username", user), ("password", password), ("csrf", &csrf), ("rd", rd)])
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, proxy: &Proxy, account: &Account) {
        let response = self.submit_login(proxy, account.name, account.password, "/").await;
        assert_eq!(response.status(), 303, "login failed: {}", response.text().await.unwrap());
    }
}

/// The `value` of the input called `name` in an HTML page.
pub fn form_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}
