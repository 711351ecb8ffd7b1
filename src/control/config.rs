//! The `[component]` section: how the proxy joins an XMPP server as an XEP-0114
//! component, what it advertises, and whom it serves.

use super::acl::{Acl, Entry};
use super::stanza_bounds::StanzaLimits;
use super::tls::ComponentTls;
use crate::config::{invalid, ConfigError};
use crate::shaping::units::ByteSize;
use jid::BareJid;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Bounds of `max_stanza_size`: an activation result fits in 4 KiB; more than 64 MiB
/// would let one stanza take more memory than the whole control plane is meant to.
const MIN_STANZA_SIZE: u64 = 4 * 1024;
const MAX_STANZA_SIZE: u64 = 64 * 1024 * 1024;
/// Bounds of `max_stanza_depth`: discovery replies nest 3 deep; the control thread's
/// stack (`component::STACK_SIZE`) is sized for the maximum.
const MIN_STANZA_DEPTH: u32 = 8;
pub const MAX_STANZA_DEPTH: u32 = 1024;

/// A shared secret that never shows up in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// XEP-0114 listener of the XMPP server, "host:port".
    pub server: String,
    /// The component's JID, a bare domain such as "proxy.example.org".
    pub jid: String,
    /// The shared secret; exactly one of `secret`, `secret_file`, `secret_env`.
    pub secret: Option<Secret>,
    /// A file whose content (trailing newline removed) is the secret.
    pub secret_file: Option<PathBuf>,
    /// An environment variable that holds the secret.
    pub secret_env: Option<String>,
    /// Identity name in disco#info.
    pub name: String,
    /// "host:port" streamhost addresses to advertise; default: the non-wildcard listen
    /// addresses.
    pub advertise: Vec<String>,
    /// Server domains whose users are served when `access.allow` is empty; default: the
    /// component JID's parent domain.
    pub domains: Vec<String>,
    /// Relays one requester (bare JID) may have running at once; 0 = no limit. Over it,
    /// activation answers resource-constraint (ejabberd's max_connections). Default 16:
    /// far above what one person's clients run at once, and it caps what one account can
    /// park in the relay (stalled streams hold kernel socket buffers).
    pub max_streams_per_jid: u32,
    /// Largest stanza accepted from the server ("256 KiB" or bytes); larger ones are
    /// dropped unparsed (an IQ request gets policy-violation).
    pub max_stanza_size: ByteSize,
    /// Deepest element nesting accepted in a stanza (the stanza itself is 1).
    pub max_stanza_depth: u32,
    /// Connect with TLS from the first byte (the server's component port speaks TLS).
    pub tls: bool,
    /// PEM certificates to trust for the server instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// The name the server's certificate must match; default: the host of `server`.
    pub tls_server_name: Option<String>,
    pub access: AccessConfig,
}

/// `component.max_streams_per_jid` when not set.
pub const DEFAULT_MAX_STREAMS_PER_JID: u32 = 16;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            server: "127.0.0.1:5347".into(),
            jid: String::new(),
            secret: None,
            secret_file: None,
            secret_env: None,
            name: "SOCKS5 Bytestreams Service".into(),
            advertise: Vec::new(),
            domains: Vec::new(),
            max_streams_per_jid: DEFAULT_MAX_STREAMS_PER_JID,
            max_stanza_size: ByteSize(StanzaLimits::DEFAULT.max_size as u64),
            max_stanza_depth: StanzaLimits::DEFAULT.max_depth,
            tls: false,
            tls_ca_file: None,
            tls_server_name: None,
            access: AccessConfig::default(),
        }
    }
}

/// One `<streamhost/>` to advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamhost {
    pub host: String,
    pub port: u16,
}

/// A validated `[component]` section with its secret read and defaults resolved.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub server: String,
    pub jid: BareJid,
    pub secret: Secret,
    pub name: String,
    pub streamhosts: Vec<Streamhost>,
    pub domains: Vec<String>,
    pub acl: Acl,
    pub max_streams_per_jid: u32,
    pub stanza_limits: StanzaLimits,
    /// TLS for the link, when `component.tls` is set.
    pub tls: Option<ComponentTls>,
}

