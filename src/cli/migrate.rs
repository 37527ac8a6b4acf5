//! `portcullis admin migrate --to redis|sled`: copies the embedded store (`data_dir/store`) into
//! the Redis that `[store]` names, or back, so a single install can grow into several replicas
//! (and shrink again) without anyone enrolling again or even signing in again.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;

use crate::config::{self, store::StoreSettings};
use crate::store::redis_store::RedisStore;
use crate::store::sled_store::SledStore;
use crate::store::{Store, copy_all};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Destination {
    /// From `data_dir/store` into the Redis of `[store]`.
    Redis,
    /// From the Redis of `[store]` into `data_dir/store`.
    Sled,
}

pub(super) fn migrate(path: &Path, to: Destination) -> ExitCode {
    match config::load(path).map_err(|e| e.to_string()).and_then(|config| run(&config, to)) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &config::Config, to: Destination) -> Result<String, String> {
    let StoreSettings::Redis(redis) = &config.store else {
        return Err(format!(
            "{} has no Redis store to copy to or from. Fix: add [store] with backend = \"redis\" and its url first (the embedded store stays in {} either way)",
            config.source.display(),
            config.data_dir.join("store").display()
        ));
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let sled_path = config.data_dir.join("store");
        if to == Destination::Sled {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
        }
        let sled = SledStore::open(&sled_path).map_err(|e| match e {
            crate::store::StoreError::Locked { .. } => format!("{e}\nStop the proxy before copying its store."),
            other => other.to_string(),
        })?;
        let redis_store = RedisStore::open(redis).await.map_err(|e| e.to_string())?;
        let (from, into, from_name, to_name): (&dyn Store, &dyn Store, String, String) = match to {
            Destination::Redis => (&sled, &redis_store, sled_path.display().to_string(), redis.url.clone()),
            Destination::Sled => (&redis_store, &sled, redis.url.clone(), sled_path.display().to_string()),
        };
        let copied = copy_all(from, into).await.map_err(|e| e.to_string())?;
        let counts: Vec<String> = copied.iter().map(|(space, n)| format!("{n} {}", space.name())).collect();
        Ok(format!("copied {} from {from_name} to {to_name}", counts.join(", ")))
    })
}
