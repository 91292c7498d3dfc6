//! Keys and the audit log in SQLite (WAL). Key material is encrypted at rest with AES-256-GCM under
//! a master key kept in a separate file (mode 0600), bound to the key's name as associated data.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Mutex;

use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use crate::group_commit::GroupCommit;
use crate::policy::ReleasePolicy;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Database failure.
    #[error("key store database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Master key file problem.
    #[error("master key {path}: {reason}")]
    MasterKey {
        /// Its path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Bad request from the admin (name, size, import).
    #[error("{0}")]
    Invalid(String),
    /// No such key.
    #[error("no key named '{0}'")]
    NotFound(String),
    /// The key exists already.
    #[error("a key named '{0}' exists already")]
    Exists(String),
    /// Stored ciphertext does not decrypt (wrong master key or tampering).
    #[error(
        "key '{0}' does not decrypt under the master key (wrong master key or tampered database)"
    )]
    Corrupt(String),
    /// Crypto backend failure.
    #[error("crypto: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    /// The audit row could not be written (its batch's transaction failed).
    #[error("audit log: {0}")]
    Audit(std::sync::Arc<StoreError>),
}

/// Key types, named as Key Vault names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `oct-HSM`: a 256-bit symmetric key.
    Oct,
    /// `RSA-HSM`: an RSA private key (2048 or 3072 bits).
    Rsa,
}

impl KeyKind {
    /// Key Vault's name.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Oct => "oct-HSM",
            KeyKind::Rsa => "RSA-HSM",
        }
    }

    /// Parse `oct-HSM`/`oct`/`RSA-HSM`/`RSA`.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "oct-HSM" | "oct" => Ok(KeyKind::Oct),
            "RSA-HSM" | "RSA" => Ok(KeyKind::Rsa),
            other => Err(StoreError::Invalid(format!(
                "key type '{other}' is not supported (oct-HSM, RSA-HSM)"
            ))),
        }
    }
}

/// Key metadata (never the material).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KeyInfo {
    /// Name.
    pub name: String,
    /// `oct-HSM` or `RSA-HSM`.
    pub kty: String,
    /// Bits.
    pub key_size: u32,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Release policy, if set.
    pub release_policy: Option<Value>,
}

/// One audit record.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// Unix seconds.
    pub time: u64,
    /// Key name.
    pub key: String,
    /// `release`, `create`, `delete`, `policy`.
    pub action: String,
    /// Outcome.
    pub allowed: bool,
    /// Token issuer, for releases.
    pub issuer: Option<String>,
    /// Why (denials) or what.
    pub reason: String,
}

/// Most bytes of a key name an audit row keeps (valid names are shorter).
pub const AUDIT_MAX_KEY: usize = 128;
/// Most bytes of an issuer an audit row keeps.
pub const AUDIT_MAX_ISSUER: usize = 256;
/// Most bytes of a reason an audit row keeps.
pub const AUDIT_MAX_REASON: usize = 1024;

/// Characters an audit row never holds raw: they could forge lines or reorder text in a viewer.
fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\\' || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` as an audit row keeps it: control and bidi characters escaped (`\u{1b}`, backslash as `\\`),
/// cut at a character boundary to at most `max` bytes and then marked `…[+N bytes]` (N: bytes of
/// `s` left out). Release requests are unauthenticated: what they carry is bounded and made
/// inert before it becomes durable. Borrowed when nothing changes (the usual case).
pub fn audit_text(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(max.min(s.len()) + 16);
    let mut kept = 0;
    for c in s.chars() {
        let before = out.len();
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            break;
        }
        kept += c.len_utf8();
    }
    if kept < s.len() {
        let _ = write!(out, "…[+{} bytes]", s.len() - kept);
    }
    Cow::Owned(out)
}

/// kty, nonce, ciphertext, release policy.
type StoredRow = (String, Vec<u8>, Vec<u8>, Option<String>);

