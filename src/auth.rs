//! API tokens: created once (the secret is shown once and only its SHA-256 is stored), checked
//! in constant time, revoked by name.
//!
//! Each token has scopes ([`Scope`]): a set of `read`, `deploy`, `verify`, `approve`,
//! `admin`. `ferry serve` makes an `admin` token called `local` at every start and writes its
//! secret to `<state_dir>/local-token` (mode 0600) for the CLI on the same machine; the
//! previous `local` token is revoked then.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::store::Scope;
use crate::store::{Store, StoreError, Token};

/// The name of the token `serve` makes for the CLI on its machine.
pub const LOCAL: &str = "local";
/// The file in the state dir holding the local token's secret.
pub const LOCAL_FILE: &str = "local-token";
const PREFIX: &str = "ferry_";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token name \"{0}\" is not allowed: use 1 to 40 lowercase letters, digits, '-' or '_'")]
    BadName(String),
    #[error("\"local\" is the token `ferry serve` makes for this machine; choose another name")]
    Reserved,
    #[error("a token called \"{0}\" exists already; revoke it first or choose another name")]
    Exists(String),
    #[error("no live token is called \"{0}\"")]
    Unknown(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(StoreError),
    #[error("cannot read random bytes: {0}")]
    Random(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e)
    }
}

/// A new secret: `prefix` and 40 hex digits (160 random bits).
fn generate(prefix: &str) -> Result<String, AuthError> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Creates a token called `name` with `scopes`; returns it with its secret, which is not kept.
pub fn create(store: &Store, name: &str, scopes: &[Scope]) -> Result<(Token, String), AuthError> {
    if !valid_name(name) {
        return Err(AuthError::BadName(name.to_string()));
    }
    if name == LOCAL {
        return Err(AuthError::Reserved);
    }
    insert(store, name, scopes)
}

fn insert(store: &Store, name: &str, scopes: &[Scope]) -> Result<(Token, String), AuthError> {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        scopes.push(Scope::Read);
    }
    let secret = generate(PREFIX)?;
    match store.add_token(name, &hex::encode(hash(&secret)), &scopes) {
        Ok(token) => Ok((token, secret)),
        Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(AuthError::Exists(name.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn revoke(store: &Store, name: &str) -> Result<(), AuthError> {
    store.revoke_token(name).map_err(|e| match e {
        StoreError::NotFound => AuthError::Unknown(name.to_string()),
        e => AuthError::Store(e),
    })
}

/// The live token whose secret is `presented`, if any. Every live token's hash is compared,
/// each in constant time, so the answer's timing says nothing about which bytes matched.
pub fn check(store: &Store, presented: &str) -> Result<Option<Token>, StoreError> {
    let wanted = hash(presented);
    let mut found = None;
    for (token, stored) in store.live_token_hashes()? {
        let Ok(stored) = hex::decode(stored) else {
            continue;
        };
        if bool::from(stored.as_slice().ct_eq(&wanted)) {
            found = Some(token);
        }
    }
    // when it was last used is a nicety: a full disk must not lock everyone out
    if let Some(t) = &found
        && let Err(e) = store.token_used(t.id)
    {
        tracing::warn!(token = %t.name, error = %e, "cannot record the token's use");
    }
    Ok(found)
}

/// How long a dashboard session lasts.
pub const SESSION_HOURS: i64 = 12;

/// The session cookie's name over plain HTTP.
pub const SESSION_COOKIE: &str = "ferry_session";
/// The session cookie's name when the dashboard is served over TLS: browsers take a
/// `__Host-` cookie only with `Secure`, `Path=/` and no `Domain`, so neither plain HTTP nor
/// another host can set or overwrite it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-ferry_session";
/// Every cookie ferry sets. Cookies ignore ports, so a browser sends them to every
/// environment's proxy on ferry's host too: the proxy strips these from what it forwards.
pub const COOKIES: &[&str] = &[SESSION_COOKIE, SECURE_SESSION_COOKIE];

/// How the session cookie is written: `secure` (the dashboard is served over TLS) gives it
/// the `__Host-` name and the `Secure` attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCookie {
    pub secure: bool,
}

impl SessionCookie {
    pub fn name(self) -> &'static str {
        if self.secure {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// The `Set-Cookie` value that opens a session holding `secret`.
    pub fn set(self, secret: &str) -> String {
        self.with_value(secret, SESSION_HOURS * 3600)
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear(self) -> String {
        self.with_value("", 0)
    }

    fn with_value(self, value: &str, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}",
            self.name()
        )
    }

    /// This cookie's value among the `Cookie` header values of a request.
    pub fn find<'a>(self, cookie_headers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        cookie_headers
            .into_iter()
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.name())
            .map(|(_, value)| value)
    }
}
const SESSION_PREFIX: &str = "ferrysession_";

