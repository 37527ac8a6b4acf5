//! The signed identity as an upstream verifies it: the published JWKS, a third-party JOSE library
//! (PyJWT's `PyJWKClient`, from `tests/upstreams/.venv`), and key rotation with the proxy running
//! or stopped.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::harness::{ALICE, Browser, Proxy, proxy};
use crate::upstream::Upstream;

fn upstreams() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams")
}

/// `tests/upstreams/verify_jwt.py` running with one `PyJWKClient` for its whole life.
struct PyJwt {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PyJwt {
    /// `None` (the test skips, loudly) when the venv lacks PyJWT, except under CI, where that fails.
    fn start(test: &str, proxy: &Proxy, algorithm: &str) -> Option<Self> {
        let python = upstreams().join(".venv/bin/python");
        let installed = python.exists()
            && Command::new(&python).args(["-c", "import jwt, cryptography"]).status().is_ok_and(|s| s.success());
        if !installed {
            let install = "python3 -m venv tests/upstreams/.venv && tests/upstreams/.venv/bin/pip install -r tests/upstreams/requirements.txt";
            crate::harness::skip(test, "PyJWT", install);
            return None;
        }
        let mut child = Command::new(python)
            .arg(upstreams().join("verify_jwt.py"))
            .arg(proxy.url("/.portcullis/jwks.json"))
            .arg(format!("{}/.portcullis", proxy.origin()))
            .arg(proxy.origin())
            .arg(algorithm)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Some(Self { child, stdin, stdout })
    }

    /// Verifies `token`; the script's answer (`ok`, `kid`, `claims`, `fetches`, or `error`).
    fn verify(&mut self, token: &str) -> serde_json::Value {
        writeln!(self.stdin, "{token}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("verify_jwt.py said {line:?}: {e}"))
    }
}

impl Drop for PyJwt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs in and loads `path`; the assertion the upstream received.
async fn assertion_for(browser: &Browser, proxy: &Proxy, upstream: &Upstream, path: &str) -> String {
    assert_eq!(browser.navigate(&proxy.url(path)).await.status(), 200);
    let seen = upstream.seen().into_iter().rev().find(|s| s.path == path).unwrap();
    seen.header("x-portcullis-assertion").unwrap().to_string()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.expect("a kid")
}

fn published_kids(set: &jsonwebtoken::jwk::JwkSet) -> Vec<String> {
    set.keys.iter().map(|k| k.common.key_id.clone().unwrap()).collect()
}

/// PyJWT verifies our assertions with nothing but the JWKS URL, and one `PyJWKClient` that
/// fetched the set before a rotation verifies the assertions from before and after it without
/// fetching again: the key that signs after a rotation was already published as `next`.
async fn pyjwt_verifies_across_a_live_rotation(test: &str, algorithm: &str) {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(&format!("[identity]\nalgorithm = \"{algorithm}\"")).start();
    let Some(mut pyjwt) = PyJwt::start(test, &proxy, algorithm) else { return };

    // The JWKS: public, no cookie needed, cacheable, with our usual hardening headers.
    let response = reqwest::get(proxy.url("/.portcullis/jwks.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["content-type"], "application/jwk-set+json");
    assert_eq!(h["cache-control"], "public, max-age=300");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.get("set-cookie").is_none());
    let before: serde_json::Value = response.json().await.unwrap();
    assert_eq!(before["keys"].as_array().unwrap().len(), 2, "current and next: {before}");
    for key in before["keys"].as_array().unwrap() {
        assert_eq!(key["alg"], algorithm);
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none(), "never a private key: {key}");
    }

    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let old = assertion_for(&browser, &proxy, &upstream, "/before").await;
    let first = pyjwt.verify(&old);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["claims"]["sub"], "alice");
    assert_eq!(first["kid"], kid(&old).as_str());
    assert_eq!(first["fetches"], 1);

