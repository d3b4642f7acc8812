//! TURNS: TLS over TCP with a certificate and key from files, reloaded when
//! the files change (cert-manager rotates them in place on Kubernetes).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

/// Where the certificate chain and the key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The acceptor in force, swapped when the files change.
pub struct TlsState {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
    loaded_from: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading TLS certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing TLS certificate {}", files.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate in {}",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading TLS private key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsState {
    /// Loads the files; fails with what is wrong with them.
    pub fn load(files: TlsFiles) -> Result<Self> {
        let stamps = (modified(&files.cert), modified(&files.key));
        let acceptor = acceptor(&files)?;
        Ok(TlsState {
            files,
            acceptor: RwLock::new(acceptor),
            loaded_from: RwLock::new(stamps),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().expect("TLS lock").clone()
    }

    /// Reloads when either file's modification time changed. A broken
    /// update keeps the previous certificate in force (and says so).
    pub fn reload_if_changed(&self) {
        let stamps = (modified(&self.files.cert), modified(&self.files.key));
        if *self.loaded_from.read().expect("TLS lock") == stamps {
            return;
        }
        match acceptor(&self.files) {
            Ok(acceptor) => {
                *self.acceptor.write().expect("TLS lock") = acceptor;
                *self.loaded_from.write().expect("TLS lock") = stamps;
                tracing::info!("reloaded TLS certificate {}", self.files.cert.display());
            }
            Err(err) => {
                tracing::warn!("keeping the previous TLS certificate: {err:#}");
                // Try again only after the next change.
                *self.loaded_from.write().expect("TLS lock") = stamps;
            }
        }
    }
}

/// How often certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);
