//! `invariant up --tls`: a local certificate authority and one certificate per server.
//!
//! Everything lives under `<data-dir>/tls/`: `ca.pem` (the CA certificate clients
//! trust) and `ca.key` (its private key, 0600), and for each server `<name>.pem` and
//! `<name>.key` (0600). The certificates name the configured host, `localhost`, and
//! `127.0.0.1` / `::1` when the host is loopback or unspecified.
//!
//! On the next start the files are reused when they are still good: the CA is kept
//! while a certificate it signs verifies against `ca.pem`, and a server certificate
//! is kept while it verifies against the CA for every name above, a week from now,
//! with its key. Anything else is replaced (a new CA means clients must trust the new
//! `ca.pem`; `up` says so).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::auth::{write_private, write_public};

/// How long a new CA stays valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long a new server certificate stays valid.
const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Certificates expiring sooner than this are replaced at start.
const RENEW_MARGIN: Duration = Duration::from_secs(7 * 86_400);
/// The CA's subject; fixed, so a CA rebuilt from its key signs certificates that
/// chain to the `ca.pem` written earlier.
const CA_NAME: &str = "invariant up local CA";

/// A server's certificate and key files.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The local CA of one data dir.
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    names: Vec<String>,
    verifier: Arc<dyn ServerCertVerifier>,
    /// The CA was created (or replaced) by this start.
    pub created: bool,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .field("names", &self.names)
            .finish()
    }
}

/// The names a certificate for servers bound to `host` carries.
pub fn names_for(host: IpAddr) -> Vec<String> {
    let mut names = Vec::new();
    let mut add = |name: String| {
        if !names.contains(&name) {
            names.push(name);
        }
    };
    if !host.is_unspecified() {
        add(host.to_string());
    }
    add("localhost".into());
    match host {
        IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => {
            add(Ipv4Addr::LOCALHOST.to_string());
        }
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => {
            add(Ipv6Addr::LOCALHOST.to_string());
        }
        _ => {}
    }
    names
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lifetime;
}

