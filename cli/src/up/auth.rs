//! Capability tokens of a network started by `invariant up`.
//!
//! Everything lives under `<data-dir>/auth/`: the root key pair (`root.key`, 0600, and
//! `root.pub`, which every server gets as `--auth-root-key`), one token per server
//! (`<name>.token`, 0600, passed with `--token-file`) holding exactly the rights of the
//! calls that server makes to others ([`server_rights`]), and the operator token
//! (`operator.token`, 0600, subject `operator`, right `*`).
//!
//! Tokens carry no expiry: they sit beside the root key that could issue new ones, so
//! an expiry would protect nothing. A token file is reused while it verifies against
//! the root key and grants exactly what it should; otherwise it is issued again.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use invariant_runtime::Role;
use invariant_spec::auth::{Grant, Right, RootKey, VerifiedToken, parse_rights};

use crate::auth::{ROOT_KEY_FILE, ROOT_PUB_FILE, read_root_key, write_private, write_public};

/// The operator's subject.
pub const OPERATOR: &str = "operator";

/// The rights a server of `role` needs for its calls to other servers (`None`: it
/// makes none that need a right).
///
/// - storage: registers with the broker, reports its blobs to find servers
///   (`/find/has`);
/// - find: registers, forwards records to and notifies other find servers;
/// - slots, names, productions: register;
/// - files: registers, writes blocks to storage, moves slots on sync;
/// - distributor: registers, asks storage servers to fetch copies
///   (`/storage/fetch`), reports copies to find servers, lists and deletes blocks
///   when it collects garbage;
/// - broker: only reads `/id` of the servers it checks.
pub fn server_rights(role: Role) -> Option<&'static str> {
    match role {
        Role::Broker => None,
        Role::Storage | Role::Find => Some("broker:register,find:report"),
        Role::Slots | Role::Names | Role::Productions => Some("broker:register"),
        Role::Files => Some("broker:register,storage:write,slots:write"),
        Role::Distributor => {
            Some("broker:register,storage:write,storage:delete,storage:list,find:report")
        }
    }
}

/// The root key and token files of one data dir.
#[derive(Debug)]
pub struct NetworkAuth {
    dir: PathBuf,
    root: RootKey,
    /// The root key was created by this start.
    pub created: bool,
}

impl NetworkAuth {
    /// Loads `<data>/auth/root.key`, creating the pair on first start (and rewriting
    /// `root.pub` from the private key every time).
    pub fn open_or_create(data_dir: &Path) -> anyhow::Result<NetworkAuth> {
        let dir = data_dir.join("auth");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key_path = dir.join(ROOT_KEY_FILE);
        let (root, created) = if key_path.exists() {
            (read_root_key(&key_path)?, false)
        } else {
            let root = RootKey::generate();
            write_private(&key_path, &format!("{}\n", root.private_text()), false)?;
            (root, true)
        };
        write_public(
            &dir.join(ROOT_PUB_FILE),
            &format!("{}\n", root.public_text()),
        )?;
        Ok(NetworkAuth { dir, root, created })
    }

    /// The root public key file servers are given.
    pub fn root_pub_path(&self) -> PathBuf {
        self.dir.join(ROOT_PUB_FILE)
    }

    /// The root private key file (no server needs it).
    pub fn root_key_path(&self) -> PathBuf {
        self.dir.join(ROOT_KEY_FILE)
    }

    /// The token file of server `name` of `role`, written if needed; `None` when the
    /// role needs no token.
    pub fn server_token(&self, name: &str, role: Role) -> anyhow::Result<Option<PathBuf>> {
        let Some(rights) = server_rights(role) else {
            return Ok(None);
        };
        let path = self.dir.join(format!("{name}.token"));
        self.ensure(&path, name, parse_rights(rights)?)?;
        Ok(Some(path))
    }

    /// The operator token file (subject `operator`, right `*`), written if needed.
    pub fn operator_token(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("operator.token");
        self.ensure(&path, OPERATOR, vec![Right::all()])?;
        Ok(path)
    }

    /// Keeps the token at `path` if it is this root's and grants exactly `rights` to
    /// `subject`; else issues a new one there.
    fn ensure(&self, path: &Path, subject: &str, mut rights: Vec<Right>) -> anyhow::Result<()> {
        rights.sort();
        let current = fs::read_to_string(path).ok().and_then(|text| {
            let token = VerifiedToken::verify(text.trim(), self.root.public()).ok()?;
            token.facts().ok()
        });
        if let Some(facts) = current
            && facts.subject == subject
            && facts.rights == rights
            && facts.quota.is_none()
        {
            return Ok(());
        }
        let token = self.root.issue(&Grant {
            subject: subject.to_string(),
            rights,
            expires: None,
            quota: None,
        })?;
        write_private(path, &format!("{token}\n"), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn allowed(path: &Path, root: &RootKey, op: &str) -> bool {
        let token = fs::read_to_string(path).expect("token");
        let token = VerifiedToken::verify(token.trim(), root.public()).expect("verify");
        token
            .authorize(&op.parse().expect("op"), SystemTime::now())
            .is_ok()
    }

    #[test]
    fn every_server_gets_exactly_its_rights() {
        let data = tempfile::tempdir().expect("tempdir");
        let auth = NetworkAuth::open_or_create(data.path()).expect("auth");
        assert!(auth.created);
        let root = read_root_key(&data.path().join("auth/root.key")).expect("root");
        let storage = auth
            .server_token("storage-1", Role::Storage)
            .expect("token")
            .expect("storage has one");
        assert!(allowed(&storage, &root, "broker:register"));
        assert!(allowed(&storage, &root, "find:report"));
        assert!(!allowed(&storage, &root, "storage:write"));
        assert!(!allowed(&storage, &root, "distributor:pin"));
        let distributor = auth
            .server_token("distributor", Role::Distributor)
            .expect("token")
            .expect("distributor has one");
        assert!(allowed(&distributor, &root, "storage:write"));
        assert!(allowed(&distributor, &root, "storage:delete"));
        assert!(allowed(&distributor, &root, "storage:list"));
        assert!(!allowed(&distributor, &root, "slots:write"));
        let files = auth
            .server_token("files", Role::Files)
            .expect("token")
            .expect("files has one");
        assert!(allowed(&files, &root, "slots:write"));
        assert!(!allowed(&files, &root, "names:write"));
        assert!(
            auth.server_token("broker", Role::Broker)
                .expect("ok")
                .is_none()
        );
        let operator = auth.operator_token().expect("operator");
        assert!(allowed(&operator, &root, "distributor:admin"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(&operator).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // The next start reuses the key and the tokens.
        let before = fs::read(&storage).expect("read");
        let again = NetworkAuth::open_or_create(data.path()).expect("again");
        assert!(!again.created);
        again
            .server_token("storage-1", Role::Storage)
            .expect("token");
        assert_eq!(fs::read(&storage).expect("read"), before);
        // A token of another root is replaced.
        let foreign = RootKey::generate()
            .issue(&Grant {
                subject: "storage-1".into(),
                rights: parse_rights("broker:register,find:report").expect("rights"),
                expires: None,
                quota: None,
            })
            .expect("issue");
        fs::write(&storage, foreign).expect("write");
        again
            .server_token("storage-1", Role::Storage)
            .expect("token");
        assert!(allowed(&storage, &root, "find:report"));
    }
}
