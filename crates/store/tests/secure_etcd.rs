//! The etcd backend against Debian's etcd with TLS (client certificates required) and
//! with authentication enabled: the right CA, certificate and password work; a wrong
//! CA, a missing client certificate, a wrong password or no user are refused, and the
//! password never appears in an error.

use std::sync::Arc;
use std::time::Duration;

use store::{ConfigStore, Op, StoreOptions, StoreTls, StoreUser, Txn};
use testkit::etcd::{EtcdServer, EtcdTls};
use testkit::tls::TestCa as Ca;

fn put(key: &str, value: &str) -> Txn {
    Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            lease: None,
        }],
    }
}

/// Writes and reads back one key.
async fn round_trip(store: &Arc<dyn ConfigStore>) -> Result<(), store::StoreError> {
    store.txn(put("/portico/t", "v")).await?;
    let kv = store.get("/portico/t").await?.expect("written");
    assert_eq!(kv.value, b"v");
    Ok(())
}

async fn open(
    etcd: &EtcdServer,
    options: &StoreOptions,
) -> Result<Arc<dyn ConfigStore>, store::StoreError> {
    store::open_with(&etcd.store_url(), options)
        .await
        .map(|(store, _)| store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    let ca = Ca::new("etcd ca");
    let clients = Ca::new("etcd clients");
    let server = ca.server(&["127.0.0.1"]);
    let (cert, key) = (server.cert, server.key);
    let client = clients.client();
    let (client_cert, client_key) = (client.cert, client.key);
    let etcd = EtcdServer::launch_tls(EtcdTls {
        cert,
        key,
        client_ca: clients.pem(),
        ca: ca.pem(),
        helper_cert: client_cert.clone(),
        helper_key: client_key.clone(),
    });
    let tls = StoreTls {
        ca: ca.pem().into_bytes(),
        client_cert: Some(client_cert.into_bytes()),
        client_key: Some(client_key.into_bytes()),
    };

    // The right CA and a client certificate: served.
    let options = StoreOptions {
        tls: Some(tls.clone()),
        user: None,
    };
    let store = open(&etcd, &options).await.unwrap();
    round_trip(&store).await.unwrap();

    // Another CA: etcd's certificate is refused.
    let wrong_ca = StoreOptions {
        tls: Some(StoreTls {
            ca: Ca::new("other").pem().into_bytes(),
            ..tls.clone()
        }),
        user: None,
    };
    let store = open(&etcd, &wrong_ca).await.unwrap();
    assert!(store.get("/portico/t").await.is_err());

    // No client certificate: etcd refuses the client.
    let anonymous = StoreOptions {
        tls: Some(StoreTls {
            client_cert: None,
            client_key: None,
            ..tls.clone()
        }),
        user: None,
    };
    let store = open(&etcd, &anonymous).await.unwrap();
    assert!(store.get("/portico/t").await.is_err());

    // Plain HTTP to a TLS etcd does not work either.
    let store = open(&etcd, &StoreOptions::default()).await.unwrap();
    assert!(store.get("/portico/t").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_a_user_and_password() {
    const PASSWORD: &str = "s3cret-etcd-password";
    let mut etcd = EtcdServer::launch();
    etcd.enable_auth(PASSWORD);
    let user = |password: &str| StoreOptions {
        tls: None,
        user: Some(StoreUser {
            name: "root".to_owned(),
            password: password.to_owned(),
        }),
    };

    let store = open(&etcd, &user(PASSWORD)).await.unwrap();
    round_trip(&store).await.unwrap();
    assert!(!format!("{:?}", user(PASSWORD)).contains(PASSWORD));

    // A wrong password is refused at once, and the error does not quote it.
    let error = open(&etcd, &user("wrong-password-123"))
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(message.contains("refused user"), "{message}");
    assert!(!message.contains("wrong-password-123"), "{message}");

    // Without a user, requests are refused.
    let anonymous = open(&etcd, &StoreOptions::default()).await.unwrap();
    assert!(anonymous.get("/portico/t").await.is_err());

    // Made while etcd is down (a gateway starting from its snapshot), the store
    // authenticates once etcd is back.
    etcd.stop();
    let store = tokio::time::timeout(Duration::from_secs(10), open(&etcd, &user(PASSWORD)))
        .await
        .expect("opening does not wait for etcd")
        .expect("opening does not fail while etcd is down");
    etcd.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.get("/portico/t").await {
            Ok(Some(kv)) => {
                assert_eq!(kv.value, b"v");
                break;
            }
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never served: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
