//! `[store]`: where the state that outlives a request is kept. The embedded default (sled, in
//! `data_dir`) serves one process; Redis is shared by several replicas.

pub use crate::store::redis_store::RedisSettings;

/// The chosen backend.
#[derive(Debug, Clone, Default)]
pub enum StoreSettings {
    /// The embedded database in `data_dir/store` (one process at a time).
    #[default]
    Embedded,
    Redis(RedisSettings),
}

impl StoreSettings {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Embedded => "sled",
            Self::Redis(_) => "redis",
        }
    }
}