impl LocalCa {
    /// Loads the CA under `tls_dir` if it is still good, else creates a new one; its
    /// server certificates will carry `names`.
    pub fn open_or_create(tls_dir: &Path, names: Vec<String>) -> anyhow::Result<LocalCa> {
        fs::create_dir_all(tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
        if let Some(ca) = LocalCa::load(tls_dir, &names)? {
            return Ok(ca);
        }
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = ca_params();
        validity(&mut params, CA_LIFETIME);
        let cert = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        write_private(&tls_dir.join("ca.key"), &key.serialize_pem(), true)?;
        write_public(&tls_dir.join("ca.pem"), &cert.pem())?;
        let mut ca = LocalCa::load(tls_dir, &names)?
            .context("the new CA does not verify its own certificates")?;
        ca.created = true;
        Ok(ca)
    }

    /// The CA under `tls_dir`, if both files exist and a certificate it signs now
    /// verifies against `ca.pem` until the renewal margin.
    fn load(tls_dir: &Path, names: &[String]) -> anyhow::Result<Option<LocalCa>> {
        let (key_path, cert_path) = (tls_dir.join("ca.key"), tls_dir.join("ca.pem"));
        if !key_path.is_file() || !cert_path.is_file() {
            return Ok(None);
        }
        let Ok(key) = fs::read_to_string(&key_path)
            .map_err(anyhow::Error::from)
            .and_then(|pem| Ok(KeyPair::from_pem(&pem)?))
        else {
            return Ok(None);
        };
        let Ok(ca_cert) = CertificateDer::from_pem_file(&cert_path) else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(ca_cert).is_err() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("building a certificate verifier")?;
        let ca = LocalCa {
            dir: tls_dir.to_path_buf(),
            issuer: Issuer::new(ca_params(), key),
            names: names.to_vec(),
            verifier,
            created: false,
        };
        // A throwaway certificate proves the key, name and validity of the CA.
        let probe_key = KeyPair::generate().context("generating a key")?;
        let probe = ca.sign(&probe_key)?;
        if ca.verify(probe.der()).is_err() {
            return Ok(None);
        }
        Ok(Some(ca))
    }

    /// The CA certificate clients trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's private key (no server needs it).
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    fn sign(&self, key: &KeyPair) -> anyhow::Result<rcgen::Certificate> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in &self.names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            });
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "invariant up server");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, SERVER_LIFETIME);
        Ok(params.signed_by(key, &self.issuer)?)
    }

    /// Checks `cert` chains to the CA and names every name, a renewal margin from now.
    fn verify(&self, cert: &CertificateDer<'_>) -> anyhow::Result<()> {
        let when = SystemTime::now() + RENEW_MARGIN;
        let when = UnixTime::since_unix_epoch(when.duration_since(SystemTime::UNIX_EPOCH)?);
        for name in &self.names {
            let server_name = ServerName::try_from(name.as_str())?.to_owned();
            self.verifier
                .verify_server_cert(cert, &[], &server_name, &[], when)
                .with_context(|| format!("certificate for {name}"))?;
        }
        Ok(())
    }

    /// The certificate and key of server `name`: the existing files when still good,
    /// else new ones. Returns the files and whether they were (re)made.
    pub fn server(&self, name: &str) -> anyhow::Result<(ServerFiles, bool)> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!("invalid server name {name:?}");
        }
        let files = ServerFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        if self.still_good(&files) {
            return Ok((files, false));
        }
        let key = KeyPair::generate().context("generating a server key")?;
        let cert = self.sign(&key)?;
        write_private(&files.key, &key.serialize_pem(), true)?;
        write_public(&files.cert, &cert.pem())?;
        Ok((files, true))
    }

    fn still_good(&self, files: &ServerFiles) -> bool {
        let Ok(cert) = CertificateDer::from_pem_file(&files.cert) else {
            return false;
        };
        let Ok(key) = PrivateKeyDer::from_pem_file(&files.key) else {
            return false;
        };
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        if rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key, &provider).is_err() {
            return false;
        }
        self.verify(&cert).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        names_for(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    #[test]
    fn names_cover_the_host_and_loopback() {
        assert_eq!(names(), vec!["127.0.0.1", "localhost"]);
        assert_eq!(
            names_for("::".parse().expect("ip")),
            vec!["localhost", "::1"]
        );
        assert_eq!(
            names_for("192.0.2.7".parse().expect("ip")),
            vec!["192.0.2.7", "localhost"]
        );
    }

    #[test]
    fn files_are_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::open_or_create(dir.path(), names()).expect("ca");
        assert!(ca.created);
        let (files, made) = ca.server("storage-1").expect("server");
        assert!(made);
        for private in [dir.path().join("ca.key"), files.key.clone()] {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &fs::metadata(&private).expect("meta").permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{}", private.display());
        }
        let ca_pem = fs::read(ca.ca_path()).expect("ca");
        let cert_pem = fs::read(&files.cert).expect("cert");

        let again = LocalCa::open_or_create(dir.path(), names()).expect("ca again");
        assert!(!again.created);
        assert_eq!(fs::read(again.ca_path()).expect("ca"), ca_pem);
        let (files, made) = again.server("storage-1").expect("server again");
        assert!(!made);
        assert_eq!(fs::read(&files.cert).expect("cert"), cert_pem);

        // A certificate that lost its key, or lacks a name now needed, is replaced.
        fs::remove_file(&files.key).expect("rm key");
        let (files, made) = again.server("storage-1").expect("server");
        assert!(made);
        let cert_pem = fs::read(&files.cert).expect("cert");
        let wider = names_for("::".parse().expect("ip"));
        let ca = LocalCa::open_or_create(dir.path(), wider).expect("ca");
        assert!(!ca.created, "the CA does not depend on the names");
        let (files, made) = ca.server("storage-1").expect("server");
        assert!(made);
        assert_ne!(fs::read(&files.cert).expect("cert"), cert_pem);

        // A CA certificate that does not match its key is replaced.
        let other = tempfile::tempdir().expect("tempdir");
        LocalCa::open_or_create(other.path(), names()).expect("other ca");
        fs::copy(other.path().join("ca.pem"), dir.path().join("ca.pem")).expect("cp");
        let replaced = LocalCa::open_or_create(dir.path(), names()).expect("ca");
        assert!(replaced.created);
        let (_, made) = replaced.server("storage-1").expect("server");
        assert!(made, "certificates of the old CA are replaced");
    }

    #[test]
    fn server_names_are_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::open_or_create(dir.path(), names()).expect("ca");
        assert!(ca.server("../x").is_err());
        assert!(ca.server("").is_err());
    }
}
