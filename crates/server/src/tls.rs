//! HTTPS: [`Tls`] is the [`Accept`] that shakes hands with rustls (the aws-lc-rs
//! provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN) with a certificate chain and key
//! read from PEM files, read again by [`Tls::reload`] (the CLI calls it on SIGHUP):
//! connections made after a reload get the new certificate, those open keep theirs,
//! and files that do not load leave the old certificate in place.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use crate::listen::Accept;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM of the kind needed.
    #[error("cannot read the TLS {what} from {}: {reason}; give a PEM file ({hint})", path.display())]
    File {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
        /// What the file should hold.
        hint: &'static str,
    },
    /// rustls refused the pair (a key that does not match the certificate ...).
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Refused(String),
}

/// The TLS acceptor (see the module).
#[derive(Debug, Clone)]
pub struct Tls {
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    cert: PathBuf,
    key: PathBuf,
}

fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| TlsError::File {
            what: "certificate",
            path: cert.to_owned(),
            reason: e.to_string(),
            hint: "BEGIN CERTIFICATE blocks, the server's first, then its intermediates",
        })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            what: "certificate",
            path: cert.to_owned(),
            reason: "it holds no certificate".to_owned(),
            hint: "BEGIN CERTIFICATE blocks, the server's first, then its intermediates",
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "private key",
        path: key.to_owned(),
        // Never the key itself: the error names the file and the PEM problem only.
        reason: e.to_string(),
        hint: "one BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block",
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Refused(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Tls {
    /// Reads the certificate chain and private key from PEM files.
    ///
    /// # Errors
    /// A file cannot be read, holds nothing usable, or the key does not match.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref().to_owned(), key.as_ref().to_owned());
        Ok(Self {
            config: Arc::new(RwLock::new(load(&cert, &key)?)),
            cert,
            key,
        })
    }

    /// Reads the files again; new connections use what they hold from now on.
    ///
    /// # Errors
    /// As [`Tls::from_pem_files`]; the certificate in use stays then.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.cert, &self.key)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Accept for Tls {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(&self, tcp: TcpStream) -> io::Result<Self::Stream> {
        tokio_rustls::TlsAcceptor::from(self.current())
            .accept(tcp)
            .await
    }
}
