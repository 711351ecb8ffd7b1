//! Replays bytes "from the XMPP server" through the component's live path, for tests and
//! fuzzing: a throw-away server on loopback accepts the login, sends `input` and closes;
//! the component logs in, filters, parses and answers exactly as it does in production
//! (`component::login_at` and `component::serve`), on a thread with the control
//! thread's stack size. Activations are answered "unknown key" by a stand-in data plane.

use super::bounded_stream::DropCounts;
use super::component::{self, STACK_SIZE};
use super::config::ControlSettings;
use super::service::Service;
use super::stanza_bounds::DropReason;
use super::stream_limit::StreamsPerJid;
use super::telemetry::ActivationStats;
use super::Activator;
use crate::key::StreamKey;
use crate::rendezvous::ActivationOutcome;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Why the link ended (the server closes it after the input).
    pub end: String,
    /// Stanzas dropped unparsed, by reason.
    pub dropped: Vec<(DropReason, u64)>,
    /// Bytes the component sent after its handshake (its replies).
    pub replies: Vec<u8>,
}

/// How long one replay may take before it is abandoned (an error).
const LIMIT: Duration = Duration::from_secs(20);

struct UnknownKeys;

impl Activator for UnknownKeys {
    fn activate_then(&self, _: &StreamKey, done: Box<dyn FnOnce(ActivationOutcome) + Send>) {
        done(ActivationOutcome::UnknownKey)
    }
}

/// Runs one replay of `input` with `settings` (its `server` is replaced).
pub fn replay(settings: &ControlSettings, input: &[u8]) -> io::Result<Replay> {
    let settings = settings.clone();
    let input = input.to_vec();
    std::thread::Builder::new()
        .name("streamhost-replay".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::time::timeout(LIMIT, run(settings, input))
                    .await
                    .map_err(|_| io::Error::other("replay took too long"))?
            })
        })?
        .join()
        .map_err(|_| io::Error::other("the replay thread panicked"))?
}

async fn run(mut settings: ControlSettings, input: Vec<u8>) -> io::Result<Replay> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    settings.server = listener.local_addr()?.to_string();
    let jid = settings.jid.to_string();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 4096];
        // The component's stream header, then its handshake: answered whatever they say.
        let _ = s.read(&mut buf).await?;
        s.write_all(
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
                 xmlns:stream='http://etherx.jabber.org/streams' id='replay' from='{jid}'>"
            )
            .as_bytes(),
        )
        .await?;
        let mut seen = Vec::new();
        while !seen.windows(12).any(|w| w == b"</handshake>") {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::other("no handshake"));
            }
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"<handshake/>").await?;
        // Written while the replies are read, so that neither side can block the other.
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&input).await?;
            w.shutdown().await
        });
        let mut replies = Vec::new();
        // A component that ends the link with input unread resets it: an end like any other.
        if let Err(e) = r.read_to_end(&mut replies).await {
            if e.kind() != io::ErrorKind::ConnectionReset {
                return Err(e);
            }
        }
        // The component may close before it has read everything (a parse error).
        let _ = writer.await;
        Ok::<_, io::Error>(replies)
    });
    let drops = Arc::new(DropCounts::default());
    let link = match component::login_at(&settings, &settings.server, &drops).await {
        Ok(link) => link,
        // Input that ends the link before the login completes (malformed right after the
        // handshake) is an outcome like any other.
        Err(why) => {
            let _ = server.await;
            return Ok(Replay {
                end: format!("login failed: {why}"),
                dropped: drops.snapshot().to_vec(),
                replies: Vec::new(),
            });
        }
    };
    let service = Service::new(&settings);
    let stats = Arc::new(ActivationStats::default());
    let limit = StreamsPerJid::new(settings.max_streams_per_jid);
    let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let shared = Arc::new(component::Shared::default());
    let ctx = component::Ctx {
        service: &service,
        activator: &UnknownKeys,
        settings: &settings,
        stats: &stats,
        limit: &limit,
        shared: &shared,
    };
    let end = component::serve(link, &ctx, &mut stop).await;
    let replies = server
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(Replay {
        end: end.describe(),
        dropped: drops.snapshot().to_vec(),
        replies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::{ControlConfig, Secret, MAX_STANZA_DEPTH};
    use crate::shaping::units::ByteSize;

    fn settings(tune: impl FnOnce(&mut ControlConfig)) -> ControlSettings {
        let mut c = ControlConfig {
            jid: "proxy.example.org".into(),
            secret: Some(Secret::new("x")),
            advertise: vec!["192.0.2.1:7777".into()],
            ..ControlConfig::default()
        };
        tune(&mut c);
        c.resolve(&[]).unwrap()
    }

    /// A stanza whose element nesting, the stanza included, is `depth`.
    fn deep(open: &str, close: &str, depth: usize) -> String {
        let n = depth - 1;
        format!("{open}{}{}{close}", "<a>".repeat(n), "</a>".repeat(n))
    }

    fn dropped(r: &Replay, reason: DropReason) -> u64 {
        r.dropped.iter().find(|(x, _)| *x == reason).unwrap().1
    }

    const IQ: &str = "<iq type='get' id='q1' from='romeo@example.org/r' to='proxy.example.org'>";

    #[test]
    fn the_deepest_allowed_stanzas_parse_on_the_control_threads_stack() {
        let s = settings(|c| c.max_stanza_depth = MAX_STANZA_DEPTH);
        let depth = MAX_STANZA_DEPTH as usize;
        let input = format!(
            "{}{}<iq type='get' id='after' from='romeo@example.org/r' to='proxy.example.org'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
            deep("<message from='a@example.org'>", "</message>", depth),
            deep(IQ, "</iq>", depth),
        );
        let r = replay(&s, input.as_bytes()).unwrap();
        assert_eq!(dropped(&r, DropReason::Depth), 0);
        let replies = String::from_utf8_lossy(&r.replies);
        // The deep IQ was parsed and answered (its payload is unknown), then the ping.
        assert!(
            replies.contains("id='q1'") || replies.contains("id=\"q1\""),
            "{replies}"
        );
        assert!(replies.contains("after"), "{replies}");
    }

    #[test]
    fn over_the_limits_is_dropped_and_an_iq_gets_policy_violation() {
        let s = settings(|c| c.max_stanza_size = ByteSize(8192));
        let input = format!(
            "{}{}<message from='a@example.org'><body>{}</body></message><bogus/>\
             <iq type='get' id='after' from='romeo@example.org/r' to='proxy.example.org'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
            deep(IQ, "</iq>", 65),
            deep("<message from='a@example.org'>", "</message>", 10_000),
            "x".repeat(10_000),
        );
        let r = replay(&s, input.as_bytes()).unwrap();
        assert_eq!(dropped(&r, DropReason::Depth), 2);
        assert_eq!(dropped(&r, DropReason::Size), 1);
        assert_eq!(dropped(&r, DropReason::Unknown), 1);
        let replies = String::from_utf8_lossy(&r.replies);
        assert!(replies.contains("policy-violation"), "{replies}");
        assert!(replies.contains("after"), "the link went on: {replies}");
    }
}
