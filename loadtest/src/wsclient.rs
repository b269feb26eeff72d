//! A minimal, allocation-light WebSocket client: the handshake, masked text frames out, and
//! server frames parsed in place from the bytes received. Receiving goes through one
//! scratch buffer per harness thread, so idle connections hold no buffer.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use bytes::BytesMut;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::cli::WsTarget;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

/// Opens a TCP connection, from `source` if given (with `IP_BIND_ADDRESS_NO_PORT`, so the
/// source port is picked at connect time and each source address has its own port range).
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket connection after the handshake.
pub struct WsConn {
    pub stream: TcpStream,
    /// Received bytes of a frame not yet complete.
    pending: BytesMut,
}

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Completes the opening handshake for `path` on `stream`, connected to `ws`.
pub async fn handshake(mut stream: TcpStream, ws: &WsTarget, path: &str) -> io::Result<WsConn> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ws.authority
    );
    stream.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let end = loop {
        let mut tmp = [0u8; 1024];
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the WebSocket handshake",
            ));
        }
        head.extend_from_slice(&tmp[..n]);
        if let Some(pos) = memchr::memmem::find(&head, b"\r\n\r\n") {
            break pos + 4;
        }
        if head.len() > 16 * 1024 {
            return Err(io::Error::other("handshake response too long"));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]);
    if !text.starts_with("HTTP/1.1 101") {
        let status = text.lines().next().unwrap_or("").to_string();
        return Err(io::Error::other(format!(
            "WebSocket upgrade refused: {status}"
        )));
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID);
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    if !text.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
        })
    }) {
        return Err(io::Error::other("wrong Sec-WebSocket-Accept"));
    }
    Ok(WsConn {
        stream,
        pending: BytesMut::from(&head[end..]),
    })
}

/// A masked client text frame.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    frame(0x1, payload)
}

/// A masked client frame of any opcode.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rand::random();
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Calls `f(opcode, payload)` for each complete server frame at the start of `buf`;
/// returns the bytes consumed. Errors on masked or oversized frames.
pub fn parse_frames(buf: &[u8], mut f: impl FnMut(u8, &[u8])) -> io::Result<usize> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            return Ok(at);
        }
        if rest[1] & 0x80 != 0 {
            return Err(io::Error::other("server sent a masked frame"));
        }
        let (len, head) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let n = u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes"));
                if n > 64 << 20 {
                    return Err(io::Error::other("server frame over 64 MiB"));
                }
                (n as usize, 10)
            }
            126 | 127 => return Ok(at),
            n => (n as usize, 2),
        };
        if rest.len() < head + len {
            return Ok(at);
        }
        f(rest[0] & 0x0f, &rest[head..head + len]);
        at += head + len;
    }
}

impl WsConn {
    /// Waits for data and calls `f` for each complete frame. Returns `Ok(false)` at end of
    /// stream.
    pub async fn recv_frames(&mut self, mut f: impl FnMut(u8, &[u8])) -> io::Result<bool> {
        // Frames that arrived with the handshake response are handed out before waiting.
        if !self.pending.is_empty() {
            let used = parse_frames(&self.pending, &mut f)?;
            let _ = self.pending.split_to(used);
            if used > 0 {
                return Ok(true);
            }
        }
        loop {
            self.stream.readable().await?;
            let res = SCRATCH.with_borrow_mut(|scratch| -> io::Result<Option<bool>> {
                let n = match self.stream.try_read(scratch) {
                    Ok(0) => return Ok(Some(false)),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(e),
                };
                if self.pending.is_empty() {
                    let used = parse_frames(&scratch[..n], &mut f)?;
                    self.pending.extend_from_slice(&scratch[used..n]);
                } else {
                    self.pending.extend_from_slice(&scratch[..n]);
                    let used = parse_frames(&self.pending, &mut f)?;
                    let _ = self.pending.split_to(used);
                }
                if self.pending.is_empty() {
                    // Do not keep a buffer while idle.
                    self.pending = BytesMut::new();
                }
                Ok(Some(true))
            })?;
            if let Some(open) = res {
                return Ok(open);
            }
        }
    }

    /// Sends bytes (already framed).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_split_anywhere() {
        let mut wire = vec![0x81, 3, b'a', b'b', b'c', 0x81, 126, 0, 200];
        wire.extend(std::iter::repeat_n(b'x', 200));
        wire.extend([0x89, 0]);
        for cut in 0..wire.len() {
            let mut got = vec![];
            let used = parse_frames(&wire[..cut], |op, p| got.push((op, p.len()))).unwrap();
            let mut rest = wire[used..].to_vec();
            let more = parse_frames(&rest, |op, p| got.push((op, p.len()))).unwrap();
            rest.drain(..more);
            assert!(rest.is_empty());
            assert_eq!(got, vec![(1, 3), (1, 200), (9, 0)], "cut at {cut}");
        }
    }

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        let f = text_frame(b"hello");
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1], 0x80 | 5);
        let mask = &f[2..6];
        let un: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(un, b"hello");
    }
}