/// "host:port" -> (host without IPv6 brackets, port).
fn split_host_port(text: &str) -> Option<(String, u16)> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    if host.is_empty() || host.contains(':') || host.contains(['[', ']', '/', ' ']) {
        return None;
    }
    Some((host.to_string(), port))
}

impl ControlConfig {
    /// Validates the section and resolves its defaults. `listen` are the data plane's
    /// addresses (the bound ones once started, so that port 0 is resolved).
    pub fn resolve(&self, listen: &[SocketAddr]) -> Result<ControlSettings, ConfigError> {
        if split_host_port(&self.server).is_none() {
            return Err(invalid(
                "component.server",
                format!("{:?} is not \"host:port\"", self.server),
            ));
        }
        if self.jid.is_empty() {
            return Err(invalid(
                "component.jid",
                "is required (e.g. \"proxy.example.org\")",
            ));
        }
        let jid = BareJid::new(&self.jid)
            .map_err(|e| invalid("component.jid", format!("{:?}: {e}", self.jid)))?;
        if jid.node().is_some() {
            return Err(invalid(
                "component.jid",
                format!("{:?} must be a bare domain, without `user@`", self.jid),
            ));
        }
        let secret = self.read_secret()?;
        if self.name.trim().is_empty() {
            return Err(invalid("component.name", "must not be empty"));
        }
        let streamhosts = self.streamhosts(listen)?;
        let domains = self.domains(&jid)?;
        let parse_list = |key: &'static str, list: &[String]| {
            list.iter()
                .map(|e| Entry::parse(e).map_err(|p| invalid(key, p)))
                .collect::<Result<Vec<_>, _>>()
        };
        let allow = parse_list("component.access.allow", &self.access.allow)?;
        let deny = parse_list("component.access.deny", &self.access.deny)?;
        let acl = Acl::new(allow, deny, &domains);
        Ok(ControlSettings {
            server: self.server.clone(),
            jid,
            secret,
            name: self.name.clone(),
            streamhosts,
            domains,
            acl,
            max_streams_per_jid: self.max_streams_per_jid,
            stanza_limits: self.stanza_limits()?,
            tls: self.tls()?,
        })
    }

    fn tls(&self) -> Result<Option<ComponentTls>, ConfigError> {
        if !self.tls {
            for (key, set) in [
                ("component.tls_ca_file", self.tls_ca_file.is_some()),
                ("component.tls_server_name", self.tls_server_name.is_some()),
            ] {
                if set {
                    return Err(invalid(key, "has no effect without `component.tls = true`"));
                }
            }
            return Ok(None);
        }
        let host = split_host_port(&self.server)
            .map(|(h, _)| h)
            .unwrap_or_default();
        let name = self.tls_server_name.as_deref().unwrap_or(&host);
        ComponentTls::new(self.tls_ca_file.as_deref(), name).map(Some)
    }

    fn stanza_limits(&self) -> Result<StanzaLimits, ConfigError> {
        let size = self.max_stanza_size.0;
        if !(MIN_STANZA_SIZE..=MAX_STANZA_SIZE).contains(&size) {
            return Err(invalid(
                "component.max_stanza_size",
                format!(
                    "{size} bytes is outside {} KiB to {} MiB",
                    MIN_STANZA_SIZE >> 10,
                    MAX_STANZA_SIZE >> 20
                ),
            ));
        }
        let depth = self.max_stanza_depth;
        if !(MIN_STANZA_DEPTH..=MAX_STANZA_DEPTH).contains(&depth) {
            return Err(invalid(
                "component.max_stanza_depth",
                format!(
                    "{depth} is outside {MIN_STANZA_DEPTH} to {MAX_STANZA_DEPTH} \
                     (the control thread's stack is sized for the maximum)"
                ),
            ));
        }
        Ok(StanzaLimits {
            max_size: size as usize,
            max_depth: depth,
        })
    }

    fn read_secret(&self) -> Result<Secret, ConfigError> {
        let key = "component.secret";
        let set = [
            self.secret.is_some(),
            self.secret_file.is_some(),
            self.secret_env.is_some(),
        ];
        let secret = match set {
            [true, false, false] => self.secret.clone().unwrap_or_default(),
            [false, true, false] => {
                let path = self.secret_file.as_ref().expect("checked");
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "component.secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Secret::new(text.trim_end_matches(['\r', '\n']))
            }
            [false, false, true] => {
                let var = self.secret_env.as_ref().expect("checked");
                let value = std::env::var(var).map_err(|e| {
                    invalid(
                        "component.secret_env",
                        format!("environment variable {var:?}: {e}"),
                    )
                })?;
                Secret::new(value)
            }
            [false, false, false] => {
                return Err(invalid(
                    key,
                    "one of `secret`, `secret_file` or `secret_env` is required",
                ))
            }
            _ => {
                return Err(invalid(
                    key,
                    "set only one of `secret`, `secret_file` or `secret_env`",
                ))
            }
        };
        if secret.expose().is_empty() {
            return Err(invalid(key, "the secret is empty"));
        }
        Ok(secret)
    }

    fn streamhosts(&self, listen: &[SocketAddr]) -> Result<Vec<Streamhost>, ConfigError> {
        let key = "component.advertise";
        let mut out = Vec::new();
        if self.advertise.is_empty() {
            for a in listen.iter().filter(|a| !a.ip().is_unspecified()) {
                out.push(Streamhost {
                    host: a.ip().to_string(),
                    port: a.port(),
                });
            }
            if out.is_empty() {
                return Err(invalid(
                    key,
                    "every listen address is a wildcard: list the addresses clients can \
                     reach (\"host:port\")",
                ));
            }
        } else {
            for text in &self.advertise {
                let (host, port) = split_host_port(text)
                    .ok_or_else(|| invalid(key, format!("{text:?} is not \"host:port\"")))?;
                if port == 0 {
                    return Err(invalid(key, format!("{text:?}: port 0")));
                }
                out.push(Streamhost { host, port });
            }
        }
        Ok(out)
    }

    fn domains(&self, jid: &BareJid) -> Result<Vec<String>, ConfigError> {
        let key = "component.domains";
        if self.domains.is_empty() {
            return match jid.domain().as_str().split_once('.') {
                Some((_, parent)) if !parent.is_empty() => Ok(vec![parent.to_string()]),
                _ => Err(invalid(
                    key,
                    format!("cannot derive a parent domain from {:?}: set it", self.jid),
                )),
            };
        }
        self.domains
            .iter()
            .map(|d| match Entry::parse(d) {
                Ok(Entry::Domain(d)) => Ok(d),
                _ => Err(invalid(key, format!("{d:?} is not a domain"))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ControlConfig {
        ControlConfig {
            jid: "proxy.example.org".into(),
            secret: Some(Secret::new("s3cret")),
            ..ControlConfig::default()
        }
    }

    fn lo() -> Vec<SocketAddr> {
        vec!["127.0.0.1:7777".parse().unwrap()]
    }

    fn key_of(r: Result<ControlSettings, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key.to_string(),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_resolve() {
        let s = base().resolve(&lo()).unwrap();
        assert_eq!(s.domains, vec!["example.org".to_string()]);
        assert_eq!(
            s.streamhosts,
            vec![Streamhost {
                host: "127.0.0.1".into(),
                port: 7777
            }]
        );
        assert_eq!(s.server, "127.0.0.1:5347");
        assert_eq!(s.jid.to_string(), "proxy.example.org");
        // One account cannot park more than 16 relays unless the operator says so.
        assert_eq!(s.max_streams_per_jid, 16);
    }

    #[test]
    fn wildcard_listen_needs_advertise() {
        let wild: Vec<SocketAddr> = vec![
            "0.0.0.0:7777".parse().unwrap(),
            "[::]:7777".parse().unwrap(),
        ];
        assert_eq!(key_of(base().resolve(&wild)), "component.advertise");
        let c = ControlConfig {
            advertise: vec!["proxy.example.org:7777".into(), "[2001:db8::1]:7777".into()],
            ..base()
        };
        let s = c.resolve(&wild).unwrap();
        assert_eq!(s.streamhosts[0].host, "proxy.example.org");
        assert_eq!(s.streamhosts[1].host, "2001:db8::1");
        let bad = ControlConfig {
            advertise: vec!["no-port".into()],
            ..base()
        };
        assert_eq!(key_of(bad.resolve(&lo())), "component.advertise");
    }

    #[test]
    fn exactly_one_secret_source() {
        let none = ControlConfig {
            secret: None,
            ..base()
        };
        assert_eq!(key_of(none.resolve(&lo())), "component.secret");
        let two = ControlConfig {
            secret_env: Some("X".into()),
            ..base()
        };
        assert_eq!(key_of(two.resolve(&lo())), "component.secret");
        let missing = ControlConfig {
            secret: None,
            secret_file: Some("/nonexistent/streamhost-secret".into()),
            ..base()
        };
        assert_eq!(key_of(missing.resolve(&lo())), "component.secret_file");
        let unset = ControlConfig {
            secret: None,
            secret_env: Some("STREAMHOST_TEST_UNSET_VARIABLE".into()),
            ..base()
        };
        assert_eq!(key_of(unset.resolve(&lo())), "component.secret_env");
    }

    #[test]
    fn secret_file_is_read_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let c = ControlConfig {
            secret: None,
            secret_file: Some(path),
            ..base()
        };
        assert_eq!(c.resolve(&lo()).unwrap().secret.expose(), "from-file");
    }

    #[test]
    fn secret_never_appears_in_debug() {
        let s = base().resolve(&lo()).unwrap();
        assert!(!format!("{s:?} {:?}", base()).contains("s3cret"));
    }

    #[test]
    fn deploy_example_parses_and_resolves() {
        let text = include_str!("../../deploy/streamhost.toml");
        let mut c = crate::config::Config::from_toml_str(text, "deploy/streamhost.toml").unwrap();
        let mut comp = c.component.take().expect("a [component] section");
        assert_eq!(
            comp.secret_file.as_deref(),
            Some(std::path::Path::new("/etc/streamhost/component.secret"))
        );
        comp.secret_file = None;
        comp.secret = Some(Secret::new("x"));
        let s = comp.resolve(&c.listen).unwrap();
        assert_eq!(s.streamhosts[0].host, "proxy.example.org");
        c.component = Some(comp);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = ControlConfig {
            jid: "user@proxy.example.org".into(),
            ..base()
        };
        assert_eq!(key_of(c.resolve(&lo())), "component.jid");
        let c = ControlConfig {
            jid: String::new(),
            ..base()
        };
        assert_eq!(key_of(c.resolve(&lo())), "component.jid");
        let c = ControlConfig {
            jid: "proxy".into(),
            ..base()
        };
        assert_eq!(key_of(c.resolve(&lo())), "component.domains");
        let c = ControlConfig {
            server: "nowhere".into(),
            ..base()
        };
        assert_eq!(key_of(c.resolve(&lo())), "component.server");
        let mut c = base();
        c.access.deny = vec!["a@b/c".into()];
        assert_eq!(key_of(c.resolve(&lo())), "component.access.deny");
        let mut c = base();
        c.access.allow = vec!["x*".into()];
        assert_eq!(key_of(c.resolve(&lo())), "component.access.allow");
        let c = ControlConfig {
            domains: vec!["*.x.org".into()],
            ..base()
        };
        assert_eq!(key_of(c.resolve(&lo())), "component.domains");
    }

    #[test]
    fn stanza_limits_and_tls_keys_are_validated() {
        let s = base().resolve(&lo()).unwrap();
        assert_eq!(s.stanza_limits, StanzaLimits::DEFAULT);
        assert!(s.tls.is_none());
        let c: ControlConfig = toml::from_str(
            "jid = \"proxy.example.org\"\nsecret = \"x\"\n\
             max_stanza_size = \"64 KiB\"\nmax_stanza_depth = 16",
        )
        .unwrap();
        let s = c.resolve(&lo()).unwrap();
        assert_eq!(
            (s.stanza_limits.max_size, s.stanza_limits.max_depth),
            (65536, 16)
        );
        for (size, depth) in [(100, 64), (1 << 30, 64), (1 << 20, 4), (1 << 20, 5000)] {
            let c = ControlConfig {
                max_stanza_size: ByteSize(size),
                max_stanza_depth: depth,
                ..base()
            };
            let key = key_of(c.resolve(&lo()));
            assert!(key.starts_with("component.max_stanza_"), "{key}");
        }
        let c = ControlConfig {
            tls_ca_file: Some("/etc/ca.pem".into()),
            ..base()
        };
        assert_eq!(key_of(c.resolve(&lo())), "component.tls_ca_file");
        let c = ControlConfig {
            tls: true,
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..base()
        };
        assert_eq!(key_of(c.resolve(&lo())), "component.tls_ca_file");
    }
}
