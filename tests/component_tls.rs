//! The component link over TLS against a real Prosody: its multiplexing direct-TLS port
//! (`ssl_ports`, mod_net_multiplex) routes the XEP-0114 stream to the component, as
//! ejabberd does for an `ejabberd_service` listener with `tls: true`.

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhost::config::Config;
use streamhost::control::config::Secret;
use streamhost::control::{self, ControlConfig};
use streamhost::Server;
use support::client::Client;
use support::prosody::{Prosody, PROXY_JID, SECRET};

const OTHER: &str = "other.localhost";
const OTHER_SECRET: &str = "other-secret-5521";

/// A CA and a server certificate it signs, for localhost and 127.0.0.1, as PEM files in
/// `dir`: ca.pem, cert.pem, key.pem. Returns the CA's PEM.
fn certificates(dir: &Path, file_prefix: &str) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join(format!("{file_prefix}ca.pem")), ca.pem()).unwrap();
    std::fs::write(dir.join(format!("{file_prefix}cert.pem")), leaf.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{file_prefix}key.pem")),
        key.serialize_pem(),
    )
    .unwrap();
    ca.pem()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_component_link_runs_over_tls_and_refuses_an_untrusted_server() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), "");
    certificates(dir.path(), "wrong-");
    let tls_port = free_port();
    let d = dir.path().display();
    let prosody = Prosody::with_components_and(
        &[(PROXY_JID, SECRET), (OTHER, OTHER_SECRET)],
        &format!(
            "modules_enabled = {{ \"roster\", \"saslauth\", \"disco\", \"ping\", \"posix\", \
             \"net_multiplex\" }}\n\
             ssl = {{ certificate = \"{d}/cert.pem\"; key = \"{d}/key.pem\"; }}\n\
             ssl_ports = {{ {tls_port} }}\n\
             ssl_interfaces = {{ \"127.0.0.1\" }}\n"
        ),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < end, "no TLS port: {}", prosody.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = Arc::new(
        Server::start(Config {
            workers: 1,
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        })
        .unwrap(),
    );
    let settings = |ca: &str| {
        ControlConfig {
            server: format!("127.0.0.1:{tls_port}"),
            jid: PROXY_JID.into(),
            secret: Some(Secret::new(SECRET)),
            tls: true,
            tls_ca_file: Some(dir.path().join(ca)),
            access: control::config::AccessConfig {
                allow: vec![OTHER.into()],
                deny: vec![],
            },
            ..ControlConfig::default()
        }
        .resolve(data.local_addrs())
        .unwrap()
    };

    // A server whose certificate no configured CA signed: no login, ever.
    let untrusted = control::spawn(settings("wrong-ca.pem"), data.clone()).unwrap();
    assert!(!untrusted.wait_connected(Duration::from_secs(3)));
    assert_eq!(untrusted.logins(), 0);
    untrusted.stop();

    // The right CA: the component logs in over TLS and answers through the server.
    let link = control::spawn(settings("ca.pem"), data.clone()).unwrap();
    assert!(
        link.wait_connected(Duration::from_secs(15)),
        "no TLS login: {}",
        prosody.logs()
    );
    let mut other = Client::component(prosody.component_port, OTHER, OTHER_SECRET).unwrap();
    let el = other
        .iq(
            "get",
            Some(PROXY_JID),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .unwrap();
    assert_eq!(el.attr("type"), Some("result"), "{el:?}");
    link.stop();
}
