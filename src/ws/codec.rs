//! A sans-IO RFC 6455 codec for the server side.
//!
//! [`Decoder::decode`] takes complete client messages out of a byte buffer: it checks masking,
//! reserved bits, opcodes and control-frame rules, unmasks in place, reassembles fragmented
//! messages, validates UTF-8 of text messages (failing fast, fragment by fragment) and close
//! payloads, and enforces the message size limit before buffering a frame's payload.
//! [`FrameBuilder`] encodes a server frame into a single `Bytes` with the header written in
//! front of the payload, so the payload is never copied after it is serialized.

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode as FwsOpCode, Payload};

/// RFC 6455 close codes used by the codec.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Unsupported data (binary frames, for the Pusher protocol).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Text that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Message larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Unexpected server condition.
    pub const INTERNAL_ERROR: u16 = 1011;

    /// Whether a peer may send `code` in a close frame (RFC 6455 §7.4, as the Autobahn
    /// suite reads it).
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation = 0x0,
    /// A UTF-8 text message.
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// Close.
    Close = 0x8,
    /// Ping.
    Ping = 0x9,
    /// Pong.
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    fn to_fws(self) -> FwsOpCode {
        match self {
            Self::Continuation => FwsOpCode::Continuation,
            Self::Text => FwsOpCode::Text,
            Self::Binary => FwsOpCode::Binary,
            Self::Close => FwsOpCode::Close,
            Self::Ping => FwsOpCode::Ping,
            Self::Pong => FwsOpCode::Pong,
        }
    }
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message; its bytes are valid UTF-8.
    Text(BytesMut),
    /// A binary message.
    Binary(BytesMut),
    /// A ping with its application data.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame: the code and reason, if the peer sent one.
    Close(Option<(u16, String)>),
}

/// Why the connection must be failed; each maps to the close code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A framing rule was broken (close 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Text or a close reason is not valid UTF-8 (close 1007).
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// The message exceeds the size limit (close 1009).
    #[error("message of at least {size} bytes exceeds the limit of {limit} bytes")]
    TooBig {
        /// Bytes the message has at least.
        size: u64,
        /// The configured limit.
        limit: usize,
        /// Length of the offending frame, header included, counted from the start of the
        /// buffer (when a frame header was the cause).
        frame: Option<u64>,
    },
}

impl DecodeError {
    /// The close code to fail the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => close_code::PROTOCOL_ERROR,
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Self::TooBig { .. } => close_code::MESSAGE_TOO_BIG,
        }
    }

    /// Bytes, from the start of the buffer, that belong to the frame that caused the error,
    /// when known: skipping them finds the next frame boundary.
    pub fn frame_len(&self) -> Option<u64> {
        match self {
            Self::TooBig { frame, .. } => *frame,
            _ => None,
        }
    }
}

/// Most fragments one message may arrive in.
pub const MAX_FRAGMENTS: usize = 1 << 20;

struct Fragmented {
    opcode: OpCode,
    buf: BytesMut,
    /// Bytes of `buf` known to be complete, valid UTF-8 (text only).
    utf8_checked: usize,
    fragments: usize,
}

/// Decodes client frames into messages; holds the state of a fragmented message in progress.
pub struct Decoder {
    max_message_size: usize,
    /// Boxed: rare, and an idle connection should not carry its space.
    fragmented: Option<Box<Fragmented>>,
}

/// Result of checking a UTF-8 prefix that may end inside a code point.
fn check_utf8_prefix(bytes: &[u8]) -> Result<usize, DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        // An incomplete sequence at the end may be completed by the next fragment.
        Err(e) if e.error_len().is_none() => Ok(e.valid_up_to()),
        Err(_) => Err(DecodeError::InvalidUtf8),
    }
}

