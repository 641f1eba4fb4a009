//! Certificate: a TLS certificate chain and its private key, served for a set of SNIs.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::validate::{check_id, is_valid_host, ValidationErrors, Validator};

/// A certificate resource. The `key` travels to the store (gateways need it) but is
/// never returned by an API's list or get: call [`Certificate::redacted`] first. Its
/// `Debug` output leaves the key out, so no log line or panic message can carry it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub id: String,
    /// Server names this certificate answers for; `*.example.com` wildcards allowed.
    pub snis: Vec<String>,
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id)
            .field("snis", &self.snis)
            .field("cert", &self.cert)
            .field(
                "key",
                &if self.key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl Certificate {
    /// The same certificate without its private key, for API answers.
    pub fn redacted(&self) -> Self {
        Self {
            key: String::new(),
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "id", &self.id);
        if self.snis.is_empty() {
            v.error("snis", "must list at least one server name");
        }
        for (i, sni) in self.snis.iter().enumerate() {
            let bare = sni.strip_prefix("*.").unwrap_or(sni);
            if !is_valid_host(bare) || bare.parse::<std::net::IpAddr>().is_ok() {
                v.error(
                    &format!("snis[{i}]"),
                    "must be a DNS name or a wildcard like *.example.com",
                );
            }
        }
        let chain = check_cert_chain(&mut v, &self.cert);
        check_key(&mut v, &self.key, chain);
        v.finish()
    }
}

/// The certificates of a PEM bundle (a chain, or CAs to trust), each checked to parse
/// as X.509; otherwise every problem found. Used for `cert` here and an upstream's
/// `tls.ca`.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, Vec<String>> {
    let certs: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = match certs {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => return Err(vec!["must hold at least one PEM certificate".to_owned()]),
        Err(e) => return Err(vec![format!("is not valid PEM: {e}")]),
    };
    let problems: Vec<String> = certs
        .iter()
        .enumerate()
        .filter_map(|(i, der)| {
            let e = x509_parser::parse_x509_certificate(der).err()?;
            Some(format!("certificate {i} is not valid X.509: {e}"))
        })
        .collect();
    if problems.is_empty() {
        Ok(certs)
    } else {
        Err(problems)
    }
}

/// Parses the chain; returns it when every certificate is valid X.509. The leaf must
/// be valid now.
fn check_cert_chain(v: &mut Validator, pem: &str) -> Option<Vec<CertificateDer<'static>>> {
    let certs = match pem_certificates(pem) {
        Ok(certs) => certs,
        Err(problems) => {
            for problem in problems {
                v.error("cert", problem);
            }
            return None;
        }
    };
    if let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&certs[0]) {
        if !leaf.validity().is_valid() {
            let not_after = leaf.validity().not_after;
            let not_before = leaf.validity().not_before;
            v.error(
                "cert",
                format!("is not valid now (valid from {not_before} to {not_after})"),
            );
        }
    }
    Some(certs)
}

/// Loads the key as a TLS server would and, when the chain parsed, checks that it
/// belongs to the leaf certificate. Messages never quote the key: it is a secret.
fn check_key(v: &mut Validator, pem: &str, chain: Option<Vec<CertificateDer<'static>>>) {
    if pem.trim().is_empty() {
        return v.error("key", "must hold a PEM private key");
    }
    let Ok(der) = PrivateKeyDer::from_pem_slice(pem.as_bytes()) else {
        return v.error("key", "is not a PEM private key (PKCS#8, PKCS#1 or SEC1)");
    };
    let Ok(signing_key) = rustls::crypto::ring::sign::any_supported_type(&der) else {
        return v.error("key", "is not a usable RSA, ECDSA or Ed25519 private key");
    };
    if let Some(chain) = chain {
        let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            v.error("key", "does not match the certificate's public key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = include_str!("../tests/fixtures/example.crt");
    const KEY: &str = include_str!("../tests/fixtures/example.key");

    fn cert() -> Certificate {
        Certificate {
            id: "c1".into(),
            snis: vec!["example.test".into(), "*.example.test".into()],
            cert: CERT.into(),
            key: KEY.into(),
        }
    }

    fn fields(c: &Certificate) -> Vec<String> {
        match c.validate() {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn debug_output_leaves_the_key_out() {
        let c = Certificate {
            key: "-----BEGIN PRIVATE KEY-----secret".into(),
            ..cert()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains(&c.id),
            "{shown}"
        );
    }

    #[test]
    fn valid_certificate_passes() {
        assert_eq!(fields(&cert()), Vec::<String>::new());
    }

    #[test]
    fn each_rule_is_reported() {
        let mut c = cert();
        c.snis = vec![];
        assert_eq!(fields(&c), ["snis"]);
        let mut c = cert();
        c.snis = vec!["ok.test".into(), "1.2.3.4".into()];
        assert_eq!(fields(&c), ["snis[1]"]);
        let mut c = cert();
        c.cert = "not pem".into();
        assert_eq!(fields(&c), ["cert"]);
        let mut c = cert();
        c.cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
        assert_eq!(fields(&c), ["cert"]);
        let mut c = cert();
        c.key = String::new();
        assert_eq!(fields(&c), ["key"]);
        let mut c = cert();
        c.key = "garbage".into();
        assert_eq!(fields(&c), ["key"]);
        let mut c = cert();
        c.key = include_str!("../tests/fixtures/other.key").into();
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.0[0].field, "key");
        assert!(errs.0[0].message.contains("does not match"), "{errs}");
    }

    #[test]
    fn key_is_never_echoed() {
        let mut c = cert();
        c.key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        let json = serde_json::to_string(&cert().redacted()).unwrap();
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        assert!(!json.contains("\"key\""), "{json}");
    }
}
