//! TLS at both ends of the gateway: the certificates the TLS listener serves, and how a
//! Pingora peer speaks to an upstream's nodes.
//!
//! Downstream, every handshake asks [`CertResolver`] for a certificate; it reads the
//! current [`CertTable`] from an `ArcSwap` that the config loop replaces whenever a
//! `certificates` object changes (the compiler hands the parsed certificates over only
//! then, `runtime::Built::certificates`), so the next handshake uses the new
//! certificate without a restart while established connections keep theirs. Lookup is
//! by the client's SNI, lowercased: the exact name first, then the wildcard covering
//! exactly one more label (`*.example.com` answers `a.example.com`, neither
//! `example.com` nor `a.b.example.com`, as RFC 6125 and browsers have it). A client
//! that sends no SNI (or connects by IP address) or an unknown name gets no certificate:
//! the handshake fails; there is no default certificate. [`listener_settings`] offers
//! ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3 only (rustls has nothing older), and with a
//! client CA bundle requires every client to present a certificate signed by it (mTLS).
//!
//! Upstream, [`configure_peer`] turns an upstream's scheme and `tls` settings into the
//! peer's transport: HTTP/1.1, h2c prior knowledge for gRPC, TLS with SNI and
//! certificate verification for `https` and `grpcs`.
//!
//! Private keys never appear in an error, a log line or a `Debug` output of this module.

use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use model::certificate::Certificate;
use model::upstream::{Scheme, UpstreamTls};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::{self, HttpPeer};
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Concurrent requests multiplexed on one HTTP/2 connection to a node before another
/// connection is opened (Pingora's default is 1, one connection per request in flight).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The certificates the TLS listener serves, by server name. Built in one go from the
/// instance's certificates and never changed afterwards: a change builds a new table.
#[derive(Default)]
pub struct CertTable {
    /// Lowercased server name → certificate.
    exact: HashMap<String, Served>,
    /// `*.example.com` stored as `example.com` → certificate.
    wildcard: HashMap<String, Served>,
}

/// One certificate as served, with the id of the object it came from.
struct Served {
    id: String,
    key: Arc<CertifiedKey>,
}

impl CertTable {
    /// Parses each certificate's chain and key. A certificate that cannot be served is
    /// left out and reported as (certificate id, reason); so is a server name already
    /// claimed by an earlier certificate of `certs` (the earlier one keeps it). Reasons
    /// never quote the key.
    pub fn build(certs: &[Certificate]) -> (CertTable, Vec<(String, String)>) {
        let mut table = CertTable::default();
        let mut problems = Vec::new();
        for cert in certs {
            let key = match certified_key(cert) {
                Ok(key) => Arc::new(key),
                Err(reason) => {
                    problems.push((cert.id.clone(), reason.to_owned()));
                    continue;
                }
            };
            for sni in &cert.snis {
                let name = normalize(sni);
                let (names, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut table.wildcard, parent.to_owned()),
                    None => (&mut table.exact, name),
                };
                if name.is_empty() || name.contains('*') {
                    problems.push((
                        cert.id.clone(),
                        format!("sni {sni:?} is neither a server name nor a wildcard like *.example.com"),
                    ));
                    continue;
                }
                match names.entry(name) {
                    Entry::Occupied(taken) => problems.push((
                        cert.id.clone(),
                        format!(
                            "sni {sni:?} is already served by certificate {:?}, which keeps it",
                            taken.get().id
                        ),
                    )),
                    Entry::Vacant(free) => {
                        free.insert(Served {
                            id: cert.id.clone(),
                            key: key.clone(),
                        });
                    }
                }
            }
        }
        (table, problems)
    }

    /// The certificate for a server name: the exact name, else the wildcard one label
    /// up; `None` when neither is configured.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        self.served(sni).map(|served| &served.key)
    }

    /// The id of the certificate [`CertTable::lookup`] would serve.
    pub fn certificate_id(&self, sni: &str) -> Option<&str> {
        self.served(sni).map(|served| served.id.as_str())
    }

    /// How many server names (exact and wildcard) have a certificate.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn served(&self, sni: &str) -> Option<&Served> {
        let name = normalize(sni);
        if let Some(served) = self.exact.get(&name) {
            return Some(served);
        }
        // One label only: `a.b.example.com` looks up `*.b.example.com`, never
        // `*.example.com`; `example.com` looks up `*.com`, which no one may configure
        // usefully but is refused by no rule here either.
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

