//! Where to send a user after login: only ever somewhere on the public origin.
//!
//! An open redirect on a login page is a phishing kit: "sign in here, land on evil.com". Browsers
//! are lenient about what they treat as a host (`//evil.com`, `/\evil.com`, `https:evil.com`,
//! tabs and newlines inside the scheme), so rather than enumerate tricks we accept only two shapes,
//! resolve them with a real URL parser against the public URL, and require the result to have the
//! public origin. Anything else becomes `/`.

use percent_encoding::percent_decode_str;

use crate::config::PublicUrl;

/// Longer return URLs are refused rather than truncated.
pub const MAX_LEN: usize = 2048;

/// The path and query to return to, if `candidate` is a URL on the public origin.
pub fn validate(candidate: &str, public: &PublicUrl) -> Option<String> {
    let suspicious = |s: &str| s.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\');
    if candidate.is_empty() || candidate.len() > MAX_LEN || suspicious(candidate) {
        return None;
    }
    // One rule for every spelling: decoded as often as anything downstream might decode it, with
    // dot segments resolved as a browser or server would, the path must not begin with `//` (a
    // host) or hide a backslash or control character. `/%2F%2Fevil.com`, `/.%2F%2Fevil.com` and
    // `/%252F%252Fevil.com` all end up as `//evil.com` somewhere, so all are refused alike.
    let decoded = fully_decoded(candidate);
    let path_part = decoded.split(['?', '#']).next().unwrap_or("");
    if suspicious(&decoded) || decoded.starts_with("//") || remove_dot_segments(path_part).starts_with("//") {
        return None;
    }
    let lower = candidate.to_ascii_lowercase();
    let url = if candidate.starts_with('/') && !candidate.starts_with("//") {
        public.url().join(candidate).ok()?
    } else if lower.starts_with("https://") || lower.starts_with("http://") {
        url::Url::parse(candidate).ok()?
    } else {
        return None;
    };
    let same_origin = url.origin() == public.url().origin() && url.username().is_empty() && url.password().is_none();
    if !same_origin {
        return None;
    }
    // The same rule on the path the URL parser settled on: `https://host/%2f%2fevil` and kin.
    let mut path = url.path().to_string();
    if path.starts_with("//") || remove_dot_segments(&fully_decoded(&path)).starts_with("//") {
        return None;
    }
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    Some(path)
}

/// `text` percent-decoded until decoding changes nothing more (double and triple encodings
/// included; bounded, and lossy for bytes that are not UTF-8).
fn fully_decoded(text: &str) -> String {
    let mut current = text.to_string();
    for _ in 0..8 {
        let next = percent_decode_str(&current).decode_utf8_lossy().into_owned();
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// RFC 3986 §5.2.4, keeping empty segments (`/./a` → `/a`, `/.//x` → `//x`): what a browser does to
/// a path before it looks at what the path starts with.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if index == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if index == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    out.join("/")
}

/// [`validate`], falling back to the front page.
pub fn or_root(candidate: Option<&str>, public: &PublicUrl) -> String {
    candidate.and_then(|c| validate(c, public)).unwrap_or_else(|| "/".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public() -> PublicUrl {
        let text = "upstream = \"http://127.0.0.1:1\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"/tmp\"\n";
        crate::config::parse(text, std::path::Path::new("/tmp/proxy.toml")).unwrap().public_url
    }

    #[test]
    fn same_origin_urls_are_kept() {
        let p = public();
        assert_eq!(validate("/wiki/Page?x=1", &p).as_deref(), Some("/wiki/Page?x=1"));
        assert_eq!(validate("https://app.example.com/a/b", &p).as_deref(), Some("/a/b"));
        assert_eq!(validate("HTTPS://APP.EXAMPLE.COM/a", &p).as_deref(), Some("/a"));
        assert_eq!(validate("https://app.example.com:443/a", &p).as_deref(), Some("/a"));
    }

    #[test]
    fn dot_segments_resolve_like_a_browser() {
        assert_eq!(remove_dot_segments("/a/./b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/.//evil.com"), "//evil.com");
        assert_eq!(remove_dot_segments("/../../x"), "/x");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(fully_decoded("/%25252F"), "//");
        let p = public();
        assert_eq!(validate("/wiki/./Page/../Other?x=%2F%2F", &p).as_deref(), Some("/wiki/Other?x=%2F%2F"));
    }

    #[test]
    fn every_trick_falls_back_to_root() {
        let p = public();
        let long = format!("/{}", "a".repeat(MAX_LEN));
        let tricks = [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https:evil.com",
            "https:/evil.com",
            "%2F%2Fevil.com",
            "/%2F%2Fevil.com",
            "/.%2F%2Fevil.com",
            "/%252F%252Fevil.com",
            "/%25252F%25252Fevil.com",
            "/./%2Fevil.com",
            "/a/..//evil.com",
            "/%2e%2e//evil.com",
            "https://app.example.com/%2f%2fevil.com",
            "https://app.example.com/.%2F%2Fevil.com",
            "/%5Cevil.com",
            "/%5cevil.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "https://app.example.com@evil.com/",
            "https://user:pw@app.example.com/",
            "https://app.example.com.evil.com/",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "/\r\nLocation: https://evil.com",
            "/\tevil",
            "\t//evil.com",
            "/%0d%0aSet-Cookie:x=1",
            "evil.com",
            "",
            long.as_str(),
        ];
        for trick in tricks {
            assert_eq!(validate(trick, &p), None, "{trick:?} was accepted");
            assert_eq!(or_root(Some(trick), &p), "/");
        }
    }

    proptest::proptest! {
        /// Whatever comes in, what comes out is a path on our own origin.
        #[test]
        fn never_returns_an_off_origin_url(candidate in ".{0,300}") {
            let p = public();
            if let Some(path) = validate(&candidate, &p) {
                proptest::prop_assert!(path.starts_with('/') && !path.starts_with("//"));
                proptest::prop_assert!(!path.chars().any(|c| c.is_control() || c == '\\'));
                let target = p.url().join(&path).unwrap();
                proptest::prop_assert_eq!(target.origin(), p.url().origin());
            }
        }

        #[test]
        fn url_shaped_input_never_escapes(scheme in "(https?|HTTPS?|javascript|data|//|/\\\\)", host in "[a-z.@:%0-9]{0,30}", path in "[/a-z%.]{0,20}") {
            let p = public();
            let candidate = format!("{scheme}{host}{path}");
            if let Some(path) = validate(&candidate, &p) {
                proptest::prop_assert_eq!(p.url().join(&path).unwrap().origin(), p.url().origin());
            }
        }
    }
}
