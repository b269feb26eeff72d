//! A raw WebSocket client over a plain TCP socket, for sending what well-behaved client
//! libraries refuse to send: unmasked frames, invalid UTF-8, reserved bits.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Server, WAIT};

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame from the server.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap()
    }
}

impl RawWs {
    /// Connects and completes the opening handshake on `path`.
    pub async fn connect(server: &Server, path: &str) -> RawWs {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        Self::handshake(stream, server, path).await
    }

    /// Completes the opening handshake on an already connected socket.
    pub async fn handshake(mut stream: TcpStream, server: &Server, path: &str) -> RawWs {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
        };
        let head = ws.read_until_headers_end().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        ws
    }

    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut tmp))
            .await
            .expect("server sent nothing in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    async fn read_until_headers_end(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..pos]).to_string();
                self.buf.drain(..pos + 4);
                return head;
            }
            assert!(self.fill().await, "connection closed during the handshake");
        }
    }

    /// Sends one frame; `mask` false sends it unmasked (a protocol violation).
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: bool) {
        let mut out = vec![(fin as u8) << 7 | opcode];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(m | n as u8),
            n @ 126..=65535 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The server may already have closed: a failed write shows up as the close we read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or `None` at end of stream.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
                let (len, off) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= off + len {
                    let payload = self.buf[off..off + len].to_vec();
                    self.buf.drain(..off + len);
                    return Some(Frame {
                        fin: b0 & 0x80 != 0,
                        opcode: b0 & 0x0f,
                        payload,
                    });
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads frames until a close frame; returns its code. Panics if the stream ends
    /// without one.
    pub async fn read_close(&mut self) -> u16 {
        loop {
            match self.read_frame().await {
                Some(f) if f.opcode == 8 => return f.close_code().unwrap_or(1005),
                Some(_) => {}
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Waits for the server to end the TCP stream.
    pub async fn expect_eof(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut tmp = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => panic!("server did not close the connection"),
            }
        }
    }
}

/// Sleeps briefly (for ordering in tests that race nothing but the scheduler).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
