//! TLS through its public API: the certificate table (SNI lookup precedence,
//! contested names, bad certificates reported without key material) and the upstream
//! peers' transport per scheme.

use gateway::tls::{configure_peer, CertTable};
use model::certificate::Certificate;
use model::upstream::{Scheme, UpstreamTls};
use pingora_core::upstreams::peer::HttpPeer;

/// A CA and leaf certificates signed by it, generated per test run.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portico test ca");
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn cert(&self, id: &str, snis: &[&str]) -> Certificate {
        let names: Vec<String> = snis.iter().map(|s| (*s).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Certificate {
            id: id.into(),
            snis: snis.iter().map(|s| (*s).to_owned()).collect(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn table(certs: &[Certificate]) -> CertTable {
    let (table, problems) = CertTable::build(certs);
    assert_eq!(problems, Vec::<(String, String)>::new());
    table
}

#[test]
fn lookup_precedence() {
    let ca = Ca::new();
    let table = table(&[
        ca.cert("wild", &["*.example.test"]),
        ca.cert("exact", &["api.example.test"]),
        ca.cert("deeper", &["*.eu.example.test", "Mixed.Case.Test"]),
    ]);
    let cases = [
        // exact beats the wildcard that also covers it
        ("api.example.test", Some("exact")),
        ("other.example.test", Some("wild")),
        // a wildcard covers one label, no more, no less
        ("example.test", None),
        ("a.b.example.test", None),
        ("x.eu.example.test", Some("deeper")),
        ("eu.example.test", Some("wild")),
        // case-insensitive, both ways, and a trailing dot is the same name
        ("API.Example.TEST", Some("exact")),
        ("mixed.case.test", Some("deeper")),
        ("api.example.test.", Some("exact")),
        // unknown
        ("unknown.test", None),
        ("", None),
        ("test", None),
    ];
    for (sni, want) in cases {
        assert_eq!(table.certificate_id(sni), want, "sni {sni:?}");
        assert_eq!(table.lookup(sni).is_some(), want.is_some(), "sni {sni:?}");
    }
    assert_eq!(table.len(), 4);
}

#[test]
fn first_certificate_keeps_a_contested_name() {
    let ca = Ca::new();
    let (table, problems) = CertTable::build(&[
        ca.cert("one", &["a.test"]),
        ca.cert("two", &["A.test", "b.test"]),
    ]);
    assert_eq!(table.certificate_id("a.test"), Some("one"));
    assert_eq!(table.certificate_id("b.test"), Some("two"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "two");
    assert!(
        problems[0]
            .1
            .contains("already served by certificate \"one\""),
        "{problems:?}"
    );
}

#[test]
fn bad_certificates_are_reported_by_id_without_the_key() {
    let ca = Ca::new();
    let good = ca.cert("good", &["good.test"]);
    let other = ca.cert("other", &["other.test"]);
    let secret =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
    let garbage_key = Certificate {
        id: "garbage-key".into(),
        key: secret.into(),
        ..good.clone()
    };
    let not_pem = Certificate {
        id: "not-pem".into(),
        key: "c2VjcmV0IGtleSBtYXRlcmlhbA==".into(),
        ..good.clone()
    };
    let mismatch = Certificate {
        id: "mismatch".into(),
        key: other.key.clone(),
        ..good.clone()
    };
    let no_cert = Certificate {
        id: "no-cert".into(),
        cert: "nothing here".into(),
        ..good.clone()
    };
    let (table, problems) = CertTable::build(&[garbage_key, not_pem, mismatch, no_cert, good]);
    let ids: Vec<&str> = problems.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["garbage-key", "not-pem", "mismatch", "no-cert"]);
    assert!(problems[2].1.contains("does not match"), "{problems:?}");
    for (_, reason) in &problems {
        for leak in ["c2VjcmV0", "PRIVATE KEY", &other.key[40..80]] {
            assert!(!reason.contains(leak), "{reason:?} leaks key material");
        }
    }
    // The good certificate still serves; its name was not taken by the bad ones.
    assert_eq!(table.certificate_id("good.test"), Some("good"));
    assert!(!format!("{table:?}").contains("PRIVATE"));
}

#[test]
fn peer_transport_follows_the_scheme() {
    use pingora_core::protocols::ALPN;
    let addr: std::net::SocketAddr = "127.0.0.1:443".parse().unwrap();
    let new = || HttpPeer::new(addr, false, String::new());

    let mut p = new();
    configure_peer(&mut p, Scheme::Http, None, "backend");
    assert!(!p.is_tls());
    assert_eq!(p.options.alpn, ALPN::H1);

    let mut p = new();
    configure_peer(&mut p, Scheme::Grpc, None, "backend");
    assert!(!p.is_tls());
    assert_eq!(p.options.alpn, ALPN::H2);

    let mut p = new();
    configure_peer(&mut p, Scheme::Https, None, "backend.test");
    assert!(p.is_tls());
    assert_eq!(p.sni, "backend.test");
    assert!(p.options.verify_cert && p.options.verify_hostname);
    assert_eq!(p.options.alpn, ALPN::H1);

    let mut p = new();
    let tls = UpstreamTls {
        verify: false,
        sni: Some("named.test".into()),
        ca: None,
    };
    configure_peer(&mut p, Scheme::Grpcs, Some(&tls), "10.0.0.1");
    assert!(p.is_tls());
    assert_eq!(p.sni, "named.test");
    assert!(!p.options.verify_cert && !p.options.verify_hostname);
    assert_eq!(p.options.alpn, ALPN::H2);
}
