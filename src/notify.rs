//! Security notifications by email: on every event that changes how an account is protected, its
//! owner hears about it (seed 001), so a change they did not make does not go unnoticed.
//!
//! Sending never blocks a request: mails go into a bounded queue and a background task delivers
//! them, retrying with back-off. The `file` transport (the default) writes each mail as an `.eml`
//! file into a folder, so the demo and the tests need no mail server.

use std::path::PathBuf;
use std::time::Duration;

use askama::Template;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;

use crate::clock::UnixTime;
use crate::users::User;

/// How mail leaves the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// One `.eml` file per mail in this folder.
    File(PathBuf),
    Off,
}

#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub transport: Transport,
    pub from: String,
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    Enrolled,
    Removed,
    /// An administrator removed the account's factors (a lost phone, usually).
    ResetByAdmin,
    RecoveryCodeUsed {
        left: usize,
    },
    CodesRegenerated,
    Locked,
    /// An administrator made a one-time recovery link for the account (mailed with the link).
    RecoveryLinkIssued {
        url: String,
        expires: String,
    },
    /// The account was recovered with such a link: old factors voided, a new one to set up.
    RecoveredWithLink,
    /// The password was right, but the second step never came: maybe someone else has it.
    SecondStepAbandoned,
}

impl SecurityEvent {
    fn words(&self) -> (&'static str, String) {
        match self {
            Self::Enrolled => (
                "Two-step verification was turned on",
                "An authenticator app was set up for your account. From now on, signing in needs a code from it.".into(),
            ),
            Self::Removed => (
                "Two-step verification was turned off",
                "Your account's authenticator and recovery codes were removed. Signing in needs only the password now.".into(),
            ),
            Self::ResetByAdmin => (
                "An administrator reset your two-step verification",
                "An administrator removed your account's authenticator and recovery codes. Set up a new authenticator at your next sign-in or from your account page. If you did not ask for this, tell your administrator at once.".into(),
            ),
            Self::RecoveryCodeUsed { left } => (
                "A recovery code was used to sign in",
                format!("One of your recovery codes was used instead of a code from your app. {left} unused code(s) remain; make new ones from your account page when you run low."),
            ),
            Self::CodesRegenerated => (
                "New recovery codes were made",
                "A new set of recovery codes was made for your account. The old codes no longer work.".into(),
            ),
            Self::RecoveryLinkIssued { url, expires } => (
                "A recovery link for your account",
                format!("An administrator made a one-time link to get you back into your account after losing your second factor. Open it, sign in with your password, and set up a new authenticator: {url} . It works once, until {expires}. If you did not ask for this, tell your administrator and do not open it."),
            ),
            Self::RecoveredWithLink => (
                "Your account was recovered with an administrator's link",
                "A recovery link from an administrator was used with your password. Your old authenticator and recovery codes no longer work; a new authenticator is being set up. If this was not you, tell your administrator at once.".into(),
            ),
            Self::SecondStepAbandoned => (
                "Someone signed in with your password but stopped at the second step",
                "Your password was entered correctly, but no code from your authenticator followed. If that was not you, someone knows your password: change it now.".into(),
            ),
            Self::Locked => (
                "Signing in to your account was paused",
                "There were too many failed attempts to sign in to your account, so signing in is paused for a while. Someone may be guessing your password.".into(),
            ),
        }
    }
}

/// What a security mail says; the text and HTML templates render the same content.
struct MailContent<'a> {
    display_name: &'a str,
    username: &'a str,
    headline: &'a str,
    detail: &'a str,
    when: &'a str,
    by_you: bool,
    account_url: &'a str,
    site: &'a str,
}

#[derive(Template)]
#[template(path = "email/security.txt")]
struct TextMail<'a> {
    m: &'a MailContent<'a>,
}

#[derive(Template)]
#[template(path = "email/security.html")]
struct HtmlMail<'a> {
    m: &'a MailContent<'a>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build a mail: {0}")]
    Build(String),
    #[error("cannot render a mail: {0}")]
    Render(#[from] askama::Error),
}

/// Hands mails to the delivery task. Cheap to call from any worker.
pub struct Notifier {
    queue: Option<mpsc::Sender<Message>>,
    from: Option<Mailbox>,
    site: String,
}

/// The delivery task's half; [`Delivery::spawn`] runs it on the main runtime.
pub struct Delivery {
    queue: mpsc::Receiver<Message>,
    transport: Transport,
}

/// Mails waiting to be delivered; past this, new ones are dropped (and logged).
const QUEUE: usize = 1024;
const RETRIES: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(10), Duration::from_secs(60)];

