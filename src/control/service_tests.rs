//! Unit tests of the sans-IO service: XML in, XML out.

use super::config::{ControlConfig, Secret};
use super::service::{Action, Service, NS_BYTESTREAMS};
use crate::key::StreamKey;
use crate::rendezvous::ActivationOutcome;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::DefinedCondition;

const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn service_with(f: impl FnOnce(&mut ControlConfig)) -> Service {
    let mut c = ControlConfig {
        jid: "proxy.example.org".into(),
        secret: Some(Secret::new("x")),
        advertise: vec!["192.0.2.1:7777".into(), "proxy.example.org:7778".into()],
        ..ControlConfig::default()
    };
    f(&mut c);
    Service::new(&c.resolve(&[]).unwrap())
}

fn service() -> Service {
    service_with(|_| {})
}

fn iq(xml: &str) -> Stanza {
    let el: Element = xml.parse().expect("test XML");
    Stanza::Iq(Iq::try_from(el).expect("an IQ"))
}

fn reply_el(a: Action) -> Element {
    match a {
        Action::Reply(st) => match *st {
            Stanza::Iq(iq) => iq.into(),
            other => panic!("expected an IQ, got {other:?}"),
        },
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Checks addressing and returns the reply element.
fn reply_to(s: &Service, xml: &str) -> Element {
    let el = reply_el(s.handle(iq(xml)));
    assert_eq!(el.attr("id"), Some("q1"), "{el:?}");
    assert_eq!(el.attr("to"), Some("romeo@example.org/orchard"), "{el:?}");
    assert_eq!(el.attr("from"), Some("proxy.example.org"), "{el:?}");
    el
}

fn condition(el: &Element) -> (String, String) {
    assert_eq!(el.attr("type"), Some("error"), "{el:?}");
    let err = el
        .get_child("error", "jabber:component:accept")
        .expect("an <error/>");
    let cond = err
        .children()
        .find(|c| c.ns() == STANZAS && c.name() != "text")
        .expect("a condition");
    (
        err.attr("type").unwrap().to_string(),
        cond.name().to_string(),
    )
}

fn get(payload: &str) -> String {
    format!(
        "<iq xmlns='jabber:component:accept' type='get' id='q1' from='romeo@example.org/orchard' \
         to='proxy.example.org'>{payload}</iq>"
    )
}

fn set(payload: &str) -> String {
    get(payload).replace("type='get'", "type='set'")
}

fn activate(sid: Option<&str>, target: Option<&str>) -> String {
    let sid = sid.map(|s| format!(" sid='{s}'")).unwrap_or_default();
    let act = target
        .map(|t| format!("<activate>{t}</activate>"))
        .unwrap_or_default();
    set(&format!(
        "<query xmlns='{NS_BYTESTREAMS}'{sid}>{act}</query>"
    ))
}

#[test]
fn disco_info_names_identity_and_features() {
    let s = service();
    let el = reply_to(
        &s,
        &get("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
    );
    assert_eq!(el.attr("type"), Some("result"));
    let q = el.children().next().unwrap();
    let id = q.children().find(|c| c.name() == "identity").unwrap();
    assert_eq!(id.attr("category"), Some("proxy"));
    assert_eq!(id.attr("type"), Some("bytestreams"));
    assert_eq!(id.attr("name"), Some("SOCKS5 Bytestreams Service"));
    let features: Vec<_> = q
        .children()
        .filter(|c| c.name() == "feature")
        .map(|c| c.attr("var").unwrap().to_string())
        .collect();
    for f in [
        NS_BYTESTREAMS,
        "http://jabber.org/protocol/disco#info",
        "urn:xmpp:ping",
        "jabber:iq:version",
    ] {
        assert!(features.iter().any(|x| x == f), "{f} missing: {features:?}");
    }
    assert!(!features.iter().any(|x| x.ends_with("#udp")));
}

#[test]
fn disco_items_is_empty_ping_and_version_answer() {
    let s = service();
    let el = reply_to(
        &s,
        &get("<query xmlns='http://jabber.org/protocol/disco#items'/>"),
    );
    assert_eq!(el.attr("type"), Some("result"));
    assert_eq!(el.children().next().unwrap().children().count(), 0);
    let el = reply_to(&s, &get("<ping xmlns='urn:xmpp:ping'/>"));
    assert_eq!(el.attr("type"), Some("result"));
    let el = reply_to(&s, &get("<query xmlns='jabber:iq:version'/>"));
    assert_eq!(el.attr("type"), Some("result"));
    let q = el.children().next().unwrap();
    assert_eq!(
        q.get_child("name", "jabber:iq:version").unwrap().text(),
        "streamhost"
    );
    assert_eq!(
        q.get_child("version", "jabber:iq:version").unwrap().text(),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn streamhost_list_has_one_entry_per_advertised_address() {
    let s = service();
    let el = reply_to(&s, &get(&format!("<query xmlns='{NS_BYTESTREAMS}'/>")));
    assert_eq!(el.attr("type"), Some("result"));
    let hosts: Vec<_> = el
        .children()
        .next()
        .unwrap()
        .children()
        .map(|h| {
            assert_eq!(h.name(), "streamhost");
            assert_eq!(h.attr("jid"), Some("proxy.example.org"));
            format!("{}:{}", h.attr("host").unwrap(), h.attr("port").unwrap())
        })
        .collect();
    assert_eq!(hosts, ["192.0.2.1:7777", "proxy.example.org:7778"]);
}

#[test]
fn activation_computes_the_key_from_normalised_jids() {
    let s = service();
    let xml = activate(Some("vxf9n471bn46"), Some("Juliet@Example.ORG/balcony"))
        .replace("romeo@example.org/orchard", "Romeo@EXAMPLE.org/orchard");
    let Action::Activate(a) = s.handle(iq(&xml)) else {
        panic!("expected an activation")
    };
    let want = StreamKey::from_parts(
        "vxf9n471bn46",
        "romeo@example.org/orchard",
        "juliet@example.org/balcony",
    );
    assert_eq!(a.key, want);
}

#[test]
fn activation_outcomes_map_to_replies() {
    let s = service();
    let cases = [
        (ActivationOutcome::Activated, None),
        (
            ActivationOutcome::UnknownKey,
            Some(("cancel", "item-not-found")),
        ),
        (
            ActivationOutcome::OnlyOneHalf,
            Some(("cancel", "not-allowed")),
        ),
        (
            ActivationOutcome::AlreadyActive,
            Some(("cancel", "not-allowed")),
        ),
        (
            ActivationOutcome::ShuttingDown,
            Some(("cancel", "service-unavailable")),
        ),
        (
            ActivationOutcome::QuotaUsed,
            Some(("wait", "resource-constraint")),
        ),
    ];
    for (outcome, want) in cases {
        let Action::Activate(a) = s.handle(iq(&activate(Some("s1"), Some("juliet@example.org/b"))))
        else {
            panic!("expected an activation")
        };
        let Stanza::Iq(reply) = a.reply(outcome) else {
            panic!("an IQ")
        };
        let el: Element = reply.into();
        assert_eq!(el.attr("id"), Some("q1"));
        assert_eq!(el.attr("to"), Some("romeo@example.org/orchard"));
        match want {
            None => {
                assert_eq!(el.attr("type"), Some("result"));
                assert_eq!(el.children().count(), 0);
            }
            Some((t, c)) => assert_eq!(condition(&el), (t.into(), c.into()), "{outcome:?}"),
        }
    }
}

#[test]
fn bad_activations_are_refused() {
    let s = service();
    let long = "x".repeat(129);
    let cases = [
        (activate(None, Some("juliet@example.org/b")), "bad-request"),
        (
            activate(Some(""), Some("juliet@example.org/b")),
            "bad-request",
        ),
        (
            activate(Some(&long), Some("juliet@example.org/b")),
            "bad-request",
        ),
        (activate(Some("s"), None), "bad-request"),
        (activate(Some("s"), Some("")), "bad-request"),
        (activate(Some("s"), Some("@bad@jid")), "jid-malformed"),
    ];
    for (xml, want) in cases {
        let el = reply_to(&s, &xml);
        let (_, cond) = condition(&el);
        assert_eq!(cond, want, "{xml}");
    }
    // 128 bytes is still fine.
    let ok = activate(Some(&"x".repeat(128)), Some("juliet@example.org/b"));
    assert!(matches!(s.handle(iq(&ok)), Action::Activate(_)));
}

#[test]
fn access_control_guards_discovery_and_activation() {
    let s = service();
    let outsider = |xml: String| xml.replace("romeo@example.org", "eve@elsewhere.net");
    for xml in [
        get("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
        get(&format!("<query xmlns='{NS_BYTESTREAMS}'/>")),
        activate(Some("s"), Some("juliet@example.org/b")),
    ] {
        let el = reply_el(s.handle(iq(&outsider(xml.clone()))));
        assert_eq!(condition(&el), ("auth".into(), "forbidden".into()), "{xml}");
    }
    // Ping still answers (servers ping components).
    let el = reply_el(s.handle(iq(&outsider(get("<ping xmlns='urn:xmpp:ping'/>")))));
    assert_eq!(el.attr("type"), Some("result"));
    let denied = service_with(|c| c.access.deny = vec!["romeo@example.org".into()]);
    let el = reply_to(&denied, &activate(Some("s"), Some("juliet@example.org/b")));
    assert_eq!(condition(&el).1, "forbidden");
}

#[test]
fn unknown_payloads_and_wrong_types() {
    let s = service();
    let el = reply_to(&s, &get("<query xmlns='jabber:iq:roster'/>"));
    assert_eq!(
        condition(&el),
        ("cancel".into(), "service-unavailable".into())
    );
    let el = reply_to(
        &s,
        &set("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
    );
    assert_eq!(
        condition(&el),
        ("cancel".into(), "feature-not-implemented".into())
    );
    let el = reply_to(&s, &set("<ping xmlns='urn:xmpp:ping'/>"));
    assert_eq!(condition(&el).1, "feature-not-implemented");
    let el = reply_to(
        &s,
        &get("<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>"),
    );
    assert_eq!(condition(&el).1, "item-not-found");
    let el = reply_el(
        s.handle(iq(&get("<ping xmlns='urn:xmpp:ping'/>").replace(
            "to='proxy.example.org'",
            "to='someone@proxy.example.org'",
        ))),
    );
    assert_eq!(condition(&el).1, "service-unavailable");
}

#[test]
fn results_errors_messages_and_presence_are_not_answered() {
    let s = service();
    let result = "<iq xmlns='jabber:component:accept' type='result' id='a' \
                  from='example.org' to='proxy.example.org'/>";
    assert!(matches!(s.handle(iq(result)), Action::Ignore));
    let error = "<iq xmlns='jabber:component:accept' type='error' id='a' from='example.org' \
                 to='proxy.example.org'><error type='cancel'><service-unavailable \
                 xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
    assert!(matches!(s.handle(iq(error)), Action::Ignore));
    let msg: Element = "<message xmlns='jabber:component:accept' from='a@example.org/r' \
                        to='proxy.example.org'><body>hi</body></message>"
        .parse()
        .unwrap();
    let msg = xmpp_parsers::message::Message::try_from(msg).unwrap();
    assert!(matches!(s.handle(Stanza::Message(msg)), Action::Ignore));
    let pres: Element = "<presence xmlns='jabber:component:accept' from='a@example.org/r' \
                         to='proxy.example.org'/>"
        .parse()
        .unwrap();
    let pres = xmpp_parsers::presence::Presence::try_from(pres).unwrap();
    assert!(matches!(s.handle(Stanza::Presence(pres)), Action::Ignore));
}

#[test]
fn malformed_iqs_get_bad_request_when_answerable() {
    let s = service();
    let reject = |t, from, id, c| s.reject_iq(t, from, Some("proxy.example.org"), id, c, "why");
    let a = reject(
        Some("get"),
        Some("romeo@example.org/orchard"),
        Some("q1"),
        DefinedCondition::BadRequest,
    );
    assert_eq!(condition(&reply_el(a)).1, "bad-request");
    // An IQ dropped over the stanza limits.
    let a = reject(
        Some("set"),
        Some("romeo@example.org/orchard"),
        Some("q2"),
        DefinedCondition::PolicyViolation,
    );
    assert_eq!(
        condition(&reply_el(a)),
        ("modify".into(), "policy-violation".into())
    );
    for (t, from, id) in [
        (Some("result"), Some("a@example.org"), Some("x")),
        (Some("get"), None, Some("x")),
        (Some("set"), Some("a@example.org"), None),
        (None, Some("a@example.org"), Some("x")),
    ] {
        assert!(matches!(
            reject(t, from, id, DefinedCondition::BadRequest),
            Action::Ignore
        ));
    }
}
