//! The keyspaces records live in.

/// The keyspaces. A record's key is chosen by its domain module (a session's key hash, an
/// account key, a regulation subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    Sessions,
    Accounts,
    Regulation,
    /// Flows in progress (a setup, a key ceremony), kept for minutes with an expiry, and only in
    /// a shared store (one process keeps them in memory): not loaded at start-up, not copied by a
    /// migration, not announced to other replicas (nobody caches them).
    Flows,
}

impl Space {
    /// What outlives a flow: loaded at start-up, followed across replicas, copied by a migration.
    pub const ALL: [Space; 3] = [Space::Sessions, Space::Accounts, Space::Regulation];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sessions => "sessions",
            Self::Accounts => "accounts",
            Self::Regulation => "regulation",
            Self::Flows => "flows",
        }
    }

    /// Whether other replicas hear of its changes (they cache it).
    pub fn announced(self) -> bool {
        self != Self::Flows
    }
}
