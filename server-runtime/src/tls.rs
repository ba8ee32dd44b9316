//! HTTPS for every server: rustls with the aws-lc-rs provider, HTTP/2 and HTTP/1.1 by
//! ALPN, and certificates re-read on SIGHUP without dropping connections.
//!
//! The certificate and key live behind a resolver that every new handshake asks, so a
//! reload swaps them for new connections while open ones keep the session they
//! negotiated. A reload that fails (missing file, key not matching the certificate)
//! keeps the previous certificate and logs why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;

/// Certificate and key files of a TLS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or holds no usable PEM.
    #[error("{what} {path}: {reason}")]
    File {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate, key or configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn file_error(what: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a certificate chain and its key, checking that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error("certificate", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("certificate", &files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "certificate",
            &files.cert,
            "no CERTIFICATE block in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error("private key", &files.key, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error("private key", &files.key, e))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match()?;
    Ok(certified)
}

/// Hands every handshake the current certificate; [`CertResolver::reload`] swaps it.
pub struct CertResolver {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("files", &self.files)
            .finish()
    }
}

impl CertResolver {
    /// Loads `files`.
    pub fn new(files: TlsFiles) -> Result<CertResolver, TlsError> {
        let key = load_certified_key(&files)?;
        Ok(CertResolver {
            files,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Re-reads the files; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(load_certified_key(&self.files)?);
        if let Ok(mut current) = self.current.write() {
            *current = key;
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|key| key.clone())
    }
}

/// Accepts TLS connections with the reloadable certificate.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<CertResolver>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("resolver", &self.resolver)
            .finish()
    }
}

impl TlsAcceptor {
    /// An acceptor serving `files` (HTTP/2 and HTTP/1.1 offered by ALPN).
    pub fn new(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
        let resolver = Arc::new(CertResolver::new(files.clone())?);
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            resolver,
        })
    }

    /// The resolver (to reload certificates).
    pub fn resolver(&self) -> &Arc<CertResolver> {
        &self.resolver
    }

    /// Runs the server side of a handshake.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// Reloads the certificate on every SIGHUP until `stop` is cancelled.
    pub fn reload_on_sighup(&self, stop: tokio_util::sync::CancellationToken) {
        let resolver = self.resolver.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                let mut hangups = match signal(SignalKind::hangup()) {
                    Ok(hangups) => hangups,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch SIGHUP; certificates will not be reloaded");
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        received = hangups.recv() => {
                            if received.is_none() {
                                return;
                            }
                            match resolver.reload() {
                                Ok(()) => tracing::info!(cert = %resolver.files.cert.display(), "SIGHUP: TLS certificate reloaded"),
                                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the previous one"),
                            }
                        }
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = (resolver, stop);
            }
        });
    }
}
