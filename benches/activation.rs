//! The control plane's per-stanza cost: an activation IQ from text to the key and back to
//! the reply's text (parse, ACL check, JID normalisation, SHA1, reply serialisation), and a
//! disco#info answer for comparison.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use streamhost::control::config::{ControlConfig, Secret};
use streamhost::control::service::{Action, Service};
use streamhost::ActivationOutcome;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;

const ACTIVATE: &str = "<iq xmlns='jabber:component:accept' type='set' id='a1' \
    from='romeo@example.org/orchard' to='proxy.example.org'>\
    <query xmlns='http://jabber.org/protocol/bytestreams' sid='vxf9n471bn46'>\
    <activate>juliet@example.org/balcony</activate></query></iq>";

const DISCO: &str = "<iq xmlns='jabber:component:accept' type='get' id='d1' \
    from='romeo@example.org/orchard' to='proxy.example.org'>\
    <query xmlns='http://jabber.org/protocol/disco#info'/></iq>";

fn service() -> Service {
    let c = ControlConfig {
        jid: "proxy.example.org".into(),
        secret: Some(Secret::new("bench")),
        advertise: vec!["192.0.2.1:7777".into()],
        ..ControlConfig::default()
    };
    Service::new(&c.resolve(&[]).expect("valid"))
}

fn stanza(xml: &str) -> Stanza {
    let el: Element = xml.parse().expect("bench XML");
    Stanza::Iq(Iq::try_from(el).expect("an IQ"))
}

fn to_text(s: Stanza) -> String {
    let el: Element = match s {
        Stanza::Iq(iq) => iq.into(),
        other => panic!("expected an IQ, got {other:?}"),
    };
    String::from(&el)
}

fn bench(c: &mut Criterion) {
    let svc = service();
    c.bench_function("activation: text in, key, reply text out", |b| {
        b.iter(|| match svc.handle(stanza(black_box(ACTIVATE))) {
            Action::Activate(a) => {
                black_box(a.key);
                to_text(a.reply(ActivationOutcome::Activated))
            }
            _ => panic!("not an activation"),
        })
    });
    c.bench_function("disco#info: text in, reply text out", |b| {
        b.iter(|| match svc.handle(stanza(black_box(DISCO))) {
            Action::Reply(r) => to_text(*r),
            _ => panic!("not a reply"),
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
