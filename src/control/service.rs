//! Sans-IO XMPP service of the proxy's JID: a stanza goes in, and out comes a reply, an
//! activation to perform (whose outcome is then turned into the reply), or nothing.

use super::acl::Acl;
use super::config::{ControlSettings, Streamhost};
use crate::key::StreamKey;
use crate::rendezvous::ActivationOutcome;
use jid::{BareJid, Jid};
use std::sync::{Arc, RwLock};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::rxml::NcName;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use xmpp_parsers::version::VersionResult;

pub const NS_BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";
/// Longest sid accepted (ejabberd's limit).
pub const MAX_SID_BYTES: usize = 128;

/// What the connection should do with an incoming stanza.
#[derive(Debug)]
pub enum Action {
    /// Nothing to send (results, errors, messages, presence, unroutable stanzas).
    Ignore,
    Reply(Box<Stanza>),
    /// Activate `key`, then send `Activation::reply(outcome)`.
    Activate(Box<Activation>),
}

/// Addressing of the reply to one IQ: to/from swapped, same id.
#[derive(Debug, Clone)]
struct ReplyTo {
    me: Option<Jid>,
    peer: Jid,
    id: String,
}

impl ReplyTo {
    fn result(self, payload: Option<Element>) -> Stanza {
        Stanza::Iq(Iq::Result {
            from: self.me,
            to: Some(self.peer),
            id: self.id,
            payload,
        })
    }

    fn error(self, condition: DefinedCondition, text: &str) -> Stanza {
        let type_ = match condition {
            DefinedCondition::BadRequest
            | DefinedCondition::JidMalformed
            | DefinedCondition::PolicyViolation => ErrorType::Modify,
            DefinedCondition::Forbidden | DefinedCondition::NotAuthorized => ErrorType::Auth,
            DefinedCondition::ResourceConstraint => ErrorType::Wait,
            _ => ErrorType::Cancel,
        };
        let error = if text.is_empty() {
            StanzaError {
                type_,
                by: None,
                defined_condition: condition,
                texts: Default::default(),
                other: None,
            }
        } else {
            StanzaError::new(type_, condition, "en", text)
        };
        Stanza::Iq(Iq::Error {
            from: self.me,
            to: Some(self.peer),
            id: self.id,
            error,
            payload: None,
        })
    }
}

/// An activation waiting for the data plane's answer.
#[derive(Debug)]
pub struct Activation {
    pub key: StreamKey,
    /// The requester's bare JID, for the per-account stream limit.
    pub requester: BareJid,
    /// The target JID and the stream id, for the activation log.
    pub target: Jid,
    pub sid: String,
    reply: ReplyTo,
}

impl Activation {
    /// The reply when the requester already has its maximum of streams running.
    pub fn over_limit(self) -> Stanza {
        self.reply.error(
            DefinedCondition::ResourceConstraint,
            "too many streams running for this account",
        )
    }

    /// The IQ reply for the data plane's outcome.
    pub fn reply(self, outcome: ActivationOutcome) -> Stanza {
        use DefinedCondition as C;
        let r = self.reply;
        match outcome {
            ActivationOutcome::Activated => r.result(None),
            ActivationOutcome::UnknownKey => r.error(C::ItemNotFound, "no such stream"),
            ActivationOutcome::OnlyOneHalf => r.error(C::NotAllowed, "only one party is connected"),
            ActivationOutcome::AlreadyActive => {
                r.error(C::NotAllowed, "the stream is already activated")
            }
            // The proxy is going away and closes every stream: retrying here cannot
            // succeed, so `cancel` (service-unavailable), not `wait` (resource-constraint).
            ActivationOutcome::ShuttingDown => {
                r.error(C::ServiceUnavailable, "the proxy is shutting down")
            }
            ActivationOutcome::QuotaUsed => r.error(
                C::ResourceConstraint,
                "the transfer quota (daily or monthly) of this account or its domain is used up",
            ),
        }
    }

