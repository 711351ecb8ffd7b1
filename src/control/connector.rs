//! The component's TCP connector: tokio-xmpp's plaintext connector plus TCP_NODELAY.
//! An activation reply is one small write; with Nagle it could wait behind an
//! unacknowledged earlier write for the peer's delayed ACK (~40 ms).

use sasl::common::ChannelBinding;
use std::borrow::Cow;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::xmlstream::{initiate_stream, PendingFeaturesRecv, StreamHeader, Timeouts};
use tokio_xmpp::Error;

#[derive(Debug, Clone)]
pub struct NoDelayConnector(pub DnsConfig);

impl ServerConnector for NoDelayConnector {
    type Stream = BufStream<TcpStream>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<Self::Stream>, ChannelBinding), Error> {
        let tcp = self.0.resolve().await?;
        tcp.set_nodelay(true)?;
        let header = StreamHeader {
            to: Some(Cow::Borrowed(jid.domain().as_str())),
            from: None,
            id: None,
        };
        let stream = initiate_stream(BufStream::new(tcp), ns, header, timeouts).await?;
        Ok((stream, ChannelBinding::None))
    }
}
