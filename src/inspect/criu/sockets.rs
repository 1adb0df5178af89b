//! Sockets as CRIU recorded them: the inet, unix, packet and netlink entries `files.img`
//! embeds (addresses, ports, state, names, buffer sizes) and the queued packets of
//! `sk-queues.img`, whose data is skipped, never kept.

use super::proto::{
    CriuError, IMG_COMMON_MAGIC, bad, bytes_of, fields, name_of, opt_u32, req_u32, words,
};

/// Magic of `sk-queues.img` (`SkPacketEntry { id_for = 1; length = 2 }`, each entry followed
/// by `length` bytes of the queued data).
pub const SK_QUEUES_MAGIC: u32 = 0x5626_4026;
/// Socket options CRIU keeps (`SkOptsEntry { so_sndbuf = 1; so_rcvbuf = 2 }`).
fn buffers(opts: Option<&[u8]>) -> Result<(u32, u32), CriuError> {
    let Some(opts) = opts else {
        return Ok((0, 0));
    };
    let f = fields(opts)?;
    Ok((opt_u32(&f, 1, "so_sndbuf")?, opt_u32(&f, 2, "so_rcvbuf")?))
}

/// A socket as CRIU recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketImage {
    /// Inode number.
    pub ino: u32,
    /// Address family (`AF_*`), 0 when the image does not say.
    pub family: u32,
    /// Socket type (`SOCK_*`).
    pub sk_type: u32,
    /// Protocol (`IPPROTO_*`, or the netlink/packet protocol).
    pub protocol: u32,
    /// Kernel socket state (TCP states; unix sockets use the same numbers).
    pub state: u32,
    /// Local address: IPv4/IPv6 words as CRIU stores them, or a unix name's bytes.
    pub src_addr: Vec<u32>,
    /// Local port.
    pub src_port: u32,
    /// Peer address words.
    pub dst_addr: Vec<u32>,
    /// Peer port.
    pub dst_port: u32,
    /// A unix socket's name (abstract names start with a NUL byte).
    pub name: Vec<u8>,
    /// A unix socket's peer inode.
    pub peer: u32,
    /// SO_SNDBUF.
    pub send_buffer: u32,
    /// SO_RCVBUF.
    pub receive_buffer: u32,
}

pub(super) fn socket_of(kind: u32, body: &[u8]) -> Result<SocketImage, CriuError> {
    let f = fields(body)?;
    let mut s = SocketImage::default();
    match kind {
        // InetSkEntry
        4 => {
            s.ino = opt_u32(&f, 2, "ino")?;
            s.family = opt_u32(&f, 3, "family")?;
            s.sk_type = opt_u32(&f, 4, "type")?;
            s.protocol = opt_u32(&f, 5, "proto")?;
            s.state = opt_u32(&f, 6, "state")?;
            s.src_port = opt_u32(&f, 7, "src_port")?;
            s.dst_port = opt_u32(&f, 8, "dst_port")?;
            s.src_addr = words(&f, 11, "src_addr")?;
            s.dst_addr = words(&f, 12, "dst_addr")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 14))?;
        }
        // UnixSkEntry
        5 => {
            s.family = 1;
            s.ino = opt_u32(&f, 2, "ino")?;
            s.sk_type = opt_u32(&f, 3, "type")?;
            s.state = opt_u32(&f, 4, "state")?;
            s.peer = opt_u32(&f, 8, "peer")?;
            s.name = name_of(&f, 11, "unix socket name")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 10))?;
        }
        // PacketSockEntry
        10 => {
            s.family = 17;
            s.sk_type = opt_u32(&f, 2, "type")?;
            s.protocol = opt_u32(&f, 3, "protocol")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 7))?;
        }
        // NetlinkSkEntry
        _ => {
            s.family = 16;
            s.ino = opt_u32(&f, 2, "ino")?;
            s.protocol = opt_u32(&f, 3, "protocol")?;
            s.state = opt_u32(&f, 4, "state")?;
            (s.send_buffer, s.receive_buffer) = buffers(bytes_of(&f, 12))?;
        }
    }
    Ok(s)
}

/// The queued packets of `sk-queues.img`: (the socket's file id, bytes), at most `max`
/// packets. The data itself is skipped, never kept.
pub fn parse_sk_queues(img: &[u8], max: usize) -> Result<Vec<(u32, u32)>, CriuError> {
    let word = |b: &[u8], at: usize| -> Option<u32> {
        let w = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([
            *w.first()?,
            *w.get(1)?,
            *w.get(2)?,
            *w.get(3)?,
        ]))
    };
    if word(img, 0) != Some(IMG_COMMON_MAGIC) || word(img, 4) != Some(SK_QUEUES_MAGIC) {
        return Err(bad("not an sk-queues image (magic)"));
    }
    let mut rest = img.get(8..).unwrap_or_default();
    let mut out = Vec::new();
    while !rest.is_empty() {
        if out.len() >= max {
            return Err(bad(format!("more than {max} queued packets")));
        }
        let len = word(rest, 0).ok_or_else(|| bad("entry length runs past the end"))? as usize;
        let body = rest
            .get(4..4usize.saturating_add(len))
            .ok_or_else(|| bad(format!("entry of {len} bytes runs past the end")))?;
        let f = fields(body)?;
        let id = req_u32(&f, 1, "id_for")?;
        let length = req_u32(&f, 2, "length")?;
        let next = 4usize.saturating_add(len).saturating_add(length as usize);
        rest = rest
            .get(next..)
            .ok_or_else(|| bad(format!("a packet of {length} bytes runs past the end")))?;
        out.push((id, length));
    }
    Ok(out)
}