    /// The reply when the data plane never answered.
    pub fn no_answer(self) -> Stanza {
        self.reply.error(
            DefinedCondition::InternalServerError,
            "activation got no answer",
        )
    }
}

/// The proxy's XMPP service.
#[derive(Debug, Clone)]
pub struct Service {
    jid: BareJid,
    name: String,
    streamhosts: Vec<Streamhost>,
    /// Replaced on reload (SIGHUP) while the component stays connected.
    acl: Arc<RwLock<Acl>>,
}

fn reply(s: Stanza) -> Action {
    Action::Reply(Box::new(s))
}

fn attr_name(s: &'static str) -> NcName {
    NcName::try_from(s).expect("a valid XML name")
}

impl Service {
    pub fn new(settings: &ControlSettings) -> Self {
        Service {
            jid: settings.jid.clone(),
            name: settings.name.clone(),
            streamhosts: settings.streamhosts.clone(),
            acl: Arc::new(RwLock::new(settings.acl.clone())),
        }
    }

    /// The access lists this service checks, shared so they can be swapped on reload.
    pub fn acl_handle(&self) -> Arc<RwLock<Acl>> {
        self.acl.clone()
    }

    fn permits(&self, who: &Jid) -> bool {
        self.acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .permits(who)
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }

    pub fn handle(&self, stanza: Stanza) -> Action {
        match stanza {
            Stanza::Iq(iq) => self.handle_iq(iq),
            Stanza::Message(_) | Stanza::Presence(_) => Action::Ignore,
        }
    }

    /// A stanza that failed to parse, seen only by its raw attributes: a get/set IQ
    /// gets bad-request, anything else nothing.
    /// Answers an IQ request that could not be handled (malformed, or dropped unparsed
    /// over a limit) from what its start tag said: an error of `condition` if it was a
    /// get or set with a sender and an id, nothing otherwise.
    pub fn reject_iq(
        &self,
        type_: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        id: Option<&str>,
        condition: DefinedCondition,
        text: &str,
    ) -> Action {
        if !matches!(type_, Some("get" | "set")) {
            return Action::Ignore;
        }
        let (Some(from), Some(id)) = (from.and_then(|f| Jid::new(f).ok()), id) else {
            return Action::Ignore;
        };
        let me = to.and_then(|t| Jid::new(t).ok());
        let r = ReplyTo {
            me,
            peer: from,
            id: id.to_string(),
        };
        reply(r.error(condition, text))
    }

    fn handle_iq(&self, iq: Iq) -> Action {
        let (is_get, from, to, id, payload) = match iq {
            Iq::Get {
                from,
                to,
                id,
                payload,
            } => (true, from, to, id, payload),
            Iq::Set {
                from,
                to,
                id,
                payload,
            } => (false, from, to, id, payload),
            Iq::Result { .. } | Iq::Error { .. } => return Action::Ignore,
        };
        // The server always stamps `from`; without it there is nobody to answer.
        let Some(from) = from else {
            return Action::Ignore;
        };
        let for_me = to.as_ref().is_none_or(|t| {
            t.node().is_none() && t.resource().is_none() && t.domain() == self.jid.domain()
        });
        let r = ReplyTo {
            me: to,
            peer: from,
            id,
        };
        if !for_me {
            return reply(r.error(DefinedCondition::ServiceUnavailable, ""));
        }
        let ns = payload.ns();
        let (name, ns) = (payload.name(), ns.as_str());
        let reply = match (is_get, name, ns) {
            (true, "query", ns::DISCO_INFO) => self.disco_info(r, &payload),
            (true, "query", ns::DISCO_ITEMS) => disco_items(r, &payload),
            (true, "ping", ns::PING) => r.result(None),
            (true, "query", ns::VERSION) => r.result(Some(
                VersionResult {
                    name: "streamhost".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    os: None,
                }
                .into(),
            )),
            (true, "query", NS_BYTESTREAMS) => self.streamhost_list(r),
            (false, "query", NS_BYTESTREAMS) => return self.activate(r, &payload),
            (_, "query", ns::DISCO_INFO | ns::DISCO_ITEMS | ns::VERSION)
            | (_, "ping", ns::PING) => r.error(
                DefinedCondition::FeatureNotImplemented,
                if is_get {
                    "use type='set'"
                } else {
                    "use type='get'"
                },
            ),
            _ => r.error(DefinedCondition::ServiceUnavailable, ""),
        };
        Action::Reply(Box::new(reply))
    }

