//! Local accounts: the users file, and the in-memory directory the proxy answers from.
//!
//! The file is TOML that operators may edit by hand or through `portcullis user ...`:
//!
//! ```toml
//! [users.alice]
//! display_name = "Alice Liddell"
//! email = "alice@example.com"
//! groups = ["staff"]
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! ```
//!
//! The proxy polls the file's metadata and swaps in a new directory when it changes. A file that
//! no longer parses is refused (logged, old directory kept): a typo must not lock everybody out or,
//! worse, let anybody in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::base::secret::write_private_file;
use crate::domain::password::hashing as password;

/// A user name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit. Lower case only, so
/// "Alice" and "alice" can never be two accounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub fn parse(text: &str) -> Result<Self, UsersError> {
        let ok = (1..=64).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && text.as_bytes()[0].is_ascii_alphanumeric();
        if ok { Ok(Self(text.to_string())) } else { Err(UsersError::BadName(text.to_string())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone)]
pub struct User {
    pub name: Username,
    pub display_name: String,
    pub email: String,
    pub groups: Vec<String>,
    pub password_hash: String,
    /// Changes whenever the password does. Sessions remember the value they were created under,
    /// so setting a new password signs out every existing session.
    pub credential_stamp: [u8; 16],
    /// What the account's second factors are stored under: `~` and the entry's `id`, or, for an
    /// entry from before ids, its name (no user name can begin with `~`).
    pub account_key: String,
}

impl User {
    /// A short tag of the current password (of its stamp, itself a digest of the salted hash),
    /// for things that must stop working when the password changes: known-browser cookies and
    /// remembered browsers. It reveals nothing about the password.
    pub fn password_tag(&self) -> String {
        crate::base::text::hex(&self.credential_stamp[..8])
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("email", &self.email)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

pub fn credential_stamp(password_hash: &str) -> [u8; 16] {
    let digest = Sha256::digest(password_hash.as_bytes());
    digest[..16].try_into().expect("SHA-256 is 32 bytes")
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {problems}", problems = problems.join("; "))]
    Invalid { path: PathBuf, problems: Vec<String> },
    #[error("{0:?} is not a valid user name: use 1 to 64 lower-case letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("{0:?} is not a plausible email address")]
    BadEmail(String),
    #[error("{0:?} is not a valid group name: use letters, digits, '.', '_' or '-'")]
    BadGroup(String),
    #[error("{0:?} is not a valid account id: use 8 to 64 letters, digits, '_' or '-' (or leave it out)")]
    BadId(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no user named {0}")]
    NotFound(String),
    #[error(transparent)]
    Hash(#[from] password::HashError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsersFile {
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    /// A random id `user add` writes, so that a new account that happens to get a removed
    /// account's name never inherits its second factors. Entries written before ids existed
    /// have none; their records stay under their name.
    id: Option<String>,
    display_name: Option<String>,
    email: String,
    #[serde(default)]
    groups: Vec<String>,
    password_hash: String,
}

pub fn check_email(email: &str) -> Result<(), UsersError> {
    let plausible = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if plausible { Ok(()) } else { Err(UsersError::BadEmail(email.into())) }
}

fn check_id(id: &str) -> Result<(), UsersError> {
    let ok = (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if ok { Ok(()) } else { Err(UsersError::BadId(id.into())) }
}

/// A new account id: 128 random bits.
pub fn new_account_id() -> String {
    crate::base::text::hex(&crate::base::secret::random_bytes::<16>())
}

fn check_group(group: &str) -> Result<(), UsersError> {
    let ok = (1..=64).contains(&group.len()) && group.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(UsersError::BadGroup(group.into())) }
}

/// Parses and checks a whole users file; every problem is listed.
pub fn parse(text: &str, path: &Path) -> Result<HashMap<String, Arc<User>>, UsersError> {
    let raw: RawUsersFile =
        toml::from_str(text).map_err(|e| UsersError::Syntax { path: path.into(), message: e.to_string() })?;
    let mut users = HashMap::new();
    let mut problems = Vec::new();
    for (name, raw) in raw.users {
        let checks = [
            Username::parse(&name).map(|_| ()),
            check_email(&raw.email),
            raw.groups.iter().try_for_each(|g| check_group(g)),
            raw.id.as_deref().map_or(Ok(()), check_id),
        ];
        for err in checks.into_iter().filter_map(Result::err) {
            problems.push(format!("users.{name}: {err}"));
        }
        if !password::is_valid_hash(&raw.password_hash) {
            problems.push(format!(
                "users.{name}.password_hash: not a password hash; set it with `portcullis user passwd {name}`"
            ));
        }
        let Ok(username) = Username::parse(&name) else { continue };
        let account_key = raw.id.as_ref().map_or_else(|| name.clone(), |id| format!("~{id}"));
        users.insert(
            name.clone(),
            Arc::new(User {
                account_key,
                display_name: raw.display_name.unwrap_or_else(|| name.clone()),
                credential_stamp: credential_stamp(&raw.password_hash),
                name: username,
                email: raw.email,
                groups: raw.groups,
                password_hash: raw.password_hash,
            }),
        );
    }
    // An id names one account: factors, keys and sessions are stored under it, and a passkey
    // finds its account by it. Two users sharing one would share all of that.
    let mut owners: HashMap<&str, Vec<&str>> = HashMap::new();
    for user in users.values() {
        owners.entry(user.account_key.as_str()).or_default().push(user.name.as_str());
    }
    let mut shared: Vec<String> = owners
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(key, mut names)| {
            names.sort();
            format!(
                "users {}: the same id {:?}; every user needs an id of their own (remove the line from all but one, and `portcullis user add` makes new ones)",
                names.join(" and "),
                key.trim_start_matches('~')
            )
        })
        .collect();
    shared.sort();
    problems.extend(shared);
    if problems.is_empty() { Ok(users) } else { Err(UsersError::Invalid { path: path.into(), problems }) }
}

/// Reads the users file; a missing file is an empty directory (nobody can log in yet).
pub fn read(path: &Path) -> Result<HashMap<String, Arc<User>>, UsersError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(source) => Err(UsersError::Read { path: path.into(), source }),
    }
}

/// Enough of a file's metadata to notice it was replaced or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Option<(SystemTime, u64, u64)>);

pub fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    FileStamp(std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))))
}

/// The accounts the proxy knows, readable without locks from every request.
pub struct UserDirectory {
    path: PathBuf,
    users: ArcSwap<HashMap<String, Arc<User>>>,
    seen: Mutex<FileStamp>,
    /// Accounts a directory (`[login.ldap]`) vouched for since start-up, as of their last sign-in:
    /// what their sessions are resolved against. Memory only: after a restart they sign in again.
    from_directory: dashmap::DashMap<String, Arc<User>>,
}

impl UserDirectory {
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let seen = stamp(path);
        let users = read(path)?;
        Ok(Self {
            path: path.into(),
            users: ArcSwap::from_pointee(users),
            seen: Mutex::new(seen),
            from_directory: Default::default(),
        })
    }

    /// The account called `name`: the users file's, else one a directory vouched for. A name in
    /// the users file is always that local account.
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users.load().get(name).cloned().or_else(|| self.from_directory.get(name).map(|u| u.value().clone()))
    }

    /// The users file's account called `name` (whose password the proxy checks itself).
    pub fn get_local(&self, name: &str) -> Option<Arc<User>> {
        self.users.load().get(name).cloned()
    }

    /// Remembers (or refreshes) an account a directory just vouched for.
    pub fn remember_from_directory(&self, user: Arc<User>) {
        self.from_directory.insert(user.name.as_str().to_string(), user);
    }

    /// The accounts an LDAP directory vouched for (not those made for OpenID identities).
    pub fn from_ldap(&self) -> Vec<Arc<User>> {
        self.from_directory.iter().filter(|u| u.account_key.starts_with("ldap:")).map(|u| u.value().clone()).collect()
    }

    /// Forgets an account a directory no longer has (its sessions then resolve to no one).
    pub fn forget_from_directory(&self, name: &str) {
        self.from_directory.remove(name);
    }

    /// Whether `user` came from a directory (its password is not the proxy's to change).
    pub fn is_from_directory(&self, user: &User) -> bool {
        self.get_local(user.name.as_str()).is_none() && self.from_directory.contains_key(user.name.as_str())
    }

    /// The user whose [`User::account_key`] is `account_key` (a scan: only for sign-ins that name
    /// the account by what was stored for it, such as a passkey's credential).
    pub fn by_account_key(&self, account_key: &str) -> Option<Arc<User>> {
        self.users
            .load()
            .values()
            .find(|user| user.account_key == account_key)
            .cloned()
            .or_else(|| self.from_directory.iter().find(|u| u.account_key == account_key).map(|u| u.value().clone()))
    }

    /// Every account, in no particular order (directory accounts seen since start-up included).
    pub fn all(&self) -> Vec<Arc<User>> {
        let local = self.users.load();
        let mut all: Vec<Arc<User>> = local.values().cloned().collect();
        all.extend(self.from_directory.iter().filter(|u| !local.contains_key(u.key())).map(|u| u.value().clone()));
        all
    }

    pub fn len(&self) -> usize {
        self.users.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the file whatever its metadata says (SIGHUP). On error the running list stays.
    pub fn reload(&self) -> Result<(), UsersError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&self.path);
        let users = read(&self.path)?;
        self.users.store(Arc::new(users));
        Ok(())
    }

    /// Re-reads the file if its metadata changed. Returns whether a new directory was swapped in.
    pub fn reload_if_changed(&self) -> Result<bool, UsersError> {
        let now = stamp(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return Ok(false);
        }
        // Remember the stamp even when parsing fails, so a broken file is reported once, not
        // every poll; the next edit is noticed again.
        *seen = now;
        let users = read(&self.path)?;
        self.users.store(Arc::new(users));
        Ok(true)
    }

    /// Polls the file every `every` until the returned task is dropped or aborted.
    pub fn watch(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let this = self.clone();
                let result = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
                match result {
                    Ok(Ok(true)) => {
                        tracing::info!(users = self.len(), path = %self.path.display(), "users file reloaded")
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!("users file not reloaded, keeping the previous one: {e}"),
                    Err(e) => tracing::error!("users file watcher failed: {e}"),
                }
            }
        })
    }
}

/// Edits of the users file for the CLI. They go through `toml_edit` so the operator's comments
/// and layout survive, and are written atomically with mode 0600 (the file holds hashes).
pub mod edit {
    use super::*;
    use toml_edit::{DocumentMut, Item, Table, value};

    const HEADER: &str = "# Portcullis accounts. Manage with `portcullis user add|passwd|remove|list`,\n\
                          # or edit by hand: the proxy reloads this file when it changes.\n";

    fn open(path: &Path) -> Result<DocumentMut, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HEADER.to_string(),
            Err(source) => return Err(UsersError::Read { path: path.into(), source }),
        };
        // Refuse to edit a file the proxy itself would refuse.
        parse(&text, path)?;
        text.parse().map_err(|e: toml_edit::TomlError| UsersError::Syntax { path: path.into(), message: e.to_string() })
    }

    fn save(path: &Path, doc: &DocumentMut) -> Result<(), UsersError> {
        write_private_file(path, doc.to_string().as_bytes())
            .map_err(|source| UsersError::Write { path: path.into(), source })
    }

    fn users_table(doc: &mut DocumentMut) -> &mut Table {
        let users = doc.entry("users").or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        users.as_table_mut().expect("checked by parse() before editing")
    }

    pub struct NewUser<'a> {
        pub name: &'a str,
        pub display_name: Option<&'a str>,
        pub email: &'a str,
        pub groups: &'a [String],
        pub password_hash: &'a str,
    }

    pub fn add(path: &Path, user: NewUser<'_>) -> Result<(), UsersError> {
        Username::parse(user.name)?;
        check_email(user.email)?;
        user.groups.iter().try_for_each(|g| check_group(g))?;
        let mut doc = open(path)?;
        let users = users_table(&mut doc);
        if users.contains_key(user.name) {
            return Err(UsersError::Exists(user.name.into()));
        }
        let mut entry = Table::new();
        entry.insert("id", value(new_account_id()));
        entry.insert("display_name", value(user.display_name.unwrap_or(user.name)));
        entry.insert("email", value(user.email));
        entry.insert("groups", value(user.groups.iter().map(String::as_str).collect::<toml_edit::Array>()));
        entry.insert("password_hash", value(user.password_hash));
        users.insert(user.name, Item::Table(entry));
        save(path, &doc)
    }

    pub fn set_password_hash(path: &Path, name: &str, password_hash: &str) -> Result<(), UsersError> {
        let mut doc = open(path)?;
        let entry = users_table(&mut doc)
            .get_mut(name)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| UsersError::NotFound(name.into()))?;
        entry.insert("password_hash", value(password_hash));
        save(path, &doc)
    }

    pub fn remove(path: &Path, name: &str) -> Result<(), UsersError> {
        let mut doc = open(path)?;
        users_table(&mut doc).remove(name).ok_or_else(|| UsersError::NotFound(name.into()))?;
        save(path, &doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_lower_case_and_plain() {
        for good in ["alice", "bob.smith", "x", "a-1_b"] {
            assert!(Username::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Alice", "-bob", "a b", "ali\u{0441}e", &"a".repeat(65), "root@host"] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn edits_keep_comments_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let hash = password::hash(b"pw").unwrap();
        edit::add(
            &path,
            edit::NewUser {
                name: "alice",
                display_name: None,
                email: "a@example.com",
                groups: &["staff".into()],
                password_hash: &hash,
            },
        )
        .unwrap();
        let with_comment = format!("# kept by hand\n{}", std::fs::read_to_string(&path).unwrap());
        std::fs::write(&path, with_comment).unwrap();
        edit::add(
            &path,
            edit::NewUser {
                name: "bob",
                display_name: Some("Bob"),
                email: "b@example.com",
                groups: &[],
                password_hash: &hash,
            },
        )
        .unwrap();
        assert!(matches!(
            edit::add(
                &path,
                edit::NewUser {
                    name: "bob",
                    display_name: None,
                    email: "b@example.com",
                    groups: &[],
                    password_hash: &hash
                }
            ),
            Err(UsersError::Exists(_))
        ));
        edit::remove(&path, "bob").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# kept by hand"));
        let users = read(&path).unwrap();
        assert_eq!(users.keys().collect::<Vec<_>>(), vec!["alice"]);
        assert_eq!(users["alice"].display_name, "alice");
    }

    #[test]
    fn two_users_sharing_an_id_are_refused() {
        let hash = password::hash(b"pw").unwrap();
        let entry = |name: &str| {
            format!("[users.{name}]\nemail = \"{name}@example.com\"\npassword_hash = {hash:?}\nid = \"shared-id-1\"\n")
        };
        let text = format!("{}{}", entry("carol"), entry("dave"));
        let Err(UsersError::Invalid { problems, .. }) = parse(&text, Path::new("users.toml")) else {
            panic!("a shared id must be refused");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("carol and dave") && problems[0].contains("shared-id-1"), "{problems:?}");
    }

    #[test]
    fn a_broken_entry_rejects_the_whole_file_with_every_problem() {
        let text = "[users.Alice]\nemail = \"nope\"\npassword_hash = \"plain\"\n";
        let Err(UsersError::Invalid { problems, .. }) = parse(text, Path::new("users.toml")) else {
            panic!("expected problems");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn directory_notices_a_rewrite_and_keeps_the_old_copy_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let directory = UserDirectory::load(&path).unwrap();
        assert!(directory.is_empty());
        let hash = password::hash(b"pw").unwrap();
        edit::add(
            &path,
            edit::NewUser {
                name: "carol",
                display_name: None,
                email: "c@example.com",
                groups: &[],
                password_hash: &hash,
            },
        )
        .unwrap();
        assert!(directory.reload_if_changed().unwrap());
        assert!(directory.get("carol").is_some());
        std::fs::write(&path, "this is [not toml").unwrap();
        assert!(directory.reload_if_changed().is_err());
        assert!(directory.get("carol").is_some(), "a broken file must not empty the directory");
    }
}