    // A forged assertion does not verify.
    let parts: Vec<&str> = old.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.replace("alice", "admin")), parts[2]);
    let refused = pyjwt.verify(&forged);
    assert_eq!(refused["ok"], false);
    assert!(refused["error"].as_str().unwrap().contains("Signature"), "{refused}");

    // Rotate through the running proxy, with the CLI an operator would use.
    let out = proxy.cli(&["identity", "rotate"], "");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("the running proxy signs with it now"), "{said}");

    let new = assertion_for(&browser, &proxy, &upstream, "/after").await;
    assert_ne!(kid(&new), kid(&old), "the session's assertion is re-signed with the new key at once");
    assert!(published_kids(&serde_json::from_value(before).unwrap()).contains(&kid(&new)), "it was the next key");
    let after = pyjwt.verify(&new);
    assert_eq!(after["ok"], true, "{after}");
    assert_eq!(after["fetches"], 1, "verified with the JWKS fetched before the rotation");
    let again = pyjwt.verify(&old);
    assert_eq!(again["ok"], true, "the retired key still verifies what it signed: {again}");
    assert_eq!(again["fetches"], 1);

    // The published set now holds the retired, current and new next keys.
    let now = proxy.jwks().await;
    let kids = published_kids(&now);
    assert_eq!(kids.len(), 3);
    assert!(kids.contains(&kid(&old)) && kids.contains(&kid(&new)));
    proxy.verify_assertion(&new).await;

    // The CLI prints the same public keys from the key file.
    let out = proxy.cli(&["identity", "public-key"], "");
    assert!(out.status.success());
    let printed: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(published_kids(&printed), kids);
    let out = proxy.cli(&["identity", "public-key", "--pem"], "");
    let pem = String::from_utf8(out.stdout).unwrap();
    assert_eq!(pem.matches("-----BEGIN PUBLIC KEY-----").count(), 2, "current and next: {pem}");
    assert!(pem.contains(&format!("current key, {algorithm} (kid {})", kid(&new))), "{pem}");
    assert!(!pem.contains("PRIVATE"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pyjwt_verifies_eddsa_assertions_across_a_live_rotation() {
    pyjwt_verifies_across_a_live_rotation("pyjwt_verifies_eddsa_assertions_across_a_live_rotation", "EdDSA").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pyjwt_verifies_es256_assertions_across_a_live_rotation() {
    pyjwt_verifies_across_a_live_rotation("pyjwt_verifies_es256_assertions_across_a_live_rotation", "ES256").await;
}

/// With the proxy stopped, `identity rotate` rotates the key file itself, and the proxy signs
/// with the promoted key from its next start. A key file that cannot be read stops the start and
/// is left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn rotating_while_stopped_and_a_corrupt_key_file() {
    let upstream = Upstream::start().await;
    let mut first = proxy(&upstream.url()).start();
    let before = published_kids(&first.jwks().await);
    first.stop();

    let out = first.cli(&["identity", "rotate"], "");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("no proxy is running"), "{said}");
    let current = said.lines().find_map(|l| l.trim().strip_prefix("current: ")).unwrap().to_string();
    assert_eq!(current, before[1], "the next key was promoted");

    let mut second = proxy(&upstream.url()).restart_of(&first).start();
    let browser = Browser::new();
    browser.login(&second, &ALICE).await;
    let token = assertion_for(&browser, &second, &upstream, "/").await;
    assert_eq!(kid(&token), current);
    second.verify_assertion(&token).await;
    second.stop();

    let key_file = second.data_dir().join("identity-keys.json");
    let corrupt =
        std::fs::read_to_string(&key_file).unwrap().replacen("\"private_key\": \"", "\"private_key\": \"AAAA", 1);
    std::fs::write(&key_file, &corrupt).unwrap();
    let out = second.cli(&["run"], "");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("identity key file") && said.contains("never replaced"), "{said}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), corrupt, "not regenerated");
    // `check-config` says so before a start would.
    let out = second.cli(&["check-config"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("identity key file"));
}
