//! Links, addresses, routes and forwarding of the simulated cluster, over rtnetlink.
//!
//! A netlink socket belongs to the namespace it was opened in, so [`Nl::open`] opens it on a
//! thread inside the target namespace; requests then go from any task.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use netready_netns::Netns;
use rtnetlink::packet_route::route::{RouteMessage, RouteType};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

/// An rtnetlink handle bound to one network namespace.
pub struct Nl {
    handle: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
    ns: String,
}

impl Nl {
    /// Opens a handle in `ns`.
    pub async fn open(ns: &Netns) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns
            .run(move || {
                // The socket registers with the caller's runtime, from the namespace's thread.
                let _g = rt.enter();
                rtnetlink::new_connection()
            })
            .with_context(|| format!("entering {}", ns.path().display()))?
            .with_context(|| format!("netlink socket in {}", ns.name()))?;
        Ok(Nl {
            handle,
            conn: tokio::spawn(conn),
            ns: ns.name().to_owned(),
        })
    }

    async fn index(&self, name: &str) -> anyhow::Result<u32> {
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("{}: link {name}", self.ns))?
            .with_context(|| format!("{}: no link {name}", self.ns))?;
        Ok(link.header.index)
    }

    /// Sets link `name` up.
    pub async fn up(&self, name: &str) -> anyhow::Result<()> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("{}: set {name} up", self.ns))
    }

    /// Adds `ip/prefix` to link `name`.
    pub async fn add_addr(&self, name: &str, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        let index = self.index(name).await?;
        self.handle
            .address()
            .add(index, ip.into(), prefix)
            .execute()
            .await
            .with_context(|| format!("{}: address {ip}/{prefix} on {name}", self.ns))
    }

    /// Routes `dest/prefix` via `gateway` (`prefix` 0: the default route).
    pub async fn add_route(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("{}: route {dest}/{prefix} via {gateway}", self.ns))
    }

    /// Routes `dest/prefix` into a blackhole: packets this namespace forwards there are dropped
    /// without an ICMP error, so their sender hears nothing back, as across a lost link.
    pub async fn add_blackhole(&self, dest: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        self.handle
            .route()
            .add(blackhole(dest, prefix))
            .execute()
            .await
            .with_context(|| format!("{}: blackhole {dest}/{prefix}", self.ns))
    }

    /// Removes the route [`Nl::add_blackhole`] made for `dest/prefix`.
    pub async fn del_blackhole(&self, dest: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        self.handle
            .route()
            .del(blackhole(dest, prefix))
            .execute()
            .await
            .with_context(|| format!("{}: removing blackhole {dest}/{prefix}", self.ns))
    }

    /// Makes a veth pair: `name` stays here, `peer` moves into `other` (both still down).
    pub async fn veth_to(&self, name: &str, peer: &str, other: &Netns) -> anyhow::Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .with_context(|| format!("{}: veth {name}/{peer}", self.ns))?;
        let index = self.index(peer).await?;
        let target = std::fs::File::open(other.path())
            .with_context(|| format!("opening {}", other.path().display()))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(target.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("{}: moving {peer} to {}", self.ns, other.name()))
    }
}

fn blackhole(dest: Ipv4Addr, prefix: u8) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest, prefix)
        .kind(RouteType::BlackHole)
        .build()
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Sets an IPv4 sysctl under `/proc/sys/net/ipv4` inside `ns` (they are per namespace).
pub fn sysctl_ipv4(ns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/{key}");
    let v = value.to_owned();
    ns.run(move || std::fs::write(&path, v))?
        .with_context(|| format!("{}: net.ipv4.{key}={value}", ns.name()))
}

/// Wires `a` and `b` with a veth pair on a /30: `a_if` gets `.1`, `b_if` gets `.2` of `net`.
/// Returns (`a`'s address, `b`'s address); both ends and both loopbacks are up.
pub async fn link_pair(
    a: (&Nl, &Netns, &str),
    b: (&Nl, &Netns, &str),
    net: Ipv4Addr,
) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let base = u32::from(net) & !3;
    let (ip_a, ip_b) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
    a.0.veth_to(a.2, b.2, b.1).await?;
    a.0.add_addr(a.2, ip_a, 30).await?;
    b.0.add_addr(b.2, ip_b, 30).await?;
    for (nl, ifname) in [(a.0, a.2), (b.0, b.2)] {
        nl.up(ifname).await?;
        nl.up("lo").await?;
    }
    Ok((ip_a, ip_b))
}
