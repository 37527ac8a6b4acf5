//! A small W3C WebDriver client (https://www.w3.org/TR/webdriver2/) for Debian's `chromium` driven
//! by `chromedriver`: just the commands the end-to-end tests use, over the reqwest client the
//! suite already has. Chrome DevTools commands go through chromedriver's `goog/cdp/execute`.
//!
//! Nothing here sleeps to synchronise: every wait polls a condition in the page until it holds or
//! [`PATIENCE`] runs out, and then fails with what it was waiting for.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Lines, PATIENCE, free_port};

/// The WebDriver id of an element reference (W3C WebDriver §12.1).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running `chromedriver`, stopped on drop.
pub struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts");
            let stdout = Lines::default();
            stdout.clone().follow(child.stdout.take().unwrap());
            if stdout.wait_for(0, |l| l.contains("started successfully")).is_some() {
                return Self { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("chromedriver did not start");
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The size of the page's viewport, emulated exactly (not the window's outer size).
#[derive(Debug, Clone, Copy)]
pub struct Viewport {
    pub name: &'static str,
    pub width: u32,
    pub height: u32,
    pub mobile: bool,
}

pub const PHONE: Viewport = Viewport { name: "360x740", width: 360, height: 740, mobile: true };
pub const DESKTOP: Viewport = Viewport { name: "1280x900", width: 1280, height: 900, mobile: false };

/// One browser session: a fresh profile (no cookies), headless.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    pub viewport: Viewport,
    /// Keeps chromedriver alive as long as the session.
    _driver: ChromeDriver,
}

#[derive(Clone)]
pub struct Element {
    id: String,
}

impl Browser {
    pub async fn open(viewport: Viewport) -> Self {
        let driver = ChromeDriver::start();
        let http = reqwest::Client::builder().timeout(PATIENCE * 2).build().unwrap();
        // As root Chromium needs --no-sandbox; the networking switches keep it from calling out
        // (this machine's network is closed, and a test must not depend on Google's hosts).
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            "--password-store=basic",
            &format!("--window-size={},{}", viewport.width.max(800), viewport.height.max(800)),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let base = format!("http://127.0.0.1:{}", driver.port);
        let reply: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let id = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {reply}"));
        let browser = Self { http, session: format!("{base}/session/{id}"), viewport, _driver: driver };
        browser
            .cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": viewport.width, "height": viewport.height, "deviceScaleFactor": 1, "mobile": viewport.mobile}),
            )
            .await;
        browser
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = reply["value"]["error"].as_str() {
            panic!("WebDriver {method} {path}: {error}: {}", reply["value"]["message"]);
        }
        reply["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, None).await
    }

    /// Runs a Chrome DevTools Protocol command.
    pub async fn cdp(&self, command: &str, params: Value) -> Value {
        self.post("/goog/cdp/execute", json!({"cmd": command, "params": params})).await
    }

    /// Light or dark, as `prefers-color-scheme` tells the page.
    pub async fn color_scheme(&self, dark: bool) {
        let value = if dark { "dark" } else { "light" };
        self.cdp("Emulation.setEmulatedMedia", json!({"features": [{"name": "prefers-color-scheme", "value": value}]}))
            .await;
    }

    /// Navigates and waits for the load to finish (WebDriver's "normal" page load strategy).
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    pub async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap().to_string()
    }

    pub async fn title(&self) -> String {
        self.get("/title").await.as_str().unwrap().to_string()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.script("return document.body ? document.body.innerText : ''", json!([]))
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// Runs a script that finishes by calling its last argument.
    pub async fn script_async(&self, script: &str, args: Value) -> Value {
        self.post("/timeouts", json!({"script": (PATIENCE * 2).as_millis() as u64})).await;
        self.post("/execute/async", json!({"script": script, "args": args})).await
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self.post("/elements", json!({"using": "css selector", "value": css})).await;
        found.as_array().unwrap().iter().map(|e| Element { id: e[ELEMENT_KEY].as_str().unwrap().to_string() }).collect()
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(element) = self.find_all(css).await.into_iter().next() {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css:?} on {} ({}):\n{}",
                self.url().await,
                self.title().await,
                self.text().await
            );
            self.next_frame().await;
        }
    }

    /// The pause between two looks at a condition that does not hold yet. A poll interval, not a
    /// synchronisation: every wait goes on until its condition holds (or fails at its deadline).
    /// Not an in-page timer either, which a navigation in progress would cancel.
    async fn next_frame(&self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Waits until `condition` (a JavaScript expression) is true in the page.
    pub async fn wait_until(&self, condition: &str) {
        let deadline = Instant::now() + PATIENCE;
        let script = format!("try {{ return !!({condition}); }} catch (e) {{ return false; }}");
        while self.script(&script, json!([])).await != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for `{condition}` on {}:\n{}",
                self.url().await,
                self.text().await
            );
            self.next_frame().await;
        }
    }

    /// Clicks something that loads a new page (a submit button, a link) and waits until that new
    /// page has loaded: the old document is marked first, so a page that has not changed yet
    /// cannot be mistaken for the new one.
    pub async fn click_and_wait(&self, element: &Element) {
        self.script("window.__portcullisOldPage = true;", json!([])).await;
        element.click(self).await;
        self.wait_until("window.__portcullisOldPage === undefined && document.readyState === 'complete'").await;
    }

    /// Types into the field `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        self.post(&format!("/element/{}/clear", field.id), json!({})).await;
        self.post(&format!("/element/{}/value", field.id), json!({"text": text})).await;
    }

    /// Clicks the submit button of the form that holds `css` and waits for the next page.
    pub async fn submit(&self, button_css: &str) {
        let button = self.find(button_css).await;
        self.click_and_wait(&button).await;
    }

    /// The `name` attribute of the first element matching `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let element = self.find(css).await;
        self.get(&format!("/element/{}/attribute/{name}", element.id)).await.as_str().map(str::to_string)
    }

    /// A PNG of the whole page, below the fold included.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.cdp("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap()
    }
}

/// Ends the WebDriver session, which closes Chromium, even when the test failed: with only the
/// driver killed, Chromium would outlive the test. A blocking request, as `Drop` cannot await.
impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(rest) = self.session.strip_prefix("http://") else { return };
        let Some((authority, path)) = rest.split_once('/') else { return };
        if let Ok(mut stream) = std::net::TcpStream::connect(authority) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let request = format!(
                "DELETE /{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(request.as_bytes());
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

impl Element {
    pub async fn click(&self, browser: &Browser) {
        browser.post(&format!("/element/{}/click", self.id), json!({})).await;
    }
}
