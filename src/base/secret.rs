//! Secret material: a wrapper that never prints, and key files that are created private.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes that must not appear in logs or `Debug` output, and are wiped when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS RNG failing is not something a security proxy can carry on from.
    getrandom::fill(&mut bytes).expect("the operating system random number generator failed");
    bytes
}

/// 256 random bits as 43 base64url characters: session ids and CSRF tokens.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// The shortest key we accept for HMAC-SHA256 (RFC 7518 §3.2: at least the hash output size).
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create key file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error(
        "key file {path} holds {len} bytes; it needs at least {MIN_KEY_BYTES}. Delete it to have a new one generated, or write a longer random string into it"
    )]
    TooShort { path: PathBuf, len: usize },
    #[error("key file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Loads a key file, or creates it (mode 0600) with 64 random bytes, base64url-encoded, when it
/// does not exist yet.
///
/// The key is the file's text with surrounding whitespace trimmed, used as raw bytes. That keeps
/// the file easy to hand to an upstream that verifies our assertions: it reads the same text.
pub fn load_or_create_key(path: &Path) -> Result<Secret, KeyFileError> {
    match fs::read(path) {
        Ok(contents) => {
            let mode = fs::metadata(path)
                .map_err(|source| KeyFileError::Read { path: path.into(), source })?
                .permissions()
                .mode();
            // Owner read/write, and at most read for the group (so an upstream running as another
            // user in that group can verify assertions). Nothing for anyone else.
            if mode & 0o037 != 0 {
                return Err(KeyFileError::TooOpen { path: path.into(), mode: mode & 0o777 });
            }
            let text = String::from_utf8_lossy(&contents);
            let key = text.trim().as_bytes().to_vec();
            if key.len() < MIN_KEY_BYTES {
                return Err(KeyFileError::TooShort { path: path.into(), len: key.len() });
            }
            Ok(Secret::new(key))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let encoded = URL_SAFE_NO_PAD.encode(random_bytes::<64>());
            write_private_file(path, format!("{encoded}\n").as_bytes())
                .map_err(|source| KeyFileError::Create { path: path.into(), source })?;
            Ok(Secret::new(encoded.into_bytes()))
        }
        Err(source) => Err(KeyFileError::Read { path: path.into(), source }),
    }
}

/// Writes a file atomically (write to a sibling, then rename), so a crash never leaves a
/// half-written key or users file behind. A new file gets mode 0600. A file being replaced keeps
/// its mode and, when we are allowed to set it, its owner and group: an operator running the CLI
/// as root must not leave behind a users file the proxy's own account can no longer read.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let existing = fs::metadata(path).ok();
    // The owner's and group's bits are kept (an operator may share the file with a group on
    // purpose); everyone else's never: these files hold password hashes and keys.
    let mode = existing.as_ref().map_or(0o600, |m| m.permissions().mode() & 0o770);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(m) = &existing
            && let Err(e) = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))
            && e.kind() != std::io::ErrorKind::PermissionDenied
        {
            return Err(e);
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What [`secure_private_dir`] did, for the log.
#[derive(Debug, Default)]
pub struct PrivateDir {
    /// Files and folders whose modes were tightened.
    pub tightened: Vec<std::path::PathBuf>,
    /// Symbolic links inside, not followed (they may point anywhere): whatever they point to was
    /// not made private.
    pub links: Vec<std::path::PathBuf>,
}

/// Makes `dir` private to the user the proxy runs as, since it holds sessions, factors, keys
/// and (with the file mail transport) sign-in codes and recovery links: created 0700 when
/// missing; when it exists, it and everything below it are tightened (directories to 0700, files
/// lose every group and other bit). `dir` itself may be a symbolic link (the operator chose
/// where it points), and its target is what is tightened; links inside are not followed, only
/// reported. Fails (with the fix) when a mode cannot be changed, e.g. on a folder owned by
/// someone else.
pub fn secure_private_dir(dir: &Path) -> std::io::Result<PrivateDir> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        return Ok(PrivateDir::default());
    }
    let dir = &fs::canonicalize(dir)?;
    let mut done = PrivateDir::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        let private = if meta.is_dir() { 0o700 } else { mode & 0o700 };
        if meta.file_type().is_symlink() {
            done.links.push(path);
            continue;
        }
        if mode != private && (meta.is_dir() || mode & 0o077 != 0) {
            fs::set_permissions(&path, fs::Permissions::from_mode(private)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot make {} private ({e}). Fix: run Portcullis as the folder's owner, or `chmod -R go-rwx {}`",
                        path.display(),
                        dir.display()
                    ),
                )
            })?;
            done.tightened.push(path.clone());
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(done)
}