/// The key store.
pub struct Store {
    /// Every write goes through this connection.
    conn: Mutex<Connection>,
    /// Reads (key material on release, listings) use their own connection: under WAL they need not
    /// wait while a write holds the writer for its fsync.
    reader: Mutex<Connection>,
    audit_queue: GroupCommit<AuditRow, std::sync::Arc<StoreError>>,
    master: [u8; 32],
}

/// An audit row on its way to the database.
struct AuditRow {
    time: u64,
    key: String,
    action: String,
    allowed: bool,
    issuer: Option<String>,
    reason: String,
}

fn load_or_create_master(path: &Path) -> Result<[u8; 32], StoreError> {
    let err = |reason: String| StoreError::MasterKey {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|b: Vec<u8>| err(format!("must be 32 bytes, is {}", b.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            openssl::rand::rand_bytes(&mut key)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(&key)
                .and_then(|_| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn valid_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 127
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(StoreError::Invalid(format!(
            "key name '{name}' must be 1-127 characters of A-Z, a-z, 0-9 and '-'"
        )));
    }
    Ok(())
}

impl Store {
    /// Open (creating) the database and the master key.
    pub fn open(db: &Path, master_key: &Path) -> Result<Self, StoreError> {
        let master = load_or_create_master(master_key)?;
        let conn = Connection::open(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an acknowledged write is on disk (WAL fsync) before the response leaves.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS keys (
                name TEXT PRIMARY KEY, kty TEXT NOT NULL, key_size INTEGER NOT NULL,
                nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, release_policy TEXT, created INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER NOT NULL, key TEXT NOT NULL,
                action TEXT NOT NULL, allowed INTEGER NOT NULL, issuer TEXT, reason TEXT NOT NULL);",
        )?;
        let reader = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            audit_queue: GroupCommit::new(),
            master,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions are
        // atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a key: generated (`material` None) or imported.
    pub fn create(
        &self,
        name: &str,
        kind: KeyKind,
        key_size: Option<u32>,
        material: Option<Vec<u8>>,
        policy: Option<&ReleasePolicy>,
        now: u64,
    ) -> Result<KeyInfo, StoreError> {
        valid_name(name)?;
        let (material, size) = match (kind, material) {
            (KeyKind::Oct, None) => {
                if key_size.is_some_and(|s| s != 256) {
                    return Err(StoreError::Invalid("oct-HSM keys are 256 bits".into()));
                }
                let mut k = vec![0u8; 32];
                openssl::rand::rand_bytes(&mut k)?;
                (k, 256)
            }
            (KeyKind::Oct, Some(k)) => {
                if k.len() != 32 {
                    return Err(StoreError::Invalid(format!(
                        "an imported oct-HSM key must be 32 bytes, got {}",
                        k.len()
                    )));
                }
                (k, 256)
            }
            (KeyKind::Rsa, None) => {
                let bits = key_size.unwrap_or(2048);
                if bits != 2048 && bits != 3072 {
                    return Err(StoreError::Invalid(format!(
                        "RSA-HSM keys are 2048 or 3072 bits, not {bits}"
                    )));
                }
                let pkey = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(bits)?)?;
                (pkey.private_key_to_der()?, bits)
            }
            (KeyKind::Rsa, Some(der)) => {
                // PKCS#8 or PKCS#1 in; PKCS#1 stored, like generated keys.
                let rsa = openssl::pkey::PKey::private_key_from_der(&der)
                    .and_then(|k| k.rsa())
                    .map_err(|_| {
                        StoreError::Invalid("imported RSA key is not a DER RSA private key".into())
                    })?;
                let der = rsa.private_key_to_der()?;
                let bits = rsa.size() * 8;
                if bits != 2048 && bits != 3072 {
                    return Err(StoreError::Invalid(format!(
                        "RSA-HSM keys are 2048 or 3072 bits, not {bits}"
                    )));
                }
                (der, bits)
            }
        };
        let mut nonce = [0u8; 12];
        openssl::rand::rand_bytes(&mut nonce)?;
        let mut tag = [0u8; 16];
        let mut ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.master,
            Some(&nonce),
            name.as_bytes(),
            &material,
            &mut tag,
        )?;
        ct.extend_from_slice(&tag);
        let policy_text = policy.map(|p| p.source().to_string());
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT INTO keys (name, kty, key_size, nonce, ciphertext, release_policy, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name) DO NOTHING",
            params![name, kind.name(), size, &nonce[..], ct, policy_text, now as i64],
        )?;
        if inserted == 0 {
            return Err(StoreError::Exists(name.into()));
        }
        Ok(KeyInfo {
            name: name.into(),
            kty: kind.name().into(),
            key_size: size,
            created: now,
            release_policy: policy.map(|p| p.source().clone()),
        })
    }

    fn row_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
        let policy: Option<String> = row.get(4)?;
        Ok(KeyInfo {
            name: row.get(0)?,
            kty: row.get(1)?,
            key_size: row.get(2)?,
            created: row.get::<_, i64>(3)? as u64,
            release_policy: policy.and_then(|p| serde_json::from_str(&p).ok()),
        })
    }

    /// Metadata of a key.
    pub fn get(&self, name: &str) -> Result<KeyInfo, StoreError> {
        self.reader()
            .query_row(
                "SELECT name, kty, key_size, created, release_policy FROM keys WHERE name = ?1",
                [name],
                Self::row_info,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(name.into()))
    }

    /// All keys' metadata, by name.
    pub fn list(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let conn = self.reader();
        let mut st = conn.prepare(
            "SELECT name, kty, key_size, created, release_policy FROM keys ORDER BY name",
        )?;
        let rows = st.query_map([], Self::row_info)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replace a key's release policy.
    pub fn set_policy(&self, name: &str, policy: &ReleasePolicy) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE keys SET release_policy = ?2 WHERE name = ?1",
            params![name, policy.source().to_string()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(name.into()));
        }
        Ok(())
    }

    /// Delete a key.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM keys WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(StoreError::NotFound(name.into()));
        }
        Ok(())
    }

    /// The key's kind, decrypted material and policy (for release).
    pub fn material(
        &self,
        name: &str,
    ) -> Result<(KeyKind, Vec<u8>, Option<ReleasePolicy>), StoreError> {
        let row: Option<StoredRow> = self
            .reader()
            .prepare_cached(
                "SELECT kty, nonce, ciphertext, release_policy FROM keys WHERE name = ?1",
            )?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let (kty, nonce, ct, policy) = row.ok_or_else(|| StoreError::NotFound(name.into()))?;
        if ct.len() < 16 {
            return Err(StoreError::Corrupt(name.into()));
        }
        let (body, tag) = ct.split_at(ct.len() - 16);
        let material = decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.master,
            Some(&nonce),
            name.as_bytes(),
            body,
            tag,
        )
        .map_err(|_| StoreError::Corrupt(name.into()))?;
        let policy = match policy {
            Some(p) => {
                let v: Value =
                    serde_json::from_str(&p).map_err(|_| StoreError::Corrupt(name.into()))?;
                Some(ReleasePolicy::parse(&v).map_err(|_| StoreError::Corrupt(name.into()))?)
            }
            None => None,
        };
        Ok((KeyKind::parse(&kty)?, material, policy))
    }

    /// Append to the audit log; returns once the row is on disk. Concurrent callers' rows share
    /// a transaction (`GroupCommit`). Key, issuer and reason are stored through [`audit_text`]
    /// (bounded by [`AUDIT_MAX_KEY`], [`AUDIT_MAX_ISSUER`], [`AUDIT_MAX_REASON`]).
    pub fn audit(
        &self,
        now: u64,
        key: &str,
        action: &str,
        allowed: bool,
        issuer: Option<&str>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let row = AuditRow {
            time: now,
            key: audit_text(key, AUDIT_MAX_KEY).into_owned(),
            action: action.into(),
            allowed,
            issuer: issuer.map(|i| audit_text(i, AUDIT_MAX_ISSUER).into_owned()),
            reason: audit_text(reason, AUDIT_MAX_REASON).into_owned(),
        };
        self.audit_queue
            .submit(row, |rows| {
                self.write_audit(&rows).map_err(std::sync::Arc::new)
            })
            .map_err(StoreError::Audit)
    }

    fn write_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (time, key, action, allowed, issuer, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in rows {
                insert.execute(params![
                    r.time as i64,
                    r.key,
                    r.action,
                    r.allowed,
                    r.issuer,
                    r.reason
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The last `limit` audit entries, oldest first.
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.reader();
        let mut st = conn.prepare(
            "SELECT id, time, key, action, allowed, issuer, reason FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let rows = st.query_map([limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                time: r.get::<_, i64>(1)? as u64,
                key: r.get(2)?,
                action: r.get(3)?,
                allowed: r.get(4)?,
                issuer: r.get(5)?,
                reason: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Rows audited by concurrent callers (grouped into shared transactions) are all there, once,
    /// after the store is closed and opened again.
    #[test]
    fn concurrent_audits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (db, master) = (dir.path().join("kbs.sqlite"), dir.path().join("master.key"));
        let store = std::sync::Arc::new(Store::open(&db, &master).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let reason = format!("t{t}-{i}");
                        store
                            .audit(1, "k", "release", i % 2 == 0, Some("iss"), &reason)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(store);
        let store = Store::open(&db, &master).unwrap();
        let log = store.audit_log(10_000).unwrap();
        let mut reasons: Vec<String> = log.iter().map(|e| e.reason.clone()).collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(log.len(), 320);
        assert_eq!(reasons.len(), 320);
        assert_eq!(log.iter().filter(|e| e.allowed).count(), 160);
    }

    fn one_row(key: &str, issuer: &str, reason: &str) -> AuditEntry {
        let dir = tempfile::tempdir().unwrap();
        let (db, master) = (dir.path().join("kbs.sqlite"), dir.path().join("master.key"));
        let store = Store::open(&db, &master).unwrap();
        store
            .audit(1, key, "release", false, Some(issuer), reason)
            .unwrap();
        store.audit_log(10).unwrap().remove(0)
    }

    /// Megabytes of unauthenticated input become a bounded row that says how much was left out.
    #[test]
    fn oversized_audit_fields_are_cut_and_marked() {
        let big = "x".repeat(2 << 20);
        let e = one_row(&big, &big, &big);
        let marker = format!("…[+{} bytes]", (2 << 20) - AUDIT_MAX_KEY);
        assert_eq!(e.key, format!("{}{marker}", &big[..AUDIT_MAX_KEY]));
        let issuer = e.issuer.unwrap();
        assert!(issuer.len() <= AUDIT_MAX_ISSUER + 20, "{}", issuer.len());
        assert!(issuer.ends_with(&format!("…[+{} bytes]", (2 << 20) - AUDIT_MAX_ISSUER)));
        assert!(
            e.reason.len() <= AUDIT_MAX_REASON + 20,
            "{}",
            e.reason.len()
        );
        assert!(e.reason.starts_with("xxxx") && e.reason.ends_with(" bytes]"));
    }

    /// Control and bidi characters are stored escaped, never raw; a multi-byte character is never
    /// split by the cut.
    #[test]
    fn audit_fields_escape_control_characters() {
        let e = one_row("k\n2024 forged", "iss\u{1b}[2J\\u{7}", "why\r\u{202e}evil");
        assert_eq!(e.key, "k\\u{a}2024 forged");
        assert_eq!(e.issuer.as_deref(), Some("iss\\u{1b}[2J\\\\u{7}"));
        assert_eq!(e.reason, "why\\u{d}\\u{202e}evil");
        assert_eq!(audit_text(&"é".repeat(100), 5), "éé…[+196 bytes]");
    }
}
