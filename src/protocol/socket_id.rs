//! Socket ids: `"{random}.{sequence}"`, matching `^\d+\.\d+$` as the server SDKs check.

use std::fmt;

/// A connection's socket id. The second part is unique within the process (each worker
/// hands out its own residue class); the first is random, so ids are not guessable and
/// differ across restarts and nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    /// Random part.
    pub random: u32,
    /// Unique part.
    pub seq: u64,
}

impl SocketId {
    /// Parses `"123.456"`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('.')?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        Some(Self {
            random: a.parse().ok()?,
            seq: b.parse().ok()?,
        })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.random, self.seq)
    }
}

/// Hands out socket ids for one worker: sequence numbers `index, index + workers, …`.
pub struct SocketIdGen {
    next: u64,
    step: u64,
}

impl SocketIdGen {
    /// The generator of worker `index` out of `workers`.
    pub fn new(index: usize, workers: usize) -> Self {
        Self {
            next: index as u64 + 1,
            step: workers as u64,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> SocketId {
        let seq = self.next;
        self.next += self.step;
        SocketId {
            random: rand::random::<u32>() % 1_000_000_000,
            seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let id = SocketId {
            random: 123,
            seq: 456,
        };
        assert_eq!(id.to_string(), "123.456");
        assert_eq!(SocketId::parse("123.456"), Some(id));
        for bad in ["", "1", "1.", ".1", "1.2.3", "a.1", "1.-2", " 1.2", "1.2 "] {
            assert_eq!(SocketId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn workers_hand_out_disjoint_ids() {
        let mut a = SocketIdGen::new(0, 2);
        let mut b = SocketIdGen::new(1, 2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next_id().seq));
            assert!(seen.insert(b.next_id().seq));
        }
    }
}