/// The mode of `path` if every local user may read it.
pub fn readable_by_others(path: &Path) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_folder_is_made_private_with_everything_in_it() {
        let parent = tempfile::tempdir().unwrap();
        let fresh = parent.path().join("fresh/data");
        assert!(secure_private_dir(&fresh).unwrap().tightened.is_empty());
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);

        let old = parent.path().join("old");
        fs::create_dir_all(old.join("mail")).unwrap();
        fs::write(old.join("mail/code.eml"), "Your code is 123456").unwrap();
        fs::write(old.join("secrets.key"), "k").unwrap();
        for (path, mode) in [(&old, 0o755), (&old.join("mail"), 0o755)] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::set_permissions(old.join("mail/code.eml"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(old.join("secrets.key"), fs::Permissions::from_mode(0o600)).unwrap();
        let tightened = secure_private_dir(&old).unwrap().tightened;
        assert_eq!(tightened.len(), 3, "{tightened:?}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("mail")), 0o700);
        assert_eq!(mode(&old.join("mail/code.eml")), 0o600);
        assert_eq!(mode(&old.join("secrets.key")), 0o600);
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let secret = Secret::new(b"hunter2-hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn key_file_is_created_private_and_read_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let created = load_or_create_key(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load_or_create_key(&path).unwrap();
        assert_eq!(created.expose(), loaded.expose());
        assert!(loaded.expose().len() >= MIN_KEY_BYTES);
    }

    #[test]
    fn short_or_world_readable_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.key");
        write_private_file(&path, b"too short").unwrap();
        assert!(matches!(load_or_create_key(&path), Err(KeyFileError::TooShort { .. })));

        let open = dir.path().join("open.key");
        fs::write(&open, "x".repeat(64)).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_or_create_key(&open), Err(KeyFileError::TooOpen { .. })));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o660)).unwrap();
        assert!(matches!(load_or_create_key(&open), Err(KeyFileError::TooOpen { .. })));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load_or_create_key(&open).is_ok(), "group-readable, for a verifying upstream, is allowed");
    }

    #[test]
    fn rewriting_a_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        write_private_file(&path, b"one").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_private_file(&path, b"two").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // ...but never what it gave every local user.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(readable_by_others(&path), Some(0o644));
        write_private_file(&path, b"three").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(readable_by_others(&path), None);
    }

    #[test]
    fn a_symlinked_data_folder_is_made_private_where_it_points_and_links_inside_are_reported() {
        let parent = tempfile::tempdir().unwrap();
        let real = parent.path().join("real");
        let shared = parent.path().join("shared");
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(&shared).unwrap();
        fs::write(real.join("old.eml"), "Your code is 123456").unwrap();
        fs::write(shared.join("other.eml"), "Your code is 654321").unwrap();
        for path in [&real, &shared] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(real.join("old.eml"), fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&shared, real.join("mail")).unwrap();
        let data = parent.path().join("data");
        std::os::unix::fs::symlink(&real, &data).unwrap();

        let done = secure_private_dir(&data).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&real), 0o700, "the folder data_dir points to");
        assert_eq!(mode(&real.join("old.eml")), 0o600);
        assert_eq!(done.links, vec![fs::canonicalize(&real).unwrap().join("mail")], "reported, not followed");
        assert_eq!(mode(&shared), 0o755, "what a link inside points to is left alone");
    }
}
