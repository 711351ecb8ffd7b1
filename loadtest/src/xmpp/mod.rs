//! The XMPP side of the load generator: XEP-0114 streams, both ends.

pub mod component;
pub mod embedded;
pub mod link;
pub mod xml;
