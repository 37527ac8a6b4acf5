//! `portcullis identity ...`: the keys that sign identity assertions.
//!
//! `rotate` asks the running proxy over the control socket (it swaps its signer and writes the
//! key file); with no proxy running it rotates the file itself, as the admin commands work on the
//! store when the proxy is stopped. `public-key` only reads the key file, so it works either way.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::base::clock::{Clock, SystemClock};
use crate::config::{self, Config};
use crate::domain::identity::keys::{self, KeyError, KeySet, Rotation};
use crate::domain::identity::{self, IdentityError, jwks};
use crate::domain::operator::{Reply, Request};

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Rotate the signing keys: the published next key starts signing, a new next key is made,
    /// and the old key stays published until every assertion it signed has expired.
    Rotate,
    /// Print the public keys, for upstreams that cannot fetch /.portcullis/jwks.json: the JWK Set
    /// (default), or with --pem the current and next keys as SPKI PEM.
    PublicKey {
        #[arg(long)]
        pem: bool,
    },
}

pub fn run(path: &Path, action: IdentityCommand) -> ExitCode {
    let outcome = config::load(path).map_err(|e| e.to_string()).and_then(|config| {
        if !config.identity.algorithm.is_asymmetric() {
            return Err(IdentityError::SharedSecret.to_string());
        }
        match action {
            IdentityCommand::Rotate => rotate(&config),
            IdentityCommand::PublicKey { pem } => public_key(&config, pem),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refused: {e}");
            ExitCode::FAILURE
        }
    }
}

fn rotate(config: &Config) -> Result<(), String> {
    match crate::server::control::call(&config.data_dir, &Request::RotateIdentityKey).map_err(|e| e.to_string())? {
        Some(Reply::IdentityKeyRotated { rotation }) => {
            print_rotation(&rotation, "the running proxy signs with it now");
            Ok(())
        }
        Some(Reply::Refused { reason }) => Err(reason),
        Some(other) => Err(format!("the proxy answered something unexpected: {other:?}")),
        None => {
            // No proxy runs on this data_dir: the file is ours to change.
            crate::base::secret::secure_private_dir(&config.data_dir)
                .map_err(|e| format!("cannot prepare data_dir {}: {e}", config.data_dir.display()))?;
            let now = SystemClock.now();
            let keep_for = identity::keep_retired_for(&config.identity);
            let rotation = keys::rotate_file(&config.identity.key_file, config.identity.algorithm, now, keep_for)
                .map_err(|e| e.to_string())?;
            print_rotation(&rotation, "no proxy is running; it signs with it from its next start");
            Ok(())
        }
    }
}

fn print_rotation(rotation: &Rotation, how: &str) {
    println!("identity key rotated; {how}");
    println!("  current: {}", rotation.current);
    println!("  next:    {} (published now, signs after the next rotation)", rotation.next);
    println!(
        "  retired: {} (published until {}, when every assertion it signed has expired)",
        rotation.retired,
        crate::base::text::format_utc(rotation.retired_until)
    );
    for kid in &rotation.dropped {
        println!("  dropped: {kid}");
    }
}

fn public_key(config: &Config, pem: bool) -> Result<(), String> {
    let path = &config.identity.key_file;
    let set = KeySet::load(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| KeyError::Missing { path: path.clone() }.to_string())?;
    if pem {
        // Text before BEGIN is explanatory and skipped by PEM readers (RFC 7468 §5.2).
        for (key, role) in [(set.current(), "current"), (set.next(), "next")] {
            println!("{role} key, {} (kid {})", key.alg, key.kid);
            print!("{}", jwks::spki_pem(&key.spki_der));
        }
    } else {
        let keep_for = identity::keep_retired_for(&config.identity);
        println!("{}", jwks::document(&set.published(keep_for), SystemClock.now()));
    }
    Ok(())
}
