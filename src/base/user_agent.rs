//! A `User-Agent` header in words a person recognises on the account page: "Firefox on Windows".
//!
//! Only this short description is stored with a session, never the header itself: it is enough to
//! tell one's own devices apart, and it keeps no fingerprint. Browsers freeze and reduce the
//! header (Chromium's "User-Agent Reduction"), so only the browser family and the platform are
//! read, never versions.

/// The browser family and platform in `user_agent`, or "Unknown browser".
pub fn describe(user_agent: &str) -> String {
    let browser = browser(user_agent);
    match platform(user_agent) {
        Some(platform) => format!("{browser} on {platform}"),
        None => browser.to_string(),
    }
}

fn browser(ua: &str) -> &'static str {
    // Order matters: Edge and Opera say "Chrome" too, Chrome says "Safari" too, and the
    // iOS browsers all say "Safari" and name themselves with their own token.
    const FAMILIES: [(&str, &str); 13] = [
        ("Edg/", "Edge"),
        ("EdgiOS/", "Edge"),
        ("OPR/", "Opera"),
        ("SamsungBrowser/", "Samsung Internet"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("Wget/", "Wget"),
        ("python-requests/", "Python requests"),
    ];
    FAMILIES.iter().find(|(token, _)| ua.contains(token)).map_or("Unknown browser", |(_, name)| name)
}

fn platform(ua: &str) -> Option<&'static str> {
    const PLATFORMS: [(&str, &str); 8] = [
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Android", "Android"),
        ("CrOS", "ChromeOS"),
        ("Windows", "Windows"),
        ("Macintosh", "macOS"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ];
    PLATFORMS.iter().find(|(token, _)| ua.contains(token)).map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn common_browsers_in_words() {
        let table = [
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0", "Firefox on Windows"),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
                "Chrome on Linux",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0 Mobile/15E148 Safari/604.1",
                "Chrome on iPhone",
            ),
            (
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0",
                "Edge on Windows",
            ),
            ("curl/8.5.0", "curl"),
            ("", "Unknown browser"),
        ];
        for (ua, words) in table {
            assert_eq!(describe(ua), words, "{ua}");
        }
    }
}
