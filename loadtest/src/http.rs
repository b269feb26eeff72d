//! A minimal HTTP/1.1 client for the signed Pusher API, over one keep-alive connection.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::Target;
use crate::pusher::hmac_hex;

/// The signed query string for a request, as the Pusher server SDKs build it.
pub fn signed_query(
    target: &Target,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> String {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), target.app_key.clone()),
        ("auth_timestamp".into(), ts.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), hex::encode(Md5::digest(body))));
    }
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sig = hmac_hex(&target.app_secret, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={sig}")
}

/// One keep-alive connection to the API.
pub struct ApiClient {
    target: Target,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl ApiClient {
    pub fn new(target: &Target) -> Self {
        Self {
            target: target.clone(),
            stream: None,
            buf: Vec::with_capacity(8192),
        }
    }

    /// `POST {prefix}/apps/{id}{suffix}` with a JSON body, waiting for the answer. A
    /// kept-alive connection the server closed meanwhile is retried once on a new one.
    pub async fn post(&mut self, suffix: &str, body: &[u8]) -> io::Result<Response> {
        for attempt in 0..2 {
            let res = async {
                self.send_post(suffix, body).await?;
                self.recv().await
            }
            .await;
            match res {
                Err(e) if attempt == 0 && self.buf.is_empty() && is_stale(&e) => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// Sends a POST without waiting for its answer (HTTP/1.1 pipelining: the server answers
    /// requests on one connection in order, and handles them in order).
    pub async fn send_post(&mut self, suffix: &str, body: &[u8]) -> io::Result<()> {
        let path = format!(
            "{}/apps/{}{suffix}",
            self.target.api_prefix, self.target.app_id
        );
        let query = signed_query(&self.target, "POST", &path, body, &[]);
        let mut req = format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.target.api_authority,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        if self.stream.is_none() {
            let s = TcpStream::connect(self.target.api_addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let res = self
            .stream
            .as_mut()
            .expect("connected")
            .write_all(&req)
            .await;
        if res.is_err() {
            self.stream = None;
        }
        res
    }

    /// Reads the next answer.
    pub async fn recv(&mut self) -> io::Result<Response> {
        let res = self.read_response().await;
        if res.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        res
    }

    async fn fill(&mut self) -> io::Result<()> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let mut tmp = [0u8; 8192];
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let (head_end, status, len, close) = loop {
            if let Some(pos) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..pos]).map_err(io::Error::other)?;
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| io::Error::other("bad status line"))?;
                let mut len = 0;
                let mut close = false;
                for line in head.lines().skip(1) {
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().map_err(io::Error::other)?;
                        } else if k.eq_ignore_ascii_case("connection")
                            && v.trim().eq_ignore_ascii_case("close")
                        {
                            close = true;
                        } else if k.eq_ignore_ascii_case("transfer-encoding") {
                            return Err(io::Error::other("chunked responses are not supported"));
                        }
                    }
                }
                break (pos + 4, status, len, close);
            }
            self.fill().await?;
        };
        while self.buf.len() < head_end + len {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        if close {
            self.stream = None;
            self.buf.clear();
        }
        Ok(Response { status, body })
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}