impl fmt::Debug for CertTable {
    /// Names and certificate ids only: the keys stay out of any output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = self.exact.iter().map(|(name, s)| (name.clone(), &s.id));
        let wildcard = self
            .wildcard
            .iter()
            .map(|(name, s)| (format!("*.{name}"), &s.id));
        let names: BTreeMap<String, &String> = exact.chain(wildcard).collect();
        f.debug_struct("CertTable").field("names", &names).finish()
    }
}

/// Lowercase, without the trailing dot of a fully qualified name.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The chain and signing key of a certificate, checked to belong together. The
/// messages are fixed strings: neither the key nor a parser's view of it is quoted.
fn certified_key(cert: &Certificate) -> Result<CertifiedKey, &'static str> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| "cert is not a valid PEM certificate chain")?;
    if chain.is_empty() {
        return Err("cert holds no PEM certificate");
    }
    let der = PrivateKeyDer::from_pem_slice(cert.key.as_bytes())
        .map_err(|_| "key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)")?;
    // The same provider Pingora installs for the listener (pingora-rustls uses ring).
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|_| "key is not a usable RSA, ECDSA or Ed25519 private key")?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("key does not match the certificate's public key")
        }
        // `Unknown` means the key type cannot be compared; the handshake will tell.
        _ => Ok(certified),
    }
}

/// Answers each TLS handshake with the certificate of the current [`CertTable`].
#[derive(Clone)]
pub struct CertResolver {
    /// Replaced by the config loop; each handshake loads it once.
    table: Arc<ArcSwap<CertTable>>,
}

impl CertResolver {
    pub fn new(table: Arc<ArcSwap<CertTable>>) -> Self {
        Self { table }
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("names", &self.table.load().len())
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    /// `None` (the handshake fails) without SNI or for a name no certificate covers.
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = client_hello.server_name() else {
            tracing::debug!("TLS handshake without SNI refused: there is no default certificate");
            return None;
        };
        let key = self.table.load().lookup(sni).cloned();
        if key.is_none() {
            tracing::debug!(
                sni,
                "TLS handshake refused: no certificate for this server name"
            );
        }
        key
    }
}

impl CertTable {
    /// [`CertTable::build`] from the compiler's valid certificates (store key,
    /// certificate), with each problem reported by store key.
    pub fn from_objects(objects: &[(String, Certificate)]) -> (CertTable, Vec<(String, String)>) {
        let certs: Vec<Certificate> = objects.iter().map(|(_, cert)| cert.clone()).collect();
        let (table, problems) = CertTable::build(&certs);
        let key_of: HashMap<&str, &str> = objects
            .iter()
            .map(|(key, cert)| (cert.id.as_str(), key.as_str()))
            .collect();
        let problems = problems
            .into_iter()
            .map(|(id, reason)| {
                let key = key_of.get(id.as_str()).map_or(id, |key| (*key).to_owned());
                (key, reason)
            })
            .collect();
        (table, problems)
    }
}

/// Settings of the TLS listener: certificates from `resolver`, ALPN `h2` then
/// `http/1.1`, TLS 1.2 and 1.3; with `client_ca`, a client certificate signed by one of
/// the bundle's CAs is required (mTLS).
pub fn listener_settings(
    resolver: CertResolver,
    client_ca: Option<&Path>,
) -> anyhow::Result<TlsSettings> {
    // The paths are never read: a resolver replaces them.
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(Arc::new(resolver));
    settings.enable_h2();
    if let Some(path) = client_ca {
        settings.set_client_cert_verifier(client_verifier(path)?);
    }
    Ok(settings)
}

