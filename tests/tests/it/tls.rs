//! The TLS listener (issue 13): lapin over TLS (through a local TLS-terminating relay the test
//! runs, so lapin's plain TCP transport rides a real rustls session to the broker), EXTERNAL
//! with a client certificate's CN, a certificate from another CA refused, and plain AMQP or
//! garbage on the TLS port dropped while other connections keep working. Certificates are
//! generated in the test with rcgen.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use warren_core::metadata::{Command, PermissionDef};
use warren_core::{Broker, Config};

const WAIT: Duration = Duration::from_secs(10);

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA"),
        }
    }

    /// A certificate (PEM) and its key (PEM) with subject CN `cn` and `san` as DNS names.
    fn issue(&self, cn: &str, san: &[&str]) -> (String, String) {
        self.issue_dn(&[(DnType::CommonName, cn)], san)
    }

    /// A certificate whose subject has the attributes `dn`, in this order.
    fn issue_dn(&self, dn: &[(DnType, &str)], san: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(san.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        let cert = p.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca_pem: &str, client: Option<&(String, String)>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("cert pem");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem");
            b.with_client_auth_cert(chain, key).expect("client auth")
        }
        None => b.with_no_client_auth(),
    }
}

async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// A local plain-TCP port whose connections are relayed over TLS to `broker`.
async fn relay(broker: SocketAddr, config: ClientConfig) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = l.local_addr().expect("addr");
    let config = Arc::new(config);
    tokio::spawn(async move {
        while let Ok((mut plain, _)) = l.accept().await {
            let config = config.clone();
            tokio::spawn(async move {
                let tcp = TcpStream::connect(broker).await.expect("connect broker");
                let name = ServerName::try_from("localhost").expect("name");
                if let Ok(mut tls) = TlsConnector::from(config).connect(name, tcp).await {
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                }
            });
        }
    });
    addr
}

struct TlsBroker {
    plain: SocketAddr,
    tls: SocketAddr,
    shutdown: CancellationToken,
    ca: String,
    client: (String, String),
    /// CN `nobody`, DNS SANs `first.example` and `guest`.
    san_client: (String, String),
    other_client: (String, String),
    /// Subject `O=Warren Test, OU=ops+x, CN=app` (in that order in the certificate).
    dn_client: (String, String),
    broker: Arc<Broker>,
    _dir: tempfile::TempDir,
}

async fn start(fail_if_no_peer_cert: bool) -> TlsBroker {
    start_with(fail_if_no_peer_cert, |_| {}).await
}

async fn start_with(fail_if_no_peer_cert: bool, tweak: impl FnOnce(&mut Config)) -> TlsBroker {
    warren_tests::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("warren test CA");
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    let mut config = Config::default();
    config.tls.cert = write("server.pem", &cert);
    config.tls.key = write("server.key", &key);
    config.tls.ca = write("ca.pem", &ca.issuer.pem());
    config.tls.verify_peer = true;
    config.tls.fail_if_no_peer_cert = fail_if_no_peer_cert;
    config.tls.bind = "127.0.0.1".into();
    config.tls.port = 0;
    tweak(&mut config);
    let tls = warren_core::server::bind_tls(&config)
        .await
        .expect("tls")
        .expect("enabled");
    let tls_addr = tls.listener.local_addr().expect("addr");
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain_addr = plain.local_addr().expect("addr");
    let broker = Broker::new(config);
    let shutdown = CancellationToken::new();
    tokio::spawn(warren_core::server::run_broker_with(
        broker.clone(),
        vec![plain],
        Some(tls),
        shutdown.clone(),
    ));
    let other = Ca::new("someone else's CA");
    TlsBroker {
        plain: plain_addr,
        tls: tls_addr,
        shutdown,
        ca: ca.issuer.pem(),
        client: ca.issue("guest", &[]),
        san_client: ca.issue("nobody", &["first.example", "guest"]),
        other_client: other.issue("guest", &[]),
        dn_client: ca.issue_dn(
            &[
                (DnType::OrganizationName, "Warren Test"),
                (DnType::OrganizationalUnitName, "ops+x"),
                (DnType::CommonName, "app"),
            ],
            &[],
        ),
        broker,
        _dir: dir,
    }
}

