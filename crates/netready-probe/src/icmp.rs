//! ICMP echo from inside a pod's netns with `surge-ping`.
//!
//! A fresh netns has `net.ipv4.ping_group_range = 1 0`, so unprivileged ICMP sockets fail
//! there; netready runs as root and uses raw sockets. The round trip is timed here, around
//! the whole send-and-wait: surge-ping's own stamp starts after the send returns.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use std::path::Path;

use surge_ping::{Client, Config, PingIdentifier, PingSequence, SurgeError, ICMP};

use crate::error::{Error, Result};

/// An ICMP socket inside one pod's netns (one per address family), reusable for many pings.
#[derive(Clone)]
pub struct IcmpSocket {
    client: Client,
    ident: u16,
}

impl std::fmt::Debug for IcmpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcmpSocket")
            .field("ident", &self.ident)
            .finish()
    }
}

impl IcmpSocket {
    /// Opens a raw ICMP (v4 or v6) socket inside the netns at `ns`, registered with the
    /// current runtime.
    pub async fn open(ns: &Path, v6: bool) -> Result<Self> {
        let handle = tokio::runtime::Handle::current();
        crate::in_netns(ns, move || Self::here(&handle, v6)).await?
    }

    /// Opens one in the calling thread's netns, registered with the runtime of `handle`: for
    /// a caller that is in a pod's netns already, making more sockets there in one visit.
    pub fn here(handle: &tokio::runtime::Handle, v6: bool) -> Result<Self> {
        let _rt = handle.enter();
        let cfg = Config::builder()
            .kind(if v6 { ICMP::V6 } else { ICMP::V4 })
            .sock_type_hint(socket2::Type::RAW)
            .build();
        let client = Client::new(&cfg).map_err(|e| Error::Socket(e.to_string()))?;
        Ok(IcmpSocket {
            client,
            ident: rand::random(),
        })
    }

    /// One echo request to `target`; the round-trip time, or why there was none.
    pub async fn ping(&self, target: IpAddr, seq: u16, timeout: Duration) -> Result<Duration> {
        let mut pinger = self.client.pinger(target, PingIdentifier(self.ident)).await;
        pinger.timeout(timeout);
        let start = Instant::now();
        match pinger.ping(PingSequence(seq), &[0u8; 32]).await {
            Ok(_) => Ok(start.elapsed()),
            Err(SurgeError::Timeout { .. }) => Err(Error::Timeout(timeout)),
            Err(e) => Err(Error::Network(e.to_string())),
        }
    }
}
