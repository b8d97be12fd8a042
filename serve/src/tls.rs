//! TLS for both of the node's endpoints (gRPC through tonic, /metrics through axum), from one
//! PEM certificate chain and private key: checked once at start, so that a wrong file is an
//! error naming it rather than a failed handshake later.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// A server's certificate chain and private key, PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs and panics.
        f.write_str("TlsIdentity { .. }")
    }
}

impl TlsIdentity {
    /// Reads and checks `cert` (a PEM chain) and `key` (its PEM private key).
    pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity> {
        let read = |path: &Path, what: &str| -> Result<Vec<u8>> {
            let source =
                gpuslice_traces::Source::read_file(path).with_context(|| format!("cannot read the TLS {what}"))?;
            Ok(source.text.into_owned().into_bytes())
        };
        let identity = TlsIdentity { cert_pem: read(cert, "certificate")?, key_pem: read(key, "key")? };
        identity
            .server_config()
            .with_context(|| format!("TLS certificate {} with key {}", cert.display(), key.display()))?;
        Ok(identity)
    }

    /// From PEM text already read (tests, and `load`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<TlsIdentity> {
        let identity = TlsIdentity { cert_pem: cert_pem.as_bytes().to_vec(), key_pem: key_pem.as_bytes().to_vec() };
        identity.server_config()?;
        Ok(identity)
    }

    /// tonic's identity for the gRPC server.
    pub fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ring's algorithms), for /metrics.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .context("the certificate is not PEM")?;
        anyhow::ensure!(!certs.is_empty(), "the certificate file holds no certificate");
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).context("the key is not a PEM private key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the key does not match the certificate")?;
        Ok(Arc::new(config))
    }
}

/// Connections accepted on a TCP listener and taken through the TLS handshake, each in its
/// own task (a slow or silent client holds up no other), for axum to serve.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

/// How long a client has to finish the handshake.
const HANDSHAKE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsListener {
    /// Accepts on `listener` with `config`.
    pub fn new(listener: tokio::net::TcpListener, config: Arc<ServerConfig>) -> Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (done, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, handed) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "/metrics: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "/metrics: TLS handshake timed out"),
                    }
                });
                if done.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task never ends while this receiver lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
