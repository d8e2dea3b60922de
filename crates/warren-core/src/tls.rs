//! The TLS listener's server configuration (rustls, the `ring` provider): the PEM certificate
//! chain and key, and for client certificates a CA bundle with RabbitMQ's `verify_peer` and
//! `fail_if_no_peer_cert`. TLS 1.2 and 1.3. Also the user name EXTERNAL takes from a client
//! certificate (its subject's CN, as RabbitMQ's default `ssl_cert_login_from = common_name`).

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read TLS {what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid TLS {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in TLS {what} {}", path.display()));
    }
    Ok(certs)
}

/// The leaf certificate must be valid now: an expired one is a startup error.
fn check_validity(cert: &CertificateDer<'_>, path: &Path) -> Result<(), String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("invalid TLS certificate {}: {e}", path.display()))?;
    if !x.validity().is_valid() {
        return Err(format!(
            "TLS certificate {} is not valid now (valid from {} to {})",
            path.display(),
            x.validity().not_before,
            x.validity().not_after
        ));
    }
    Ok(())
}

/// Builds the acceptor from `[tls]`; the error is one line naming the file at fault.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, String> {
    let chain = certs(&cfg.cert, "certificate")?;
    check_validity(&chain[0], &cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| format!("cannot read TLS key {}: {e}", cfg.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if cfg.verify_peer {
        if cfg.ca.as_os_str().is_empty() {
            return Err(
                "tls.verify_peer needs tls.ca (the CA bundle of client certificates)".into(),
            );
        }
        let mut roots = RootCertStore::empty();
        for c in certs(&cfg.ca, "CA bundle")? {
            roots
                .add(c)
                .map_err(|e| format!("invalid TLS CA bundle {}: {e}", cfg.ca.display()))?;
        }
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let v = if cfg.fail_if_no_peer_cert {
            v
        } else {
            v.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(v.build().map_err(|e| format!("TLS: {e}"))?)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "TLS certificate {} and key {}: {e}",
            cfg.cert.display(),
            cfg.key.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The CN of a (verified) client certificate's subject.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = x.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The user name EXTERNAL logs in as, taken from a verified client certificate as
/// `tls.cert_login_from` says (RabbitMQ's `ssl_cert_login_from` and its SAN options).
pub fn login_name(cert: &CertificateDer<'_>, cfg: &TlsConfig) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match cfg.cert_login_from.as_str() {
        "distinguished_name" => {
            let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
            Some(subject_dn(x.subject()))
        }
        "subject_alternative_name" => {
            let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
            let san = x.subject_alternative_name().ok()??;
            san.value
                .general_names
                .iter()
                .filter_map(|n| match (cfg.cert_login_san_type.as_str(), n) {
                    ("dns", GeneralName::DNSName(v)) => Some((*v).to_string()),
                    ("email", GeneralName::RFC822Name(v)) => Some((*v).to_string()),
                    ("uri", GeneralName::URI(v)) => Some((*v).to_string()),
                    ("ip", GeneralName::IPAddress(b)) => ip_text(b),
                    _ => None,
                })
                .nth(cfg.cert_login_san_index)
        }
        _ => common_name(cert),
    }
}

/// The subject as RabbitMQ's `rabbit_cert_info:subject/1` writes it (RFC 4514): the RDNs in
/// reverse order joined by `,`, multi-valued RDNs joined by `+`, RabbitMQ's attribute names
/// (dotted OIDs for the rest), values escaped as RabbitMQ escapes them. This string is the
/// user name EXTERNAL logs in as with `cert_login_from = distinguished_name`, so it must be
/// byte for byte what RabbitMQ makes of the same certificate.
pub fn subject_dn(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    let key = dn_attribute_name(&oid).map_or(oid.clone(), str::to_owned);
                    let value = match attr.as_str() {
                        Ok(v) => v.to_owned(),
                        Err(_) => String::from_utf8_lossy(attr.attr_value().data).into_owned(),
                    };
                    format!("{key}={}", escape_dn_value(&value))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RabbitMQ's names for subject attributes (`rabbit_cert_info:format_rdn/1`).
fn dn_attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GIVENNAME",
        "2.5.4.43" => "INITIALS",
        "2.5.4.44" => "GENERATIONQUALIFIER",
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "TITLE",
        "2.5.4.6" => "C",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.65" => "PSEUDONYM",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// RFC 4514 escaping as RabbitMQ does it: a leading space or `#`, a trailing space and
/// `" + , ; < > \` get a backslash; bytes below 32 or from 126 up (every byte of a non-ASCII
/// character) become `\XX`.
fn escape_dn_value(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = String::with_capacity(v.len());
    for (i, &b) in bytes.iter().enumerate() {
        let leading = i == 0 && (b == b' ' || b == b'#');
        let trailing = i > 0 && i + 1 == bytes.len() && b == b' ';
        if leading || trailing || matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\') {
            out.push('\\');
            out.push(char::from(b));
        } else if !(32..126).contains(&b) {
            out.push_str(&format!("\\{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => {
            let a: [u8; 4] = b.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(a).to_string())
        }
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(a).to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod dn_tests {
    use super::escape_dn_value;

    #[test]
    fn values_are_escaped_as_rabbitmq_escapes_them() {
        assert_eq!(escape_dn_value("app"), "app");
        assert_eq!(escape_dn_value(" a#b "), "\\ a#b\\ ");
        assert_eq!(escape_dn_value("#x"), "\\#x");
        assert_eq!(
            escape_dn_value("Acme, Inc+\"x\""),
            "Acme\\, Inc\\+\\\"x\\\""
        );
        assert_eq!(escape_dn_value("é"), "\\C3\\A9");
    }
}