/// Requires a client certificate chaining to one of the CAs of the PEM bundle at `path`.
pub fn client_verifier(path: &Path) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the client CA bundle {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|_| {
            anyhow::anyhow!("the client CA bundle {} is not valid PEM", path.display())
        })?;
        roots.add(der).with_context(|| {
            format!(
                "the client CA bundle {} holds an unusable CA certificate",
                path.display()
            )
        })?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "the client CA bundle {} holds no certificate",
        path.display()
    );
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .with_context(|| format!("cannot verify clients with {}", path.display()))
}

/// Sets how `peer` speaks to a node whose configured host is `host`, for an upstream
/// with `scheme` and `tls`. Expects the peer as `HttpPeer::new(addr, false,
/// String::new())` made it, timeouts aside:
///
/// - `http`: HTTP/1.1 (WebSocket upgrades pass through);
/// - `grpc`: HTTP/2 with prior knowledge (h2c), no HTTP/1.1 fallback;
/// - `https`: TLS, ALPN `http/1.1`;
/// - `grpcs`: TLS, ALPN `h2` only.
///
/// With TLS the SNI is `tls.sni`, else `host` (an IP address is sent no SNI and checked
/// against the certificate's IP SANs); without `tls` or with `verify: true` the
/// certificate must chain to the system roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured)
/// and match that name; `verify: false` accepts any certificate.
pub fn configure_peer(peer: &mut HttpPeer, scheme: Scheme, tls: Option<&UpstreamTls>, host: &str) {
    match scheme {
        Scheme::Http => peer.options.set_http_version(1, 1),
        Scheme::Grpc => {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        Scheme::Https | Scheme::Grpcs => {
            peer.scheme = peer::Scheme::HTTPS;
            // Never empty (a node's host is required): Pingora skips every check for a
            // TLS peer without SNI.
            peer.sni = tls
                .and_then(|tls| tls.sni.clone())
                .unwrap_or_else(|| host.to_owned());
            let verify = tls.is_none_or(|tls| tls.verify);
            peer.options.verify_cert = verify;
            peer.options.verify_hostname = verify;
            if scheme == Scheme::Grpcs {
                peer.options.set_http_version(2, 2);
                peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
            } else {
                peer.options.set_http_version(1, 1);
            }
        }
    }
}

/// An upstream's `tls.ca`: the CAs its nodes' certificates must chain to, parsed once
/// when the pool is built.
#[derive(Clone)]
pub struct PeerCa {
    certs: Arc<CaType>,
    /// A hash of the certificates, for the connection-reuse key.
    key: u64,
}

impl PeerCa {
    /// `Err` says what is wrong with the bundle, without quoting it.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let ders = model::certificate::pem_certificates(pem).map_err(|p| p.join("; "))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let certs: Vec<WrappedX509> = ders
            .into_iter()
            .map(|der| {
                der.as_ref().hash(&mut hasher);
                WrappedX509::new(der.to_vec(), parse_x509)
            })
            .collect();
        Ok(Self {
            certs: Arc::from(certs),
            key: hasher.finish(),
        })
    }
}

impl fmt::Debug for PeerCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCa")
            .field("certificates", &self.certs.len())
            .finish()
    }
}

/// Verifies the node's certificate against `ca` instead of the system roots. Pingora
/// does not count the CA in its connection-reuse key, so the CA's hash is mixed into
/// the peer's group key: a connection verified against one CA is never reused for a
/// peer that trusts another.
pub fn set_peer_ca(peer: &mut HttpPeer, ca: &PeerCa) {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    peer.group_key.hash(&mut hasher);
    ca.key.hash(&mut hasher);
    peer.group_key = hasher.finish();
    peer.options.ca = Some(ca.certs.clone());
}
