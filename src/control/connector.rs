//! The component's TCP connector: tokio-xmpp's plaintext connector plus TCP_NODELAY
//! and the stanza bounds. An activation reply is one small write; with Nagle it could
//! wait behind an unacknowledged earlier write for the peer's delayed ACK (~40 ms).
//! Everything read goes through `BoundedStream` before the XML parser sees it. With
//! `component.tls` the TCP connection is wrapped in TLS first (`tls.rs`).

use super::bounded_stream::{BoundedStream, DropCounts};
use super::stanza_bounds::{Dropped, StanzaLimits};
use super::tls::ComponentTls;
use sasl::common::ChannelBinding;
use std::borrow::Cow;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::sync::mpsc;
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::xmlstream::{initiate_stream, PendingFeaturesRecv, StreamHeader, Timeouts};
use tokio_xmpp::Error;

/// The link's byte stream: plain TCP or TLS over it.
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkIo for T {}

#[derive(Debug, Clone)]
pub struct NoDelayConnector {
    pub dns: DnsConfig,
    pub limits: StanzaLimits,
    pub counts: Arc<DropCounts>,
    pub reports: mpsc::Sender<Dropped>,
    pub tls: Option<ComponentTls>,
}

impl ServerConnector for NoDelayConnector {
    type Stream = BufStream<BoundedStream<Box<dyn LinkIo>>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<Self::Stream>, ChannelBinding), Error> {
        let tcp = self.dns.resolve().await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn LinkIo> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                Box::new(connector.connect(tls.name.clone(), tcp).await?)
            }
        };
        let header = StreamHeader {
            to: Some(Cow::Borrowed(jid.domain().as_str())),
            from: None,
            id: None,
        };
        let bounded =
            BoundedStream::new(io, self.limits, self.counts.clone(), self.reports.clone());
        let stream = initiate_stream(BufStream::new(bounded), ns, header, timeouts).await?;
        Ok((stream, ChannelBinding::None))
    }
}
