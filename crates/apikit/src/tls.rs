//! TLS between the admin and its agents: the agent's server configuration (certificate
//! and key, optionally requiring a client certificate signed by a given CA: mTLS) and
//! the admin's client configuration (agents verified against the operator's CA only,
//! optionally presenting a client certificate). Both use rustls with the `ring`
//! provider, TLS 1.2 and 1.3, and ALPN `http/1.1`.
//!
//! Errors name the file's role and what is wrong with it, never its content.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM bundle; `what` names it in errors.
pub fn certificates(pem: &[u8], what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{what} is not valid PEM: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "{what} holds no PEM certificate");
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1); `what` names it in errors.
pub fn private_key(pem: &[u8], what: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| anyhow::anyhow!("{what} holds no PEM private key"))
}

fn roots(pem: &[u8], what: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{what}: a certificate is not a usable CA: {e}"))?;
    }
    Ok(roots)
}

/// An HTTPS server's configuration: `cert` (PEM chain, leaf first) and `key`; with
/// `client_ca`, only clients presenting a certificate signed by one of its CAs are
/// served.
pub fn server_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = certificates(cert, "the TLS certificate (--tls-cert)")?;
    let key = private_key(key, "the TLS key file (--tls-key)")?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("no TLS version available")?;
    let builder = match client_ca {
        Some(pem) => {
            let roots = roots(pem, "the client CA (--tls-client-ca)")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .context("the client CA (--tls-client-ca) cannot verify clients")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTPS client's configuration trusting the CAs of `ca` only (no system roots);
/// with `identity` (certificate chain and key, PEM), it presents a client certificate.
pub fn client_config(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> anyhow::Result<ClientConfig> {
    let roots = roots(ca, "the agent CA (--agent-ca)")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("no TLS version available")?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certificates(cert, "the client certificate (--agent-client-cert)")?,
                private_key(key, "the client key (--agent-client-key)")?,
            )
            .context("the client certificate and key do not go together")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
