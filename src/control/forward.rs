//! Moving the component's work between processes during an upgrade handover
//! (`src/handover/`). The old process's link, once told to forward, hands every stanza it
//! receives to the new process as XML text instead of handling it; the new process feeds
//! such text to its own service as if its link had received it. Replies are then sent by
//! the new process only, so none is lost when the server closes the old link.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use xmpp_parsers::stanza::Stanza;

/// Stanzas forwarded at once at most (the new process is logging in meanwhile); beyond
/// it they are dropped and counted, as a server would drop them for a gone component.
pub const FORWARD_QUEUE: usize = 4096;

/// The old side: where received stanzas go once forwarding is on.
#[derive(Debug, Default)]
pub struct Forward {
    to: Mutex<Option<SyncSender<String>>>,
    pub dropped: std::sync::atomic::AtomicU64,
}

impl Forward {
    /// Turns forwarding on; the receiver yields each stanza's XML.
    pub fn start(&self) -> Receiver<String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(FORWARD_QUEUE);
        *self.to.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    pub fn active(&self) -> bool {
        self.to.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Forwards `st` if forwarding is on; gives it back otherwise.
    pub fn offer(&self, st: Stanza) -> Option<Stanza> {
        let guard = self.to.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Some(st);
        };
        match to_xml(&st).map(|x| tx.try_send(x)) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        None
    }

    /// Ends forwarding (the receiver sees the end).
    pub fn stop(&self) {
        self.to.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

pub fn to_xml(st: &Stanza) -> Option<String> {
    xso::to_vec(st).ok().and_then(|v| String::from_utf8(v).ok())
}

pub fn from_xml(xml: &str) -> Option<Stanza> {
    xso::from_bytes::<Stanza>(xml.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_survives_the_trip_as_text() {
        let xml = "<iq xmlns='jabber:component:accept' type='set' id='a1' \
                   from='alice@example.org/r' to='proxy.example.org'>\
                   <query xmlns='http://jabber.org/protocol/bytestreams' sid='s1'>\
                   <activate>bob@example.org/r</activate></query></iq>";
        let st = from_xml(xml).expect("parses");
        let again = from_xml(&to_xml(&st).unwrap()).unwrap();
        assert_eq!(st, again);
        assert!(from_xml("<iq").is_none());
        assert!(from_xml("<foo xmlns='x'/>").is_none());
    }

    #[test]
    fn forwarding_hands_stanzas_over_only_while_on() {
        let f = Forward::default();
        let st = from_xml("<message xmlns='jabber:component:accept' to='a@b'/>").unwrap();
        assert!(f.offer(st).is_some(), "off: the stanza comes back");
        let rx = f.start();
        let st = from_xml("<message xmlns='jabber:component:accept' to='a@b'/>").unwrap();
        assert!(f.offer(st).is_none());
        assert!(rx.recv().unwrap().contains("message"));
        f.stop();
        assert!(rx.recv().is_err(), "stopped: the receiver ends");
    }
}
