//! TLS and mutual TLS on the gRPC port, with certificates minted per test run, and
//! their rotation the way Kubernetes swaps a mounted Secret, while the port serves.

mod common;

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use untaken::proto::v1::mirror_client::MirrorClient;

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn new_ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `name` signed by `issuer`, and its key (PEM).
fn leaf(name: &str, issuer: &CertifiedIssuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let (ca, other_ca) = (new_ca(), new_ca());
    Pki {
        ca_pem: ca.pem(),
        server: leaf("localhost", &ca),
        client: leaf("router", &ca),
        stranger: leaf("router", &other_ca),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

async fn client(addr: std::net::SocketAddr, ca: &str, identity: Option<&(String, String)>) -> Result<MirrorClient<tonic::transport::Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.timeout(Duration::from_secs(5)).connect().await?;
    Ok(MirrorClient::new(ch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_signed_by_the_configured_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let tls = untaken::config::TlsConfig {
        cert_file: write(dir.path(), "server.pem", &pki.server.0).into(),
        key_file: write(dir.path(), "server.key", &pki.server.1).into(),
        client_ca_file: Some(write(dir.path(), "ca.pem", &pki.ca_pem).into()),
    };
    let t = common::app::spawn_app("mtls", |c| c.server.tls = Some(tls)).await;
    let addr = t.app.grpc_addr;
    let req = || common::app::mirror_req("tls-1", "fast", Some(common::app::primary_answer("p")));

    let mut ok = client(addr, &pki.ca_pem, Some(&pki.client)).await.expect("trusted client connects");
    assert!(ok.mirror(req()).await.unwrap().into_inner().sampled);

    for (what, identity) in [("no client certificate", None), ("certificate from another CA", Some(&pki.stranger))] {
        let refused = match client(addr, &pki.ca_pem, identity).await {
            Err(_) => true,
            Ok(mut c) => c.mirror(req()).await.is_err(),
        };
        assert!(refused, "{what} must be refused");
    }
    // Plaintext is refused on a TLS port.
    let plain = MirrorClient::connect(format!("http://{addr}")).await;
    if let Ok(mut c) = plain {
        assert!(c.mirror(req()).await.is_err(), "plaintext call on the TLS port");
    }
    t.app.shutdown();
    t.app.wait().await;
}

/// A `Mirror` call on `c` is answered.
async fn answered(c: &mut MirrorClient<tonic::transport::Channel>, id: &str) -> bool {
    c.mirror(common::app::mirror_req(id, "fast", Some(common::app::primary_answer("p")))).await.is_ok()
}

/// A new connection trusting `ca` and presenting `identity` completes a call.
async fn admitted(addr: std::net::SocketAddr, ca: &str, identity: &(String, String), id: &str) -> bool {
    match client(addr, ca, Some(identity)).await {
        Ok(mut c) => answered(&mut c, id).await,
        Err(_) => false,
    }
}

/// cert-manager renews the server certificate (and here the client CA too) by swapping the
/// Secret's `..data` link: new handshakes get the new certificate and CA, the connection
/// established before keeps working, and a broken version is rejected, counted, and the
/// one in force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_serve_new_connections_and_keep_established_ones() {
    let (server_ca_old, server_ca_new) = (new_ca(), new_ca());
    let (client_ca_old, client_ca_new) = (new_ca(), new_ca());
    let (server_old, server_new) = (leaf("localhost", &server_ca_old), leaf("localhost", &server_ca_new));
    let (router_old, router_new) = (leaf("router", &client_ca_old), leaf("router", &client_ca_new));
    let (old_trust, new_trust) = (server_ca_old.pem(), server_ca_new.pem());
    let dir = tempfile::tempdir().unwrap();
    let volume = untaken::simulate::SecretVolume::new(dir.path());
    let swap = |cert: &str, key: &str, ca: &str| {
        volume.update(&[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes()), ("ca.crt", ca.as_bytes())])
    };
    swap(&server_old.0, &server_old.1, &client_ca_old.pem());
    let tls = untaken::config::TlsConfig {
        cert_file: volume.path("tls.crt"),
        key_file: volume.path("tls.key"),
        client_ca_file: Some(volume.path("ca.crt")),
    };
    let t = common::app::spawn_app("tls-rotation", |c| {
        c.server.secret_poll_interval = Duration::from_millis(100);
        c.server.tls = Some(tls);
    })
    .await;
    let addr = t.app.grpc_addr;
    let ok = r#"untaken_secret_reloads_total{secret="server.tls",outcome="ok"}"#;
    let rejected = r#"untaken_secret_reloads_total{secret="server.tls",outcome="rejected"}"#;

    let mut established = client(addr, &old_trust, Some(&router_old)).await.expect("connects with the first certificate");
    assert!(answered(&mut established, "r-1").await);
    assert!(!admitted(addr, &new_trust, &router_new, "r-2").await, "the new certificate is not served yet");

    swap(&server_new.0, &server_new.1, &client_ca_new.pem());
    common::app::wait_metric(&t.app, ok, 1.0).await;
    // Reconnecting would fail (the old CA no longer verifies the server): this is the same connection.
    assert!(answered(&mut established, "r-3").await, "the established connection is not dropped");
    assert!(!admitted(addr, &old_trust, &router_old, "r-4").await, "a new connection gets the new certificate");
    assert!(admitted(addr, &new_trust, &router_new, "r-5").await, "the new certificate and client CA are in force");
    assert!(!admitted(addr, &new_trust, &router_old, "r-6").await, "the replaced client CA no longer admits its clients");

    let (_, stray_key) = leaf("localhost", &server_ca_new);
    let broken: [(&str, &str, &str); 2] = [
        (&server_new.0, &stray_key, "a key that is not the certificate's"),
        ("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", &server_new.1, "an unparsable certificate"),
    ];
    for (i, (cert, key, what)) in broken.into_iter().enumerate() {
        swap(cert, key, &client_ca_new.pem());
        common::app::wait_metric(&t.app, rejected, (i + 1) as f64).await;
        assert!(admitted(addr, &new_trust, &router_new, &format!("r-broken-{i}")).await, "after {what}, the certificate in force still serves");
        assert!(answered(&mut established, &format!("r-est-{i}")).await, "after {what}, the established connection still works");
    }
    let m = common::app::metrics(&t.app).await;
    assert_eq!(common::app::metric(&m, ok), 1.0, "{m}");
    t.app.shutdown();
    t.app.wait().await;
}

/// A key that is not the certificate's (or a certificate that does not parse) is a
/// configuration error naming the file's key: `check-config` and `serve` exit 64 with it.
#[test]
fn a_mismatched_key_is_a_config_error_naming_the_key() {
    let ca = new_ca();
    let (cert, _) = leaf("localhost", &ca);
    let (_, stray_key) = leaf("localhost", &ca);
    let dir = tempfile::tempdir().unwrap();
    for (cert, key, named) in [(cert.as_str(), stray_key.as_str(), "server.tls.key_file"), ("not pem", stray_key.as_str(), "server.tls.cert_file")] {
        let mut config = untaken::config::Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.admin_listen = "127.0.0.1:0".into();
        config.server.tls = Some(untaken::config::TlsConfig {
            cert_file: write(dir.path(), "server.pem", cert).into(),
            key_file: write(dir.path(), "server.key", key).into(),
            client_ca_file: None,
        });
        config.routes.insert("r".into(), common::config::route("http://127.0.0.1:1/", "m"));
        config.sink.file.path = dir.path().join("pairs.jsonl");
        config.spool.dir = Some(dir.path().join("spool"));
        let text = common::config::to_toml(&config);
        // Validation is what `check-config` and `serve` run first.
        let e = untaken::config::from_toml(&text).expect_err(named);
        assert_eq!(e.key, named, "{e}");
    }
}