    fn disco_info(&self, r: ReplyTo, payload: &Element) -> Stanza {
        if !self.permits(&r.peer) {
            return r.error(DefinedCondition::Forbidden, "not served by this proxy");
        }
        if payload.attr("node").is_some() {
            return r.error(DefinedCondition::ItemNotFound, "no such node");
        }
        let info = DiscoInfoResult {
            node: None,
            identities: vec![Identity::new(
                "proxy",
                "bytestreams",
                "en",
                self.name.clone(),
            )],
            features: [NS_BYTESTREAMS, ns::DISCO_INFO, ns::PING, ns::VERSION]
                .into_iter()
                .map(String::from)
                .collect(),
            extensions: vec![],
        };
        r.result(Some(info.into()))
    }

    fn streamhost_list(&self, r: ReplyTo) -> Stanza {
        if !self.permits(&r.peer) {
            return r.error(DefinedCondition::Forbidden, "not served by this proxy");
        }
        let jid = self.jid.to_string();
        let mut query = Element::builder("query", NS_BYTESTREAMS);
        for sh in &self.streamhosts {
            query = query.append(
                Element::builder("streamhost", NS_BYTESTREAMS)
                    .attr(attr_name("jid"), jid.as_str())
                    .attr(attr_name("host"), sh.host.as_str())
                    .attr(attr_name("port"), sh.port.to_string())
                    .build(),
            );
        }
        r.result(Some(query.build()))
    }

    fn activate(&self, r: ReplyTo, payload: &Element) -> Action {
        use DefinedCondition as C;
        if !self.permits(&r.peer) {
            return reply(r.error(C::Forbidden, "not served by this proxy"));
        }
        let sid = match payload.attr("sid") {
            None => return reply(r.error(C::BadRequest, "no sid")),
            Some("") => return reply(r.error(C::BadRequest, "empty sid")),
            Some(s) if s.len() > MAX_SID_BYTES => {
                return reply(r.error(C::BadRequest, "sid longer than 128 bytes"))
            }
            Some(s) => s,
        };
        let Some(activate) = payload.get_child("activate", NS_BYTESTREAMS) else {
            return reply(r.error(C::BadRequest, "no <activate/>"));
        };
        let text = activate.text();
        let text = text.trim();
        if text.is_empty() {
            return reply(r.error(C::BadRequest, "empty <activate/>"));
        }
        let Ok(target) = Jid::new(text) else {
            return reply(r.error(C::JidMalformed, "bad target JID"));
        };
        // Both JIDs normalised by the jid crate (nodeprep/nameprep/resourceprep), the
        // requester as the server stamped it.
        let key = StreamKey::from_parts(sid, r.peer.as_str(), target.as_str());
        let requester = r.peer.to_bare();
        Action::Activate(Box::new(Activation {
            key,
            requester,
            target,
            sid: sid.to_string(),
            reply: r,
        }))
    }
}

fn disco_items(r: ReplyTo, payload: &Element) -> Stanza {
    if payload.attr("node").is_some() {
        return r.error(DefinedCondition::ItemNotFound, "no such node");
    }
    let items = DiscoItemsResult {
        node: None,
        items: vec![],
        rsm: None,
    };
    r.result(Some(items.into()))
}
