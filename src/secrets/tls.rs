//! TLS on the gRPC port with a certificate that can change while the port serves.
//!
//! Owns building a rustls server configuration from PEM (pure: parse, check that the
//! key is the certificate's, build the client-certificate verifier from the CA),
//! holding the configuration in force, and the handshakes of accepted connections.
//! Each handshake uses the configuration in force when it starts, so a rotation
//! affects new connections only: established ones keep their session and are never
//! dropped. (tonic's own `ServerTlsConfig` is fixed when the server is built, which
//! is why the handshake happens here and tonic gets already-decrypted streams.)
//!
//! It must never log key material or certificate contents, and never let one slow
//! or hostile handshake hold up the others (each runs in its own task, with a deadline).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// Which file of `[server.tls]` is wrong and why; never what it holds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("server.tls.{file}: {message}")]
pub struct TlsError {
    /// `cert_file`, `key_file` or `client_ca_file`.
    pub file: &'static str,
    pub message: String,
}

fn error(file: &'static str, message: impl Into<String>) -> TlsError {
    TlsError { file, message: message.into() }
}

/// The server configuration for a certificate chain, its key and, for mutual TLS,
/// the CA bundle client certificates must chain to. Rejects a PEM without the
/// expected item, a certificate rustls cannot parse, and a key that is not the
/// certificate's.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8], client_ca_pem: Option<&[u8]>) -> Result<ServerConfig, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error("cert_file", format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(error("cert_file", "holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| error("key_file", format!("no PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("cert_file", e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|e| error("client_ca_file", format!("not a PEM certificate bundle: {e}")))?;
                roots.add(ca).map_err(|e| error("client_ca_file", format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(error("client_ca_file", "holds no PEM certificate"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => error("key_file", "is not the private key of the certificate in cert_file"),
        rustls::Error::InvalidCertificate(_) | rustls::Error::General(_) => error("cert_file", format!("unusable certificate: {e}")),
        other => error("key_file", format!("unusable private key: {other}")),
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The TLS configuration in force; new handshakes read it, rotations replace it.
pub struct LiveTls {
    config: ArcSwap<ServerConfig>,
}

impl LiveTls {
    pub fn new(config: ServerConfig) -> Self {
        Self { config: ArcSwap::from_pointee(config) }
    }

    /// Puts `config` in force for every handshake from now on.
    pub fn store(&self, config: ServerConfig) {
        self.config.store(Arc::new(config));
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake succeeded,
/// for tonic's `serve_with_incoming_shutdown`. Accepting stops when the stream is dropped.
pub fn incoming(listener: TcpListener, tls: Arc<LiveTls>) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // TCP_NODELAY: `Mirror` answers are tiny; Nagle would hold them for the peer's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    // A plaintext client, an untrusted client certificate, a port scan: not ours to log loudly.
                    Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(issuer: &CertifiedIssuer<'_, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_builds_with_and_without_client_ca() {
        let ca = ca();
        let (cert, key) = leaf(&ca);
        let c = server_config(cert.as_bytes(), key.as_bytes(), None).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
        server_config(cert.as_bytes(), key.as_bytes(), Some(ca.pem().as_bytes())).unwrap();
    }

    #[test]
    fn broken_files_are_named() {
        let ca = ca();
        let (cert, key) = leaf(&ca);
        let (_, other_key) = leaf(&ca);
        let cases = [
            (server_config(cert.as_bytes(), other_key.as_bytes(), None), "key_file"),
            (server_config(b"garbage", key.as_bytes(), None), "cert_file"),
            (server_config(key.as_bytes(), key.as_bytes(), None), "cert_file"),
            (server_config(cert.as_bytes(), b"", None), "key_file"),
            (server_config(cert.as_bytes(), cert.as_bytes(), None), "key_file"),
            (server_config(cert.as_bytes(), key.as_bytes(), Some(b"not pem")), "client_ca_file"),
        ];
        for (i, (result, file)) in cases.into_iter().enumerate() {
            let e = result.expect_err(&format!("case {i} must be rejected"));
            assert_eq!(e.file, file, "case {i}: {e}");
        }
    }

    #[test]
    fn a_truncated_certificate_is_rejected() {
        let (cert, key) = leaf(&ca());
        let cut = &cert[..cert.len() / 2];
        let e = server_config(format!("{cut}\n-----END CERTIFICATE-----\n").as_bytes(), key.as_bytes(), None).unwrap_err();
        assert_eq!(e.file, "cert_file", "{e}");
    }

    #[test]
    fn errors_never_hold_key_material() {
        let (cert, key) = leaf(&ca());
        let (_, other) = leaf(&ca());
        let e = server_config(cert.as_bytes(), other.as_bytes(), None).unwrap_err().to_string();
        for pem in [&key, &other] {
            let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
            assert!(!e.contains(&body) && !e.contains("PRIVATE KEY-----"), "{e}");
        }
    }
}
