//! The pages of signing in with a link sent by email (`web/portal/email_link.rs`).

use askama::Template;

/// "Email me a sign-in link": the address form.
#[derive(Template)]
#[template(path = "login_link.html")]
pub struct LinkRequestPage<'a> {
    pub csrf: &'a str,
    pub return_to: &'a str,
    pub error: Option<&'a str>,
    pub password_url: &'a str,
}

/// "Check your email", with the form for the code shown where the link was opened elsewhere.
#[derive(Template)]
#[template(path = "login_link_sent.html")]
pub struct LinkSentPage<'a> {
    pub csrf: &'a str,
    pub return_to: &'a str,
    pub error: Option<&'a str>,
    pub again_url: &'a str,
    pub password_url: &'a str,
}

/// The link opened in a browser other than the one that asked: the code to type there.
#[derive(Template)]
#[template(path = "login_link_elsewhere.html")]
pub struct LinkElsewherePage<'a> {
    /// Grouped for reading ("123 456").
    pub code: &'a str,
}