impl Notifier {
    pub fn new(settings: &NotifySettings, site: &str) -> (Self, Option<Delivery>) {
        if settings.transport == Transport::Off {
            return (Self { queue: None, from: None, site: site.into() }, None);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let from = settings.from.parse().ok();
        (
            Self { queue: Some(tx), from, site: site.into() },
            Some(Delivery { queue: rx, transport: settings.transport.clone() }),
        )
    }

    /// Queues a mail to `user` about `event`. Never waits; failures are logged, not returned,
    /// because a notification must not undo or block the change it reports.
    pub fn send(&self, user: &User, event: SecurityEvent, now: UnixTime, by_you: bool) {
        let Some(queue) = &self.queue else { return };
        match self.build(user, event, now, by_you) {
            Ok(message) => {
                if queue.try_send(message).is_err() {
                    tracing::error!(user = %user.name, "notification queue full; a security mail was dropped");
                }
            }
            Err(e) => tracing::error!(user = %user.name, "could not build a security mail: {e}"),
        }
    }

    fn build(&self, user: &User, event: SecurityEvent, now: UnixTime, by_you: bool) -> Result<Message, NotifyError> {
        let from = self.from.clone().ok_or_else(|| NotifyError::Build("notify.from is not a valid address".into()))?;
        let to: Mailbox = format!("{} <{}>", user.display_name.replace(['<', '>', '"'], ""), user.email)
            .parse()
            .or_else(|_| user.email.parse())
            .map_err(|e: lettre::address::AddressError| NotifyError::Build(e.to_string()))?;
        let (headline, detail) = event.words();
        let when = crate::portal::format_time(now);
        let account_url = format!("{}/.portcullis/account", self.site);
        let content = MailContent {
            display_name: &user.display_name,
            username: user.name.as_str(),
            headline,
            detail: &detail,
            when: &when,
            by_you,
            account_url: &account_url,
            site: &self.site,
        };
        let text = TextMail { m: &content }.render()?;
        let html = HtmlMail { m: &content }.render()?;
        Message::builder()
            .from(from)
            .to(to)
            .subject(headline)
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| NotifyError::Build(e.to_string()))
    }
}

impl Delivery {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let Transport::File(dir) = &self.transport else { return };
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            tracing::error!(dir = %dir.display(), "cannot create the mail folder: {e}");
        }
        let transport = AsyncFileTransport::<Tokio1Executor>::new(dir);
        while let Some(message) = self.queue.recv().await {
            let mut attempt = 0;
            loop {
                match transport.send(message.clone()).await {
                    Ok(id) => {
                        tracing::info!(mail = %id, "security notification written");
                        break;
                    }
                    Err(e) if attempt < RETRIES.len() => {
                        tracing::warn!("sending a security notification failed, retrying: {e}");
                        tokio::time::sleep(RETRIES[attempt]).await;
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::error!("a security notification could not be sent: {e}");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_renders_to_a_mail_with_its_subject() {
        let settings =
            NotifySettings { transport: Transport::File("/tmp".into()), from: "Portcullis <p@example.com>".into() };
        let (notifier, _delivery) = Notifier::new(&settings, "https://app.example.com");
        let user = User {
            name: crate::users::Username::parse("alice").unwrap(),
            display_name: "Alice <Liddell>".into(),
            email: "alice@example.com".into(),
            groups: vec![],
            password_hash: String::new(),
            credential_stamp: [0; 16],
        };
        let events = [
            SecurityEvent::Enrolled,
            SecurityEvent::Removed,
            SecurityEvent::ResetByAdmin,
            SecurityEvent::RecoveryCodeUsed { left: 3 },
            SecurityEvent::CodesRegenerated,
            SecurityEvent::Locked,
            SecurityEvent::SecondStepAbandoned,
            SecurityEvent::RecoveryLinkIssued { url: "https://app.example.com/x".into(), expires: "soon".into() },
            SecurityEvent::RecoveredWithLink,
        ];
        for event in events {
            let message = notifier.build(&user, event.clone(), 1_800_000_000, false).unwrap();
            // Undo quoted-printable soft breaks and header folding before matching sentences.
            let text = String::from_utf8(message.formatted()).unwrap().replace("=\r\n", "").replace("\r\n ", " ");
            assert!(text.contains(&format!("Subject: {}", event.words().0)), "{text}");
            assert!(text.contains("alice@example.com"));
            assert!(text.contains("https://app.example.com/.portcullis/account"));
        }
    }
}
