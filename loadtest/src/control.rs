//! Activation of pairs over XMPP, the way a requester's client does it: an IQ set to the
//! proxy's JID with the sid and the target JID, sent through a component stream (the
//! embedded server's, or our own component on a real server).

use crate::xmpp::link::{IqReply, Link};
use crate::xmpp::xml::escape;
use std::sync::Arc;
use std::time::Duration;
use streamhost::StreamKey;

/// The JIDs and sid of one pair.
#[derive(Debug, Clone)]
pub struct PairIds {
    pub sid: String,
    pub requester: String,
    pub target: String,
}

impl PairIds {
    /// Unique per run tag and pair number; `domain` is the requester's (and target's) domain.
    pub fn new(tag: &str, pair: u64, domain: &str) -> Self {
        PairIds {
            sid: format!("{tag}s{pair}"),
            requester: format!("req{pair}@{domain}/lt"),
            target: format!("tgt{pair}@{domain}/lt"),
        }
    }

    pub fn key(&self) -> StreamKey {
        StreamKey::from_parts(&self.sid, &self.requester, &self.target)
    }
}

/// How activations reach the proxy.
pub enum Channel {
    /// An XEP-0114 stream: IQ set to the proxy's JID.
    Xmpp { link: Arc<Link>, proxy_jid: String },
    /// streamhost's data plane running in this process: its activation API, no XMPP.
    InProcess(Arc<streamhost::Handle>),
}

pub struct Control {
    channel: Channel,
    /// Domain of the requester and target JIDs.
    pub domain: String,
    pub timeout: Duration,
    /// Behave as the most conservative client, for proxies that need it (Prosody's
    /// mod_proxy65): the SOCKS5 greeting alone, then the request after its reply (instead
    /// of both in one write), and no half-close of a direction that carries nothing (it
    /// closes both ends on either one's FIN).
    pub conservative: bool,
}

impl Control {
    pub fn new(link: Arc<Link>, proxy_jid: &str, domain: &str) -> Self {
        Control {
            channel: Channel::Xmpp {
                link,
                proxy_jid: proxy_jid.to_string(),
            },
            domain: domain.to_string(),
            timeout: Duration::from_secs(10),
            conservative: false,
        }
    }

    pub fn in_process(handle: Arc<streamhost::Handle>, domain: &str) -> Self {
        Control {
            channel: Channel::InProcess(handle),
            domain: domain.to_string(),
            timeout: Duration::from_secs(10),
            conservative: false,
        }
    }

    /// Sends the activation IQ (or calls the in-process API) and waits for the result.
    pub fn activate(&self, ids: &PairIds) -> anyhow::Result<()> {
        let (link, proxy_jid) = match &self.channel {
            Channel::Xmpp { link, proxy_jid } => (link, proxy_jid),
            Channel::InProcess(h) => {
                return match h.activate(&ids.key()) {
                    streamhost::ActivationOutcome::Activated => Ok(()),
                    other => anyhow::bail!(
                        "activation of sid {} ({} -> {}) refused: {other:?}",
                        ids.sid,
                        ids.requester,
                        ids.target
                    ),
                }
            }
        };
        let payload = format!(
            "<query xmlns='http://jabber.org/protocol/bytestreams' sid='{}'><activate>{}</activate></query>",
            escape(&ids.sid),
            escape(&ids.target)
        );
        match link.iq("set", &ids.requester, proxy_jid, &payload, self.timeout)? {
            IqReply::Result(_) => Ok(()),
            IqReply::Error(cond) => anyhow::bail!(
                "activation of sid {} ({} -> {}) refused: {cond}",
                ids.sid,
                ids.requester,
                ids.target
            ),
        }
    }

    pub fn close(&self) {
        if let Channel::Xmpp { link, .. } = &self.channel {
            link.close();
        }
    }
}
