//! SIGHUP reloads the TLS certificate and key: new connections are served with the new
//! certificate, a connection opened before keeps working, and a reload from unusable files
//! keeps the old certificate.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn issue(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.signed_by(&key, ca).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec()
}

async fn tls_connect(
    port: u16,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca"))
        .expect("root");
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

async fn served_cert(port: u16, ca: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tls_connect(port, ca).await {
            Ok(s) => {
                return s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec())
                    .expect("a server certificate")
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("TLS connect: {e}"),
        }
    }
}

fn hup(pid: u32) {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -HUP");
}

/// A self-signed test CA.
fn test_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA")
}

/// The `warren` binary on loopback with AMQP on `port`, AMQPS on `tls_port` with `dir`'s
/// `cert.pem`/`key.pem`, data in `dir/data`, plain management off; more flags may follow.
fn warren_tls(dir: &Path, port: u16, tls_port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.env("WARREN_MANAGEMENT_PORT", "0")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--tls-port", &tls_port.to_string(), "--log-level", "warn"])
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write pem");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca("reload CA");
    let ca_pem = ca.pem();
    let (first, first_key) = issue(&ca, "first");
    let (second, second_key) = issue(&ca, "second");
    write(dir.path(), "cert.pem", &first);
    write(dir.path(), "key.pem", &first_key);
    let (port, tls_port) = (free_port(), free_port());
    let mut child = warren_tls(dir.path(), port, tls_port)
        .env("WARREN_PROMETHEUS_PORT", "0")
        .spawn()
        .expect("spawn warren");
    assert_eq!(served_cert(tls_port, &ca_pem).await, der(&first));
    let mut before = tls_connect(tls_port, &ca_pem).await.expect("connect");

    write(dir.path(), "cert.pem", &second);
    write(dir.path(), "key.pem", &second_key);
    hup(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_cert(tls_port, &ca_pem).await != der(&second) {
        assert!(Instant::now() < deadline, "the new certificate is served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection made before the reload still talks AMQP.
    before
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("header");
    let mut buf = [0u8; 7];
    before.read_exact(&mut buf).await.expect("connection.start");
    assert_eq!(buf[0], 1, "a method frame");

    // Unusable files: logged, and the certificate in use stays.
    write(dir.path(), "cert.pem", "not a certificate");
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_cert(tls_port, &ca_pem).await, der(&second));
    assert!(child.try_wait().expect("wait").is_none(), "still running");
    let _ = child.kill();
    let _ = child.wait();
}

/// `GET path` over a TLS stream (HTTP/1.1, connection closed after), as guest: status line and
/// body.
async fn https_get(port: u16, ca: &str, path: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match tls_connect(port, ca).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("TLS connect to {port}: {e}"),
        }
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// `--prometheus-ssl-port` (RabbitMQ's `prometheus.ssl.port`) serves the metrics over HTTPS
/// with the `[tls]` certificate, beside the plain endpoint, and the management API lists it
/// as `https/prometheus`.
#[tokio::test]
async fn prometheus_over_https_from_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = test_ca("metrics CA");
    let ca_pem = ca.pem();
    let (cert, key) = issue(&ca, "localhost");
    write(dir.path(), "cert.pem", &cert);
    write(dir.path(), "key.pem", &key);
    let [port, tls_port, mgmt_tls, prom, prom_tls] = [(); 5].map(|()| free_port());
    let mut child = warren_tls(dir.path(), port, tls_port)
        .args(["--management-bind", "127.0.0.1"])
        .args(["--management-ssl-port", &mgmt_tls.to_string()])
        .args(["--prometheus-bind", "127.0.0.1"])
        .args(["--prometheus-port", &prom.to_string()])
        .args(["--prometheus-ssl-port", &prom_tls.to_string()])
        .spawn()
        .expect("spawn warren");
    let (status, body) = https_get(prom_tls, &ca_pem, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        body.contains("# TYPE rabbitmq_"),
        "Prometheus text: {body:.200}"
    );
    let (status, body) = https_get(prom_tls, &ca_pem, "/metrics/per-object").await;
    assert!(
        status.contains(" 200 ") && body.contains("# TYPE"),
        "{status}"
    );
    let (status, _) = https_get(prom_tls, &ca_pem, "/nope").await;
    assert!(status.contains(" 404 "), "{status}");
    // The plain endpoint is still there.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", prom))
        .await
        .expect("plain metrics");
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    // Both HTTPS listeners are listed.
    let (status, body) = https_get(mgmt_tls, &ca_pem, "/api/overview").await;
    assert!(status.contains(" 200 "), "{status} {body}");
    let overview: serde_json::Value = serde_json::from_str(&body).expect("json");
    let listed = |proto: &str, port: u16| {
        overview["listeners"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x["protocol"] == proto && x["port"] == port)
        })
    };
    assert!(listed("https/prometheus", prom_tls), "{overview}");
    assert!(listed("http/prometheus", prom), "{overview}");
    let _ = child.kill();
    let _ = child.wait();
}
