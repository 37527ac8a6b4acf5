//! The first factor: what says who someone is, before the account's second factor is asked for.
//! Every way in (a password, an emailed sign-in link; later a directory or an OpenID provider)
//! ends in the same [`FirstFactorProof`], and from it the same partial session for the account:
//! the second factor and the policy belong to the account, not to the way in.
//!
//! Each way has its own proof type, made only by its verifier (`PasswordProof` by the password
//! check, `EmailLinkProof` by `email_link.rs`), and converts into this one; nothing else can.

use std::sync::Arc;

use crate::domain::factors::proof::AuthMethod;
use crate::domain::password::PasswordProof;
use crate::domain::users::User;

/// A first factor just proven for `user`: what a half-logged-in session starts from.
pub struct FirstFactorProof {
    user: Arc<User>,
    method: AuthMethod,
}

impl FirstFactorProof {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    /// How it was proven: the first `amr` value of the session (`pwd`, `link`).
    pub fn method(&self) -> AuthMethod {
        self.method
    }
}

impl From<PasswordProof> for FirstFactorProof {
    fn from(proof: PasswordProof) -> Self {
        Self { user: proof.user().clone(), method: AuthMethod::Pwd }
    }
}

impl From<crate::domain::identities::OidcProof> for FirstFactorProof {
    fn from(proof: crate::domain::identities::OidcProof) -> Self {
        Self { user: proof.into_user(), method: AuthMethod::Fed }
    }
}

impl From<crate::domain::email_link::EmailLinkProof> for FirstFactorProof {
    fn from(proof: crate::domain::email_link::EmailLinkProof) -> Self {
        Self { user: proof.into_user(), method: AuthMethod::Link }
    }
}
