//! What every page a scenario visits must pass, whatever the scenario is about.

use serde_json::{Value, json};

use super::webdriver::Browser;
use crate::harness::ORIGIN_SENDING_POLICIES;

/// Checks the page the browser is on, in light and dark mode, and keeps screenshots of it.
pub async fn page(browser: &Browser, name: &str) {
    if is_own_page(browser).await {
        let meta = browser
            .script("const m = document.querySelector('meta[name=referrer]'); return m ? m.content : null;", json!([]))
            .await;
        let meta = meta.as_str().unwrap_or_else(|| panic!("{name}: no referrer meta tag"));
        assert!(
            ORIGIN_SENDING_POLICIES.contains(&meta),
            "{name}: referrer policy {meta:?} makes form posts send Origin: null"
        );
    }
    for dark in [false, true] {
        browser.color_scheme(dark).await;
        let scheme = if dark { "dark" } else { "light" };
        save_screenshot(browser, &format!("{name}-{scheme}")).await;
        nothing_off_screen(browser, &format!("{name} ({scheme})")).await;
        accessible(browser, &format!("{name} ({scheme})")).await;
    }
    browser.color_scheme(false).await;
}

async fn is_own_page(browser: &Browser) -> bool {
    browser.url().await.contains("/.portcullis/")
        || browser.script("return !!document.querySelector('.brand')", json!([])).await == Value::Bool(true)
}

async fn save_screenshot(browser: &Browser, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots").join(browser.viewport.name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), browser.screenshot().await).unwrap();
}

/// The page does not scroll sideways, every control (button, link, field) lies inside the
/// viewport, so nothing a person must press is out of sight (tables included), and nothing spills
/// out of the page's card.
async fn nothing_off_screen(browser: &Browser, name: &str) {
    let report = browser
        .script(
            r#"
            const width = document.documentElement.clientWidth;
            const out = [];
            if (document.documentElement.scrollWidth > width + 1) {
                out.push(`the page is ${document.documentElement.scrollWidth}px wide in a ${width}px viewport`);
            }
            for (const el of document.querySelectorAll('button, a, input, select, textarea, summary')) {
                const r = el.getBoundingClientRect();
                if (r.width === 0 && r.height === 0) continue; // not rendered (hidden input, closed <details>)
                if (r.left < -1 || r.right > width + 1) {
                    out.push(`${el.tagName.toLowerCase()} "${(el.innerText || el.value || el.name || '').trim().slice(0, 40)}" spans ${Math.round(r.left)}..${Math.round(r.right)}px`);
                }
            }
            const card = document.querySelector('main.card');
            if (card) {
                const edge = card.getBoundingClientRect().right;
                for (const el of card.querySelectorAll('*')) {
                    const r = el.getBoundingClientRect();
                    if (r.width > 0 && r.right > edge + 1) {
                        out.push(`${el.tagName.toLowerCase()} "${(el.innerText || '').trim().slice(0, 40)}" spills out of the card by ${Math.round(r.right - edge)}px`);
                    }
                }
            }
            return out;
            "#,
            json!([]),
        )
        .await;
    let problems: Vec<&str> = report.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(problems.is_empty(), "{name} at {}: off screen: {problems:#?}", browser.viewport.name);
}

/// axe-core on the page: no violation of serious or critical impact.
async fn accessible(browser: &Browser, name: &str) {
    let loaded = browser.script("return typeof window.axe !== 'undefined'", json!([])).await;
    if loaded != Value::Bool(true) {
        let axe = std::fs::read_to_string(super::axe_path()).unwrap();
        browser.script(&axe, json!([])).await;
    }
    let result = browser
        .script_async(
            r#"
            const done = arguments[arguments.length - 1];
            axe.run(document, { resultTypes: ['violations'] })
                .then(r => done(r.violations
                    .filter(v => v.impact === 'serious' || v.impact === 'critical')
                    .map(v => `${v.impact} ${v.id}: ${v.help} at ${v.nodes.map(n => n.target.join(' ')).join(', ')}`)))
                .catch(e => done([`axe failed: ${e}`]));
            "#,
            json!([]),
        )
        .await;
    let violations: Vec<&str> = result.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(violations.is_empty(), "{name} at {}: accessibility: {violations:#?}", browser.viewport.name);
}