async fn lapin(uri: &str) -> lapin::Result<Connection> {
    tokio::time::timeout(
        WAIT,
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .expect("in time")
}

async fn round_trip(c: &Connection) {
    let ch = c.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"over tls",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(m) = ch
                .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("message in time");
    assert_eq!(got.delivery.data, b"over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_over_tls_with_plain_and_external_login() {
    let b = start(false).await;
    // PLAIN over TLS, without a client certificate (allowed unless fail_if_no_peer_cert).
    let r = relay(b.tls, client_config(&b.ca, None)).await;
    let c = lapin(&format!("amqp://guest:guest@{r}/%2f"))
        .await
        .expect("PLAIN over TLS");
    round_trip(&c).await;
    // EXTERNAL: the user is the certificate's CN (guest); no password is sent.
    let r = relay(b.tls, client_config(&b.ca, Some(&b.client))).await;
    let c2 = lapin(&format!("amqp://ignored@{r}/%2f?auth_mechanism=external"))
        .await
        .expect("EXTERNAL");
    round_trip(&c2).await;
    // EXTERNAL is not offered without a client certificate.
    let r = relay(b.tls, client_config(&b.ca, None)).await;
    assert!(
        lapin(&format!("amqp://guest@{r}/%2f?auth_mechanism=external"))
            .await
            .is_err()
    );
    // The plain listener goes on beside it.
    let c3 = lapin(&format!("amqp://guest:guest@{}/%2f", b.plain))
        .await
        .expect("plain");
    round_trip(&c3).await;
    b.shutdown.cancel();
}

/// `tls.cert_login_from = "subject_alternative_name"` (RabbitMQ's `ssl_cert_login_from`):
/// EXTERNAL logs in as the SAN of the configured kind and index, not the CN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_login_from_the_subject_alternative_name() {
    let b = start_with(false, |c| {
        c.tls.cert_login_from = "subject_alternative_name".into();
        c.tls.cert_login_san_type = "dns".into();
        c.tls.cert_login_san_index = 1;
    })
    .await;
    // The client certificate of `start_with` has CN guest and no SAN: refused here.
    let r = relay(b.tls, client_config(&b.ca, Some(&b.client))).await;
    assert!(
        lapin(&format!("amqp://ignored@{r}/%2f?auth_mechanism=external"))
            .await
            .is_err(),
        "a certificate without SANs gives no user name"
    );
    // CN "nobody", SANs first.example (index 0) and guest (index 1): logs in as guest.
    let r = relay(b.tls, client_config(&b.ca, Some(&b.san_client))).await;
    let c = lapin(&format!("amqp://ignored@{r}/%2f?auth_mechanism=external"))
        .await
        .expect("EXTERNAL as the second DNS SAN");
    round_trip(&c).await;
    b.shutdown.cancel();
}

/// `tls.cert_login_from = "distinguished_name"` (RabbitMQ's default `ssl_cert_login_from`):
/// the user name is the whole subject as RabbitMQ writes it, last RDN first, `,` between
/// them and RFC 4514 escapes (`ops+x` becomes `ops\+x`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_login_from_the_distinguished_name() {
    let b = start_with(false, |c| {
        c.tls.cert_login_from = "distinguished_name".into();
    })
    .await;
    let user = "CN=app,OU=ops\\+x,O=Warren Test";
    b.broker
        .admin(Command::PutUser(warren_core::metadata::UserDef {
            name: user.into(),
            password_hash: warren_core::auth::password::hash("unused"),
            hashing_algorithm: warren_core::auth::password::SHA256.into(),
            tags: vec![],
            max_connections: None,
            max_channels: None,
        }))
        .await
        .expect("user");
    b.broker
        .admin(Command::SetPermissions(PermissionDef {
            user: user.into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }))
        .await
        .expect("permissions");
    let r = relay(b.tls, client_config(&b.ca, Some(&b.dn_client))).await;
    let c = lapin(&format!("amqp://ignored@{r}/%2f?auth_mechanism=external"))
        .await
        .expect("EXTERNAL as the subject DN");
    round_trip(&c).await;
    // The CN alone is not a user here: a certificate whose DN is `CN=guest` logs in as the
    // user named `CN=guest`, which does not exist.
    let r = relay(b.tls, client_config(&b.ca, Some(&b.client))).await;
    assert!(
        lapin(&format!("amqp://ignored@{r}/%2f?auth_mechanism=external"))
            .await
            .is_err(),
        "CN=guest is not the user guest"
    );
    b.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_plain_clients_and_garbage_are_dropped_cleanly() {
    let b = start(true).await;
    let r = relay(b.tls, client_config(&b.ca, Some(&b.client))).await;
    let keep = lapin(&format!("amqp://guest:guest@{r}/%2f"))
        .await
        .expect("with a certificate");
    // fail_if_no_peer_cert: no certificate, no AMQP.
    let refused = |r: std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>| async move {
        let Ok(mut s) = r else { return true };
        // TLS 1.3 reports the client certificate's rejection on the first read.
        let _ = s.write_all(b"AMQP\x00\x00\x09\x01").await;
        let mut buf = [0u8; 16];
        !matches!(tokio::time::timeout(WAIT, s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
    };
    assert!(
        refused(tls_connect(b.tls, client_config(&b.ca, None)).await).await,
        "no certificate"
    );
    // A certificate from another CA.
    assert!(
        refused(tls_connect(b.tls, client_config(&b.ca, Some(&b.other_client))).await).await,
        "foreign CA"
    );
    // A plain AMQP client and garbage on the TLS port: the socket is closed.
    for bytes in [&b"AMQP\x00\x00\x09\x01"[..], &[0xffu8; 64][..]] {
        let mut s = TcpStream::connect(b.tls).await.expect("tcp");
        s.write_all(bytes).await.expect("write");
        let mut buf = [0u8; 64];
        let mut total = 0;
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => total += n,
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(closed, "dropped");
        assert!(total < 64, "no AMQP came back, at most a TLS alert");
    }
    // The verified connection kept working throughout.
    round_trip(&keep).await;
    b.shutdown.cancel();
}

#[test]
fn unreadable_or_expired_certificates_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = warren_core::config::TlsConfig {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing.key"),
        ..Default::default()
    };
    let e = warren_core::tls::acceptor(&t).err().expect("missing file");
    assert!(e.starts_with("cannot read TLS certificate"), "{e}");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = p.self_signed(&key).expect("cert");
    let write = |name: &str, text: &str| {
        let path: &Path = dir.path();
        let p = path.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    t.cert = write("old.pem", &cert.pem());
    t.key = write("old.key", &key.serialize_pem());
    let e = warren_core::tls::acceptor(&t).err().expect("expired");
    assert!(e.contains("is not valid now"), "{e}");
    assert!(!e.contains('\n'));
}

/// One HTTP/1.1 request over `stream`; the status code and the body.
async fn http_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("answer in time");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The management API over HTTPS (`management.ssl_port`, the `[tls]` certificate reused): a
/// client trusting the test CA lists the node's listeners and declares a queue that lapin then
/// finds over plain AMQP; a client trusting another CA and plain HTTP get no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_over_https() {
    warren_tests::init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("warren test CA");
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    let mut config = Config::default();
    config.tls.cert = write("server.pem", &cert);
    config.tls.key = write("server.key", &key);
    config.management.ssl_port = 15671;
    config.validate().expect("valid");
    let acceptor = warren_http::tls::acceptor(&config).expect("acceptor");
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let amqp = plain.local_addr().expect("addr");
    let https = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let https_addr = https.local_addr().expect("addr");
    let broker = Broker::new(config);
    let shutdown = CancellationToken::new();
    tokio::spawn(warren_core::server::run_broker_with(
        broker.clone(),
        vec![plain],
        None,
        shutdown.clone(),
    ));
    let (b, s) = (broker.clone(), shutdown.clone());
    tokio::spawn(async move {
        let app = warren_http::router(b.clone());
        warren_http::serve_router_tls(&b, app, https, acceptor, s).await
    });
    let trusted = || client_config(&ca.issuer.pem(), None);
    let tls = tls_connect(https_addr, trusted()).await.expect("handshake");
    let (status, body) = http_over(tls, "GET", "/api/overview", "").await;
    assert_eq!(status, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).expect("json");
    let https_listed = overview["listeners"].as_array().is_some_and(|l| {
        l.iter()
            .any(|x| x["protocol"] == "https" && x["port"] == https_addr.port())
    });
    assert!(https_listed, "{overview}");
    let tls = tls_connect(https_addr, trusted()).await.expect("handshake");
    let (status, body) = http_over(tls, "PUT", "/api/queues/%2F/over.https", "{}").await;
    assert_eq!(status, 201, "{body}");
    let c = lapin(&format!("amqp://guest:guest@{amqp}/%2f"))
        .await
        .expect("plain AMQP");
    let ch = c.create_channel().await.expect("channel");
    ch.queue_declare(
        "over.https".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the queue declared over HTTPS exists");
    // Not trusted: the handshake fails.
    let other = Ca::new("someone else's CA");
    assert!(
        tls_connect(https_addr, client_config(&other.issuer.pem(), None))
            .await
            .is_err()
    );
    // Plain HTTP on the HTTPS port: no HTTP answer.
    let tcp = TcpStream::connect(https_addr).await.expect("connect");
    let (status, _) = http_over(tcp, "GET", "/api/overview", "").await;
    assert_eq!(status, 0);
    // And it still serves trusted clients.
    let tls = tls_connect(https_addr, trusted()).await.expect("handshake");
    assert_eq!(http_over(tls, "GET", "/api/whoami", "").await.0, 200);
    shutdown.cancel();
}
