//! A full session's `amr` values (RFC 8176 §2), in the order they were proven, kept inline.
//!
//! A session proves two or three methods; as a `Vec` they were an allocation of their own in each
//! of possibly a hundred thousand live sessions (`bench/scale.sh rss`). Each method is kept once:
//! `amr` names which methods were used, not how often (RFC 8176 §1), so there are never more
//! than there are kinds of [`AuthMethod`].

use std::ops::Deref;

use crate::domain::factors::proof::AuthMethod;

/// More than there are kinds of [`AuthMethod`] (11).
const ROOM: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods {
    len: u8,
    kept: [AuthMethod; ROOM],
}

impl Methods {
    pub fn new(methods: &[AuthMethod]) -> Self {
        let mut kept = Self { len: 0, kept: [AuthMethod::Pwd; ROOM] };
        for &method in methods {
            kept.add(method);
        }
        kept
    }

    /// Adds `method` after the others, unless it is among them already.
    pub fn add(&mut self, method: AuthMethod) {
        if self.contains(&method) {
            return;
        }
        let at = usize::from(self.len);
        // Unreachable while ROOM exceeds the kinds of method; a method past it is left out
        // rather than a session refused.
        if let Some(slot) = self.kept.get_mut(at) {
            *slot = method;
            self.len += 1;
        } else {
            tracing::error!("more kinds of sign-in method than a session keeps; one is left out of amr");
        }
    }
}

impl Deref for Methods {
    type Target = [AuthMethod];

    fn deref(&self) -> &[AuthMethod] {
        &self.kept[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::{AuthMethod, Methods};

    #[test]
    fn methods_are_kept_once_each_in_the_order_first_proven() {
        use AuthMethod::*;
        let methods = Methods::new(&[Pwd, Otp, Pwd, Hwk, Otp]);
        assert_eq!(&*methods, &[Pwd, Otp, Hwk]);
        let every = [Pwd, Otp, Email, Rc, RememberedBrowser, Hwk, Swk, Mfa, Fed, Link, User];
        let mut all = Methods::new(&[]);
        for method in every.iter().chain(every.iter().rev()) {
            all.add(*method);
        }
        assert_eq!(&*all, &every);
        assert!(Methods::new(&[]).is_empty());
    }
}
