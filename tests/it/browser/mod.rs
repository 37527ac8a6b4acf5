//! End-to-end tests in a real browser: Debian's `chromium`, driven through `chromedriver`, against
//! the real binary and a recording upstream. Nothing is injected: the browser decides what it
//! sends (`Origin`, cookies, referrer), which is what the cookie-jar tests cannot prove.
//!
//! Every scenario runs at a phone's 360×740 and at a desktop's 1280×900. Every page a scenario
//! visits is checked by [`checks::page`]: axe-core finds no serious or critical accessibility
//! problem in light or dark mode, nothing sits off-screen sideways, and screenshots are kept in
//! `target/tmp/screenshots/` for a person to look at.
//!
//! Without Chromium, chromedriver or axe-core these tests say loudly that they were skipped;
//! under `CI` they fail instead (`.ci/run` installs all three).

mod checks;
mod flows;
mod keys;
mod links;
mod oidc;
mod webdriver;

use std::path::PathBuf;

use webdriver::{Browser, CHROMEDRIVER, CHROMIUM, Viewport};

/// axe-core, installed by `npm ci --prefix tests/browser`.
pub fn axe_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/axe-core/axe.min.js")
}

/// At most this many browsers at once: each is a few processes, and the machine has 2 cores.
static BROWSERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Opens a browser at `viewport` if everything the browser tests need is installed. Otherwise:
/// under CI, a failure; elsewhere, a loud note that the test was skipped.
pub async fn open(viewport: Viewport, test: &str) -> Option<(Browser, tokio::sync::SemaphorePermit<'static>)> {
    let needed = [PathBuf::from(CHROMIUM), PathBuf::from(CHROMEDRIVER), axe_path()];
    let missing: Vec<String> = needed.iter().filter(|p| !p.exists()).map(|p| p.display().to_string()).collect();
    if !missing.is_empty() {
        let install = "apt-get install chromium chromium-driver && npm ci --prefix tests/browser";
        crate::harness::skip(test, &missing.join(", "), install);
        return None;
    }
    let permit = BROWSERS.acquire().await.unwrap();
    Some((Browser::open(viewport).await, permit))
}

/// Declares each scenario of [`flows`] once per viewport: `phone::NAME` and `desktop::NAME`.
macro_rules! in_both_viewports {
    ($($name:ident;)*) => {
        mod phone {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::flows::$name(super::webdriver::PHONE, concat!(stringify!($name), " at 360x740")).await;
                }
            )*
        }
        mod desktop {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::flows::$name(super::webdriver::DESKTOP, concat!(stringify!($name), " at 1280x900")).await;
                }
            )*
        }
    };
}

in_both_viewports! {
    password_sign_in_and_out;
    two_step_verification_from_setup_to_every_way_in;
    required_policy_enrolls_inline_and_lands_on_the_deep_link;
    step_up_carries_the_action_through;
    a_retired_then_disabled_authenticator_is_explained;
    security_key_from_the_account_page_to_sign_in;
    a_passkey_signs_in_without_a_password;
    a_sign_in_link_signs_in_the_browser_that_asked;
    an_openid_provider_on_another_site_signs_in_and_lands_on_the_deep_link;
}