impl Decoder {
    /// A decoder that refuses messages larger than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            fragmented: None,
        }
    }

    /// Whether a fragmented message is being reassembled.
    pub fn in_message(&self) -> bool {
        self.fragmented.is_some()
    }

    /// Takes the next complete message out of `buf`. Returns `Ok(None)` when `buf` holds
    /// only part of a frame (or a non-final fragment); the caller appends more bytes and
    /// calls again. After an error the connection must be failed with
    /// [`DecodeError::close_code`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        loop {
            let Some(frame) = self.next_frame(buf)? else {
                return Ok(None);
            };
            if let Some(msg) = self.on_frame(frame)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Parses one frame header and, once the whole frame is buffered, splits it off and
    /// unmasks it.
    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, DecodeError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(DecodeError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(DecodeError::Protocol("reserved opcode"))?;
        if b1 & 0x80 == 0 {
            return Err(DecodeError::Protocol("client frames must be masked"));
        }
        let (len, len_bytes) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(DecodeError::Protocol("payload length has its top bit set"));
                }
                (len, 8)
            }
            n => (n as u64, 0),
        };
        if opcode.is_control() {
            if !fin {
                return Err(DecodeError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(DecodeError::Protocol(
                    "control frame payload over 125 bytes",
                ));
            }
        } else {
            // Enforce the limit before buffering the payload: a peer cannot make us hold
            // more than the limit by announcing a large frame.
            let so_far = self.fragmented.as_ref().map_or(0, |f| f.buf.len() as u64);
            if so_far + len > self.max_message_size as u64 {
                return Err(DecodeError::TooBig {
                    size: so_far + len,
                    limit: self.max_message_size,
                    frame: Some((2 + len_bytes + 4) as u64 + len),
                });
            }
        }
        let header = 2 + len_bytes + 4;
        let total = header as u64 + len;
        if (buf.len() as u64) < total {
            // The buffer grows as the payload arrives, not from the announced length: a
            // peer announcing a large frame and trickling it holds only what it sent.
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[2 + len_bytes..header]);
        let _ = buf.split_to(header);
        let mut payload = buf.split_to(len as usize);
        fastwebsockets::unmask(&mut payload, mask);
        Ok(Some(RawFrame {
            fin,
            opcode,
            payload,
        }))
    }

    fn on_frame(&mut self, frame: RawFrame) -> Result<Option<Message>, DecodeError> {
        let RawFrame {
            fin,
            opcode,
            payload,
        } = frame;
        match opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload.freeze()))),
            OpCode::Pong => Ok(Some(Message::Pong(payload.freeze()))),
            OpCode::Close => Ok(Some(Message::Close(parse_close(&payload)?))),
            OpCode::Text | OpCode::Binary => {
                if self.fragmented.is_some() {
                    return Err(DecodeError::Protocol(
                        "new data frame while a fragmented message is unfinished",
                    ));
                }
                if fin {
                    if opcode == OpCode::Text {
                        if std::str::from_utf8(&payload).is_err() {
                            return Err(DecodeError::InvalidUtf8);
                        }
                        return Ok(Some(Message::Text(payload)));
                    }
                    return Ok(Some(Message::Binary(payload)));
                }
                let utf8_checked = if opcode == OpCode::Text {
                    check_utf8_prefix(&payload)?
                } else {
                    0
                };
                self.fragmented = Some(Box::new(Fragmented {
                    opcode,
                    buf: payload,
                    utf8_checked,
                    fragments: 1,
                }));
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(f) = self.fragmented.as_mut() else {
                    return Err(DecodeError::Protocol(
                        "continuation frame without a message",
                    ));
                };
                f.fragments += 1;
                if f.fragments > MAX_FRAGMENTS {
                    return Err(DecodeError::TooBig {
                        size: f.buf.len() as u64,
                        limit: self.max_message_size,
                        frame: None,
                    });
                }
                f.buf.extend_from_slice(&payload);
                if f.opcode == OpCode::Text {
                    f.utf8_checked += check_utf8_prefix(&f.buf[f.utf8_checked..])?;
                }
                if !fin {
                    return Ok(None);
                }
                let f = self.fragmented.take().expect("checked above");
                if f.opcode == OpCode::Text {
                    if f.utf8_checked != f.buf.len() {
                        // Ends inside a code point.
                        return Err(DecodeError::InvalidUtf8);
                    }
                    return Ok(Some(Message::Text(f.buf)));
                }
                Ok(Some(Message::Binary(f.buf)))
            }
        }
    }
}

