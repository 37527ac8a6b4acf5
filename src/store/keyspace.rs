//! The keyspaces records live in.

/// The keyspaces. A record's key is chosen by its domain module (a session's key hash, an
/// account key, a regulation subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    Sessions,
    Accounts,
    Regulation,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Sessions, Space::Accounts, Space::Regulation];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sessions => "sessions",
            Self::Accounts => "accounts",
            Self::Regulation => "regulation",
        }
    }
}
