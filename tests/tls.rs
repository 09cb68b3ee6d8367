//! TLS and mutual TLS on the gRPC port, with certificates minted per test run.

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

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, issuer: &CertifiedIssuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_ca = CertifiedIssuer::self_signed(other_params, KeyPair::generate().unwrap()).unwrap();
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