struct RawFrame {
    fin: bool,
    opcode: OpCode,
    payload: BytesMut,
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, DecodeError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(DecodeError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code::is_valid_on_wire(code) {
                return Err(DecodeError::Protocol("invalid close code"));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| DecodeError::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// Most bytes a server frame header takes (no mask).
pub const MAX_HEADER: usize = 10;

/// Builds one unmasked server frame: serialize the payload into [`FrameBuilder::payload`],
/// then [`FrameBuilder::finish`] writes the header in the reserved space in front of it.
pub struct FrameBuilder {
    buf: BytesMut,
}

impl FrameBuilder {
    /// A builder with room for about `payload_hint` payload bytes.
    pub fn with_capacity(payload_hint: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAX_HEADER + payload_hint);
        buf.put_bytes(0, MAX_HEADER);
        Self { buf }
    }

    /// The payload written so far; append to it.
    pub fn payload(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Writes the header and returns the frame, ready to be written to any number of
    /// sockets.
    pub fn finish(self, opcode: OpCode) -> Bytes {
        let mut buf = self.buf;
        let payload_len = buf.len() - MAX_HEADER;
        let mut head = [0u8; MAX_HEADER];
        let head_len = {
            let mut frame = Frame::new(
                true,
                opcode.to_fws(),
                None,
                Payload::Borrowed(&buf[MAX_HEADER..]),
            );
            frame.fmt_head(&mut head)
        };
        debug_assert_eq!(
            head_len,
            match payload_len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            }
        );
        let start = MAX_HEADER - head_len;
        buf[start..MAX_HEADER].copy_from_slice(&head[..head_len]);
        buf.freeze().slice(start..)
    }
}

/// The payload of an unmasked server frame built here (empty if `frame` is not one).
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let head = match frame.get(1).map(|b| b & 0x7f) {
        None => return &[],
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
    };
    frame.get(head..).unwrap_or_default()
}

/// Encodes a frame, copying `payload`.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut b = FrameBuilder::with_capacity(payload.len());
    b.payload().extend_from_slice(payload);
    b.finish(opcode)
}

