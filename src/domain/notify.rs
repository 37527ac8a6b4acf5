//! Security notifications by email: on every event that changes how an account is protected, its
//! owner hears about it, so a change they did not make does not go unnoticed.
//!
//! Sending never blocks a request: mails go into a bounded queue and a background task delivers
//! them, retrying with back-off. The `file` transport (the default) writes each mail as an `.eml`
//! file into a folder, so the demo and the tests need no mail server; the `smtp` transport hands
//! them to a mail server (RFC 5321), over STARTTLS (RFC 3207) or implicit TLS (RFC 8314 §3.3).

use std::time::Duration;

use askama::Template;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;

use crate::base::clock::UnixTime;
use crate::config::notify::{NotifySettings, SmtpSecurity, SmtpSettings, Transport};
use crate::domain::users::User;

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    Enrolled,
    Removed,
    /// One of two second factors was removed; the other remains.
    FactorRemoved {
        factor: &'static str,
    },
    /// An administrator removed the account's factors (a lost phone, usually).
    ResetByAdmin,
    RecoveryCodeUsed {
        left: usize,
    },
    CodesRegenerated,
    /// Signing in was paused after too many wrong passwords, or (`by_codes`) too many wrong
    /// second-factor codes after a right password.
    Locked {
        by_codes: bool,
    },
    /// The authenticator app was moved to a new one (the old one no longer works).
    AuthenticatorReplaced,
    /// The user changed their password on the account page.
    PasswordChanged,
    /// An administrator made a one-time recovery link for the account (mailed with the link).
    RecoveryLinkIssued {
        url: String,
        expires: String,
    },
    /// A one-time sign-in code (the email factor), sent to the confirmed address.
    SignInCode {
        code: String,
    },
    /// An OpenID Connect identity was linked to the account: signing in with it now reaches it.
    IdentityLinked {
        provider: String,
    },
    /// Such an identity was unlinked.
    IdentityUnlinked {
        provider: String,
    },
    /// A link that signs in (`[login.email_link]`), to the account's address.
    SignInLink {
        url: String,
    },
    /// A code that proves the address, before email codes become a factor.
    ConfirmAddress {
        code: String,
    },
    /// Email codes were set up as a second factor.
    EmailEnrolled,
    /// The account was recovered with such a link: old factors voided, a new one to set up.
    RecoveredWithLink,
    /// The password was right, but the second step never came: maybe someone else has it.
    SecondStepAbandoned,
    /// A second step the account uses is being retired by the administrator (a `deprecated`
    /// provider): `names` of those, and what can be set up `instead`, if anything.
    ProviderRetiring {
        names: String,
        instead: Option<String>,
    },
    /// A security key or passkey was registered, under this name.
    KeyAdded {
        name: String,
    },
    /// A security key or passkey was removed; other second steps remain.
    KeyRemoved {
        name: String,
    },
    /// A key's signature counter went backwards (WebAuthn L3 §6.1.1): it may have been copied.
    KeyPossiblyCloned {
        name: String,
    },
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
            Self::FactorRemoved { factor } => (
                "A second step was removed from your account",
                format!("{factor} no longer works as a second step for your account. Your other second step and your recovery codes still do."),
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
            Self::SignInCode { code } => (
                "Your sign-in code",
                format!("Your code is {code}. It works once, for 10 minutes. If you are not signing in right now, someone knows your password: change it, and do not give this code to anyone."),
            ),
            Self::IdentityLinked { provider } => (
                "A new way to sign in was added",
                format!("Your {provider} account can now be used to sign in to this account (your second step still applies). If you did not expect this, tell your administrator at once."),
            ),
            Self::IdentityUnlinked { provider } => (
                "A way to sign in was removed",
                format!("Your {provider} account can no longer be used to sign in to this account."),
            ),
            Self::SignInLink { url } => (
                "Your sign-in link",
                format!("Open this link to sign in: {url} . It works once, for 15 minutes, in the browser where you asked for it; opened anywhere else it shows a code to type there instead. If you did not ask to sign in, ignore this mail: nobody can use the link without that browser."),
            ),
            Self::ConfirmAddress { code } => (
                "Confirm your address for sign-in codes",
                format!("Your confirmation code is {code}. Enter it on the page that asked for it to receive sign-in codes at this address. It works once, for 10 minutes."),
            ),
            Self::EmailEnrolled => (
                "Sign-in codes by email were turned on",
                "Your account can now be signed in to with a code sent to this address as the second step.".into(),
            ),
            Self::RecoveredWithLink => (
                "Your account was recovered with an administrator's link",
                "A recovery link from an administrator was used with your password. Your old authenticator and recovery codes no longer work; a new authenticator is being set up. If this was not you, tell your administrator at once.".into(),
            ),
            Self::SecondStepAbandoned => (
                "Someone began signing in to your account but stopped at the second step",
                "The first step of signing in succeeded (your password, a sign-in link sent to you, or an account linked to yours), but no second step followed. If that was not you, someone has that first step: change your password, or check who can read your mail, and tell your administrator.".into(),
            ),
            Self::Locked { by_codes: false } => (
                "Signing in to your account was paused",
                "There were too many wrong passwords for your account, so signing in to it is paused for a while. Someone may be guessing your password. Browsers you have signed in with before are not affected.".into(),
            ),
            Self::Locked { by_codes: true } => (
                "Signing in to your account was paused",
                "Your password was entered correctly, then too many wrong codes followed, so codes for your account are paused for a while. If that was not you, someone knows your password: change it now.".into(),
            ),
            Self::AuthenticatorReplaced => (
                "Your authenticator app was replaced",
                "A new authenticator app was set up for your account; codes from the old one no longer work. Your recovery codes still do.".into(),
            ),
            Self::ProviderRetiring { names, instead } => (
                "A second step of your account is being retired",
                match instead {
                    Some(instead) => format!("Your administrator is retiring {names}. It still works for now, but it will stop working later. Set up {instead} from your account page, then remove the old one."),
                    None => format!("Your administrator is retiring {names}. It still works for now, but it will stop working later. Ask your administrator what to use instead."),
                },
            ),
            Self::KeyAdded { name } => (
                "A security key was added to your account",
                format!("The security key or passkey \"{name}\" was added to your account. It can now be used as the second step when you sign in. If this was not you, remove it from your account page and change your password."),
            ),
            Self::KeyRemoved { name } => (
                "A security key was removed from your account",
                format!("The security key or passkey \"{name}\" no longer works for your account. Your other second steps and your recovery codes still do."),
            ),
            Self::KeyPossiblyCloned { name } => (
                "Your security key may have been copied",
                format!("A sign-in with your security key \"{name}\" was refused because the key's signature counter went backwards, which is what a copied key looks like. If you did not just try to sign in, remove the key from your account page, change your password, and tell your administrator."),
            ),
            Self::PasswordChanged => (
                "Your password was changed",
                "The password of your account was changed from your account page. Your other sessions were signed out and remembered browsers forgotten. If this was not you, tell your administrator at once.".into(),
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
        if matches!(settings.transport, Transport::Off) {
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
        let when = crate::base::text::format_utc(now);
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

    /// Delivers until the queue closes (every `Notifier` dropped), then finishes what is in flight.
    async fn run(mut self) {
        let Some(outbox) = Outbox::open(&self.transport).await else { return };
        let outbox = std::sync::Arc::new(outbox);
        // Each mail goes on its own task, so one waiting out its retries never holds up the next
        // (a sign-in code must not queue behind a mail the server keeps deferring). `in_flight`
        // bounds the mails being worked on; `sending` the connections open at once.
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let sending = std::sync::Arc::new(tokio::sync::Semaphore::new(SENDING));
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(message) = self.queue.recv().await {
            let Ok(slot) = in_flight.clone().acquire_owned().await else { break };
            let (outbox, sending) = (outbox.clone(), sending.clone());
            tasks.spawn(async move {
                let _slot = slot;
                deliver(&outbox, &sending, message).await;
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Mails being delivered or retried at once; past this, the queue waits.
const IN_FLIGHT: usize = 64;
/// Attempts in progress at once (each may open a connection to the mail server).
const SENDING: usize = 4;

async fn deliver(outbox: &Outbox, sending: &tokio::sync::Semaphore, message: Message) {
    let to = message.envelope().to().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let mut attempt = 0;
    loop {
        let sent = match sending.acquire().await {
            Ok(_permit) => outbox.send(&message).await,
            Err(_) => return,
        };
        match sent {
            Ok(receipt) => {
                tracing::info!(%to, %receipt, "security notification sent");
                return;
            }
            Err(e) if !e.permanent && attempt < RETRIES.len() => {
                tracing::warn!(%to, "sending a security notification failed, retrying in {:?}: {}", RETRIES[attempt], e.reason);
                tokio::time::sleep(RETRIES[attempt]).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(%to, "a security notification could not be sent: {}", e.reason);
                return;
            }
        }
    }
}

/// A transport made ready once, in the delivery task.
enum Outbox {
    File(AsyncFileTransport<Tokio1Executor>),
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, server: String },
}

/// Why one attempt failed. The reason is lettre's, which names the server's reply but never the
/// password or the mail.
struct SendFailure {
    reason: String,
    /// The server refused for good (a 5xx reply): trying again would get the same answer.
    permanent: bool,
}

impl Outbox {
    async fn open(transport: &Transport) -> Option<Self> {
        match transport {
            Transport::Off => None,
            Transport::File(dir) => {
                if let Err(e) = tokio::fs::create_dir_all(dir).await {
                    tracing::error!(dir = %dir.display(), "cannot create the mail folder: {e}");
                }
                Some(Self::File(AsyncFileTransport::new(dir)))
            }
            Transport::Smtp(settings) => {
                let server = format!("{}:{}", settings.host, settings.port);
                match smtp_transport(settings) {
                    Ok(transport) => {
                        tracing::info!(%server, security = settings.security.as_str(), "security notifications go out by SMTP");
                        Some(Self::Smtp { transport, server })
                    }
                    Err(e) => {
                        tracing::error!(%server, "cannot set up SMTP delivery; security mails will not be sent: {e}");
                        None
                    }
                }
            }
        }
    }

    /// One attempt; on success, something to log that identifies the mail.
    async fn send(&self, message: &Message) -> Result<String, SendFailure> {
        match self {
            Self::File(transport) => transport
                .send(message.clone())
                .await
                .map(|id| format!("file {id}"))
                .map_err(|e| SendFailure { reason: e.to_string(), permanent: false }),
            Self::Smtp { transport, server } => match transport.send(message.clone()).await {
                Ok(reply) => {
                    Ok(format!("{server} replied {} {}", reply.code(), reply.message().next().unwrap_or_default()))
                }
                Err(e) => Err(SendFailure { reason: format!("{server}: {e}"), permanent: e.is_permanent() }),
            },
        }
    }
}

/// The client for `settings`, built the way lettre's `relay` (implicit TLS) and `starttls_relay`
/// (required STARTTLS) build theirs, plus any private CA; plain only for `security = none`.
fn smtp_transport(
    settings: &SmtpSettings,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
        .port(settings.port)
        .timeout(Some(settings.timeout));
    if settings.security != SmtpSecurity::None {
        let mut parameters = TlsParameters::builder(settings.host.clone());
        for root in &settings.extra_roots {
            parameters = parameters.add_root_certificate(Certificate::from_der(root.to_vec())?);
        }
        let parameters = parameters.build_rustls()?;
        builder = builder.tls(match settings.security {
            SmtpSecurity::Tls => Tls::Wrapper(parameters),
            _ => Tls::Required(parameters),
        });
    }
    if let Some(credentials) = &settings.credentials {
        // lettre keeps the password as a plain String for the life of the transport; our copy
        // stays in a zeroizing Secret.
        let password = String::from_utf8_lossy(credentials.password.expose()).into_owned();
        builder = builder.credentials(Credentials::new(credentials.username.clone(), password));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::secret::Secret;
    use crate::config::notify::SmtpCredentials;
    use rustls_pki_types::CertificateDer;

    fn smtp(security: SmtpSecurity, extra_roots: Vec<CertificateDer<'static>>) -> SmtpSettings {
        SmtpSettings {
            host: "mail.internal".into(),
            port: security.default_port(),
            security,
            credentials: Some(SmtpCredentials {
                username: "mailer".into(),
                password: Secret::new(b"hunter2!".to_vec()),
            }),
            ca_file: None,
            extra_roots,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn smtp_settings_debug_shows_the_account_but_not_the_password() {
        let debug = format!("{:?}", Transport::Smtp(smtp(SmtpSecurity::StartTls, vec![])));
        assert!(debug.contains("mailer") && debug.contains("mail.internal"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[tokio::test]
    async fn an_smtp_client_is_built_for_every_security_mode_and_a_private_ca() {
        let ca = rcgen::generate_simple_self_signed(vec!["mail.internal".to_string()]).unwrap();
        for security in [SmtpSecurity::StartTls, SmtpSecurity::Tls, SmtpSecurity::None] {
            assert!(smtp_transport(&smtp(security, vec![])).is_ok(), "{security:?}");
            assert!(smtp_transport(&smtp(security, vec![ca.cert.der().clone()])).is_ok(), "{security:?}");
        }
    }

    #[test]
    fn every_event_renders_to_a_mail_with_its_subject() {
        let settings =
            NotifySettings { transport: Transport::File("/tmp".into()), from: "Portcullis <p@example.com>".into() };
        let (notifier, _delivery) = Notifier::new(&settings, "https://app.example.com");
        let user = User {
            name: crate::domain::users::Username::parse("alice").unwrap(),
            display_name: "Alice <Liddell>".into(),
            email: "alice@example.com".into(),
            groups: vec![],
            password_hash: String::new(),
            credential_stamp: [0; 16],
            account_key: "alice".into(),
        };
        let events = [
            SecurityEvent::Enrolled,
            SecurityEvent::Removed,
            SecurityEvent::ResetByAdmin,
            SecurityEvent::FactorRemoved { factor: "Codes by email" },
            SecurityEvent::RecoveryCodeUsed { left: 3 },
            SecurityEvent::CodesRegenerated,
            SecurityEvent::Locked { by_codes: false },
            SecurityEvent::Locked { by_codes: true },
            SecurityEvent::AuthenticatorReplaced,
            SecurityEvent::PasswordChanged,
            SecurityEvent::SecondStepAbandoned,
            SecurityEvent::RecoveryLinkIssued { url: "https://app.example.com/x".into(), expires: "soon".into() },
            SecurityEvent::RecoveredWithLink,
            SecurityEvent::SignInCode { code: "123456".into() },
            SecurityEvent::SignInLink { url: "https://app.example.com/.portcullis/login/email/open?token=x".into() },
            SecurityEvent::IdentityLinked { provider: "Google".into() },
            SecurityEvent::IdentityUnlinked { provider: "Google".into() },
            SecurityEvent::ConfirmAddress { code: "654321".into() },
            SecurityEvent::EmailEnrolled,
            SecurityEvent::KeyAdded { name: "Blue key".into() },
            SecurityEvent::KeyRemoved { name: "Blue key".into() },
            SecurityEvent::KeyPossiblyCloned { name: "Blue key".into() },
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