/// A signed-in dashboard session: the token it was opened with, and the CSRF token every form
/// of the session carries. The CSRF token is derived from the session's secret (which only the
/// `HttpOnly` cookie holds), so it needs no storage and is worthless without the cookie.
pub struct Session {
    pub token: Token,
    pub csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &self.token.name)
            .field("csrf", &"<redacted>")
            .finish()
    }
}

impl Session {
    /// True when `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

fn csrf_for(session_secret: &str) -> String {
    hex::encode(&hash(&format!("csrf:{session_secret}"))[..16])
}

/// Signs in with an API token's secret: the new session's secret (for the cookie), or `None`
/// when the token is unknown or revoked. Only the secret's SHA-256 is stored.
pub fn sign_in(store: &Store, presented: &str) -> Result<Option<String>, AuthError> {
    let Some(token) = check(store, presented.trim())? else {
        return Ok(None);
    };
    let secret = generate(SESSION_PREFIX)?;
    let expires = (chrono::Utc::now() + chrono::TimeDelta::hours(SESSION_HOURS))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    store.add_session(&hex::encode(hash(&secret)), token.id, &expires)?;
    Ok(Some(secret))
}

/// [`sign_in`] to several apps' stores at once (a serve of several apps): one session
/// secret, opened in each store whose tokens include the presented one; `None` when none
/// does.
pub fn sign_in_many(stores: &[Store], presented: &str) -> Result<Option<String>, AuthError> {
    let secret = generate(SESSION_PREFIX)?;
    let expires = (chrono::Utc::now() + chrono::TimeDelta::hours(SESSION_HOURS))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut opened = false;
    for store in stores {
        if let Some(token) = check(store, presented.trim())? {
            store.add_session(&hex::encode(hash(&secret)), token.id, &expires)?;
            opened = true;
        }
    }
    Ok(opened.then_some(secret))
}

/// The live session whose cookie holds `secret`.
pub fn session(store: &Store, secret: &str) -> Result<Option<Session>, StoreError> {
    if !secret.starts_with(SESSION_PREFIX) {
        return Ok(None);
    }
    Ok(store
        .session_token(&hex::encode(hash(secret)))?
        .map(|token| Session {
            token,
            csrf: csrf_for(secret),
        }))
}

/// Ends the session whose cookie holds `secret`.
pub fn sign_out(store: &Store, secret: &str) -> Result<(), StoreError> {
    store.end_session(&hex::encode(hash(secret)))
}

/// Replaces the `local` token and writes its secret to `<state_dir>/local-token`, mode 0600,
/// through a temp file and a rename so a reader never sees half a token.
pub fn write_local(store: &Store, state_dir: &Path) -> Result<PathBuf, AuthError> {
    write_local_for(&[store], state_dir)
}

/// [`write_local`] for a serve of several apps: one secret, registered as the `local` token
/// in every app's store, written once to `<state_dir>/local-token`.
pub fn write_local_for(stores: &[&Store], state_dir: &Path) -> Result<PathBuf, AuthError> {
    let secret = generate(PREFIX)?;
    for store in stores {
        match revoke(store, LOCAL) {
            Ok(()) | Err(AuthError::Unknown(_)) => {}
            Err(e) => return Err(e),
        }
        store.forget_revoked_tokens(LOCAL)?;
        store.add_token(LOCAL, &hex::encode(hash(&secret)), &[Scope::Admin])?;
    }
    let path = state_dir.join(LOCAL_FILE);
    let tmp = state_dir.join(format!(".{LOCAL_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // the rename itself is durable once the directory is synced
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|source| AuthError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The token the CLI sends: `FERRY_TOKEN`, else the local token file, else none.
pub fn cli_token(state_dir: Option<&Path>) -> Option<String> {
    if let Ok(t) = std::env::var("FERRY_TOKEN")
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_string());
    }
    std::fs::read_to_string(state_dir?.join(LOCAL_FILE))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn the_session_cookie_gets_secure_and_a_host_prefix_over_tls() {
        let plain = SessionCookie { secure: false };
        assert_eq!(
            plain.set("s3"),
            "ferry_session=s3; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200"
        );
        let tls = SessionCookie { secure: true };
        assert_eq!(
            tls.set("s3"),
            "__Host-ferry_session=s3; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200; Secure"
        );
        assert!(
            tls.clear().starts_with("__Host-ferry_session=; ") && tls.clear().contains("Max-Age=0")
        );
        let headers = ["a=1; ferry_session=p", "__Host-ferry_session=t"];
        assert_eq!(plain.find(headers), Some("p"));
        assert_eq!(tls.find(headers), Some("t"));
        // over TLS a plain-named cookie (which plain HTTP could have set) is not a session
        assert_eq!(tls.find(["ferry_session=p"]), None);
        assert!(COOKIES.contains(&plain.name()) && COOKIES.contains(&tls.name()));
    }

    #[test]
    fn a_session_is_opened_with_a_token_and_carries_its_own_csrf_token() {
        let (dir, store) = store();
        let (_, secret) = create(&store, "alice", &[Scope::Admin]).unwrap();
        assert!(sign_in(&store, "ferry_wrong").unwrap().is_none());
        let cookie = sign_in(&store, &format!(" {secret}\n")).unwrap().unwrap();
        let other = sign_in(&store, &secret).unwrap().unwrap();
        let s = session(&store, &cookie).unwrap().unwrap();
        assert_eq!(s.token.name, "alice");
        assert!(s.csrf_ok(&s.csrf));
        let o = session(&store, &other).unwrap().unwrap();
        assert!(!s.csrf_ok(&o.csrf), "each session has its own CSRF token");
        assert!(!s.csrf_ok(""));
        assert!(!format!("{s:?}").contains(&s.csrf));
        // the token's secret is not a session cookie, and nothing secret is stored
        assert!(session(&store, &secret).unwrap().is_none());
        let db = std::fs::read(dir.path().join("ferry.db")).unwrap();
        let wal = std::fs::read(dir.path().join("ferry.db-wal")).unwrap_or_default();
        for needle in [&cookie, &s.csrf] {
            let hay = [db.as_slice(), wal.as_slice()].concat();
            assert!(!hay.windows(needle.len()).any(|w| w == needle.as_bytes()));
        }
        sign_out(&store, &cookie).unwrap();
        assert!(session(&store, &cookie).unwrap().is_none());
        revoke(&store, "alice").unwrap();
        assert!(session(&store, &other).unwrap().is_none());
    }

    #[test]
    fn a_token_is_stored_hashed_checked_and_revoked() {
        let (dir, store) = store();
        let (token, secret) = create(&store, "ci", &[Scope::Deploy, Scope::Verify]).unwrap();
        assert!(secret.starts_with("ferry_") && secret.len() == 46);
        assert_eq!(check(&store, &secret).unwrap().unwrap().name, "ci");
        assert!(check(&store, "ferry_wrong").unwrap().is_none());
        // only the hash is in the database file
        drop(store);
        let bytes = std::fs::read(dir.path().join("ferry.db")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&secret));
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        assert!(store.tokens().unwrap()[0].last_used_at.is_some());
        assert!(matches!(
            create(&store, "ci", &[Scope::Read]),
            Err(AuthError::Exists(_))
        ));
        revoke(&store, "ci").unwrap();
        assert!(check(&store, &secret).unwrap().is_none());
        assert!(matches!(revoke(&store, "ci"), Err(AuthError::Unknown(_))));
        // the name is free again once revoked
        let (again, _) = create(&store, "ci", &[Scope::Read]).unwrap();
        assert!(again.read_only() && again.id != token.id);
        assert_eq!(token.scopes, [Scope::Deploy, Scope::Verify]);
        assert!(token.allows(Scope::Read) && token.allows(Scope::Verify));
        assert!(!token.allows(Scope::Approve) && !token.allows(Scope::Admin));
    }

    #[test]
    fn names_are_checked_and_local_is_reserved() {
        let (_dir, store) = store();
        for bad in ["", "CI", "a b", "../x", &"x".repeat(41)] {
            assert!(matches!(
                create(&store, bad, &[Scope::Admin]),
                Err(AuthError::BadName(_))
            ));
        }
        assert!(matches!(
            create(&store, LOCAL, &[Scope::Admin]),
            Err(AuthError::Reserved)
        ));
    }

    #[test]
    fn the_local_token_file_is_private_and_replaced_at_each_start() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = store();
        let path = write_local(&store, dir.path()).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(check(&store, &first).unwrap().unwrap().name, LOCAL);
        write_local(&store, dir.path()).unwrap();
        let second = std::fs::read_to_string(&path).unwrap();
        assert_ne!(first, second);
        assert!(check(&store, &first).unwrap().is_none());
        assert!(check(&store, &second).unwrap().is_some());
        // the replaced local tokens do not pile up in the list
        assert_eq!(store.tokens().unwrap().len(), 1);
    }
}