/// Encodes a close frame with `code` and a reason (truncated to fit the 125-byte limit at a
/// character boundary).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut b = FrameBuilder::with_capacity(2 + end);
    b.payload().put_u16(code);
    b.payload().extend_from_slice(&reason.as_bytes()[..end]);
    b.finish(OpCode::Close)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(fin as u8) << 7 | opcode];
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
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8], limit: usize) -> Result<Vec<Message>, DecodeError> {
        let mut d = Decoder::new(limit);
        let mut buf = BytesMut::from(bytes);
        let mut out = vec![];
        while let Some(m) = d.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn decodes_masked_text_of_every_length_encoding() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let text = "a".repeat(len);
            let msgs = decode_all(&client_frame(true, 1, text.as_bytes()), 1 << 20).unwrap();
            assert_eq!(msgs, vec![Message::Text(BytesMut::from(text.as_bytes()))]);
        }
    }

    #[test]
    fn decodes_byte_by_byte() {
        let frame = client_frame(true, 1, b"hello world");
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::new();
        let mut got = None;
        for b in frame {
            buf.extend_from_slice(&[b]);
            if let Some(m) = d.decode(&mut buf).unwrap() {
                got = Some(m);
            }
        }
        assert_eq!(
            got,
            Some(Message::Text(BytesMut::from(&b"hello world"[..])))
        );
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let err = decode_all(&[0x81, 0x02, b'h', b'i'], 1024).unwrap_err();
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn reserved_bits_and_opcodes_are_protocol_errors() {
        let mut f = client_frame(true, 1, b"x");
        f[0] |= 0x40;
        assert_eq!(decode_all(&f, 1024).unwrap_err().close_code(), 1002);
        assert_eq!(
            decode_all(&client_frame(true, 3, b"x"), 1024).unwrap_err(),
            DecodeError::Protocol("reserved opcode")
        );
    }

    #[test]
    fn fragmented_text_is_reassembled_across_65536_fragments() {
        let mut bytes = client_frame(false, 1, b"");
        for _ in 0..65_536 {
            bytes.extend(client_frame(false, 0, b"ab"));
        }
        bytes.extend(client_frame(true, 0, b"!"));
        let msgs = decode_all(&bytes, 1 << 20).unwrap();
        assert_eq!(msgs.len(), 1);
        let Message::Text(t) = &msgs[0] else {
            panic!("not text")
        };
        assert_eq!(t.len(), 65_536 * 2 + 1);
    }

    #[test]
    fn control_frames_may_interleave_fragments() {
        let mut bytes = client_frame(false, 1, b"he");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 0, b"llo"));
        let msgs = decode_all(&bytes, 1024).unwrap();
        assert_eq!(
            msgs,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(BytesMut::from(&b"hello"[..]))
            ]
        );
    }

    #[test]
    fn continuation_without_start_and_interleaved_data_are_errors() {
        assert_eq!(
            decode_all(&client_frame(true, 0, b"x"), 1024)
                .unwrap_err()
                .close_code(),
            1002
        );
        let mut bytes = client_frame(false, 1, b"a");
        bytes.extend(client_frame(true, 1, b"b"));
        assert_eq!(decode_all(&bytes, 1024).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_breaks_it() {
        // "κόσμε" split inside a code point is fine…
        let s = "κόσμε".as_bytes();
        let mut bytes = client_frame(false, 1, &s[..3]);
        bytes.extend(client_frame(true, 0, &s[3..]));
        assert_eq!(decode_all(&bytes, 1024).unwrap().len(), 1);
        // …but an invalid byte fails before the message is complete.
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&client_frame(false, 1, &[0xce, 0xba, 0xff])[..]);
        assert_eq!(d.decode(&mut buf), Err(DecodeError::InvalidUtf8));
        // A message ending inside a code point is invalid.
        let mut bytes = client_frame(false, 1, b"a");
        bytes.extend(client_frame(true, 0, &[0xce]));
        assert_eq!(decode_all(&bytes, 1024).unwrap_err().close_code(), 1007);
    }

    #[test]
    fn oversized_messages_fail_before_buffering() {
        // Only the header of a 1 MiB frame has arrived: the limit is enforced already.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let err = decode_all(&header, 64 * 1024).unwrap_err();
        assert_eq!(err.close_code(), 1009);
        assert_eq!(err.frame_len(), Some(14 + (1 << 20)));
        // Fragments add up.
        let mut bytes = client_frame(false, 1, &[b'a'; 600]);
        bytes.extend(client_frame(true, 0, &[b'a'; 600]));
        assert_eq!(decode_all(&bytes, 1000).unwrap_err().close_code(), 1009);
    }

    #[test]
    fn close_frames_are_validated() {
        assert_eq!(
            decode_all(&client_frame(true, 8, &[]), 1024).unwrap(),
            vec![Message::Close(None)]
        );
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        assert_eq!(
            decode_all(&client_frame(true, 8, &p), 1024).unwrap(),
            vec![Message::Close(Some((1000, "bye".into())))]
        );
        assert_eq!(
            decode_all(&client_frame(true, 8, &[3]), 1024)
                .unwrap_err()
                .close_code(),
            1002
        );
        assert_eq!(
            decode_all(&client_frame(true, 8, &1005u16.to_be_bytes()), 1024)
                .unwrap_err()
                .close_code(),
            1002
        );
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.push(0xff);
        assert_eq!(
            decode_all(&client_frame(true, 8, &bad), 1024)
                .unwrap_err()
                .close_code(),
            1007
        );
    }

    #[test]
    fn control_frame_rules() {
        assert_eq!(
            decode_all(&client_frame(true, 9, &[0; 126]), 1024)
                .unwrap_err()
                .close_code(),
            1002
        );
        assert_eq!(
            decode_all(&client_frame(false, 9, b"x"), 1024)
                .unwrap_err()
                .close_code(),
            1002
        );
    }

    #[test]
    fn frame_builder_writes_headers_for_each_length() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let f = encode(OpCode::Text, &payload);
            assert_eq!(f[0], 0x81);
            let (hlen, plen) = match f[1] {
                126 => (4, u16::from_be_bytes([f[2], f[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(plen, len);
            assert_eq!(&f[hlen..], &payload[..]);
        }
    }

    #[test]
    fn close_reason_is_truncated_at_a_char_boundary() {
        let f = encode_close(4200, &"é".repeat(100));
        assert!(f.len() - 2 <= 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
