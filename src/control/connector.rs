//! The component's TCP connector: tokio-xmpp's plaintext connector plus TCP_NODELAY
//! and the stanza bounds. An activation reply is one small write; with Nagle it could
//! wait behind an unacknowledged earlier write for the peer's delayed ACK (~40 ms).
//! Everything read goes through `BoundedStream` before the XML parser sees it.

use super::bounded_stream::{BoundedStream, DropCounts};
use super::stanza_bounds::{Dropped, StanzaLimits};
use sasl::common::ChannelBinding;
use std::borrow::Cow;
use std::sync::Arc;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::xmlstream::{initiate_stream, PendingFeaturesRecv, StreamHeader, Timeouts};
use tokio_xmpp::Error;

#[derive(Debug, Clone)]
pub struct NoDelayConnector {
    pub dns: DnsConfig,
    pub limits: StanzaLimits,
    pub counts: Arc<DropCounts>,
    pub reports: mpsc::Sender<Dropped>,
}

impl ServerConnector for NoDelayConnector {
    type Stream = BufStream<BoundedStream<TcpStream>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<Self::Stream>, ChannelBinding), Error> {
        let tcp = self.dns.resolve().await?;
        tcp.set_nodelay(true)?;
        let header = StreamHeader {
            to: Some(Cow::Borrowed(jid.domain().as_str())),
            from: None,
            id: None,
        };
        let bounded =
            BoundedStream::new(tcp, self.limits, self.counts.clone(), self.reports.clone());
        let stream = initiate_stream(BufStream::new(bounded), ns, header, timeouts).await?;
        Ok((stream, ChannelBinding::None))
    }
}
