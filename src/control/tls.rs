//! TLS on the component link: the XEP-0114 stream inside a TLS connection from its first
//! byte (ejabberd's `tls: true` on an `ejabberd_service` listener, Prosody's `ssl_ports`
//! with mod_net_multiplex). XEP-0114 itself has no STARTTLS; without TLS the link must
//! stay on loopback or a private network (SECURITY.md).

use crate::config::{invalid, ConfigError};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// What a TLS connect needs: the client config and the name the certificate must match.
#[derive(Debug, Clone)]
pub struct ComponentTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl ComponentTls {
    /// Trusts the certificates in `ca_file` (PEM) or, without one, the system's roots;
    /// verifies the server's certificate against `name` (a DNS name or an IP address).
    pub fn new(ca_file: Option<&Path>, name: &str) -> Result<ComponentTls, ConfigError> {
        let roots = match ca_file {
            Some(path) => roots_from(path)?,
            None => system_roots()?,
        };
        let name = ServerName::try_from(name.to_string()).map_err(|e| {
            invalid(
                "component.tls_server_name",
                format!("{name:?} is neither a DNS name nor an IP address: {e}"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("component.tls", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ComponentTls {
            config: Arc::new(config),
            name,
        })
    }
}

fn roots_from(path: &Path) -> Result<RootCertStore, ConfigError> {
    let key = "component.tls_ca_file";
    let bad = |why: String| invalid(key, format!("{}: {why}", path.display()));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(invalid(
            "component.tls",
            format!(
                "no trusted certificates found on the system ({} errors); set \
                 component.tls_ca_file",
                found.errors.len()
            ),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_names_the_key() {
        let e = ComponentTls::new(Some(Path::new("/nonexistent/ca.pem")), "localhost")
            .unwrap_err()
            .to_string();
        assert!(e.contains("component.tls_ca_file"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = ComponentTls::new(Some(f.path()), "localhost")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn a_bad_server_name_names_the_key() {
        let e = ComponentTls::new(None, "not a name!")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("component.tls"), "{e}");
    }
}
