//! `lo` up over rtnetlink, in the calling thread's network namespace: what the CNI `loopback`
//! plugin does for a pod, without a fork and exec per pod.
//!
//! One synchronous request and its ACK on a fresh socket: the caller is a thread that is
//! inside the pod's namespace for a moment (creating it, or entered for this), where an async
//! rtnetlink connection would need a runtime of its own.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `lo`'s index in every network namespace: the kernel registers it first
/// (`loopback_net_init`), so it needs no lookup by name.
const LOOPBACK_INDEX: u32 = 1;

/// Sets `lo` up in the calling thread's network namespace; the kernel then gives it
/// 127.0.0.1/8 and ::1, as the `loopback` plugin leaves it.
pub fn up() -> std::io::Result<()> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = LOOPBACK_INDEX;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(link)),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut reply = Vec::with_capacity(4096);
    sock.recv(&mut reply, 0)?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    match msg.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected netlink answer to RTM_NEWLINK lo up: {other:?}"),
        )),
    }
}
