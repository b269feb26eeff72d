//! Channel names and the channel kinds their prefixes select.

/// Longest channel name, prefix included.
pub const MAX_CHANNEL_NAME_LEN: usize = 164;

/// What a channel's (anchored) prefix makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// No prefix: anyone may subscribe.
    Public,
    /// `cache-`: public, remembering the last event.
    Cache,
    /// `private-`: subscription needs an auth signature.
    Private,
    /// `private-cache-`.
    PrivateCache,
    /// `private-encrypted-`: end-to-end encrypted payloads relayed untouched.
    PrivateEncrypted,
    /// `private-encrypted-cache-`.
    PrivateEncryptedCache,
    /// `presence-`: authenticated, with a member list.
    Presence,
    /// `presence-cache-`.
    PresenceCache,
    /// `#server-to-user-{id}`: events for one signed-in user.
    ServerToUser,
}

impl ChannelKind {
    /// Whether subscribing needs an auth signature.
    pub fn requires_auth(self) -> bool {
        !matches!(self, Self::Public | Self::Cache)
    }

    /// Whether the payloads are end-to-end encrypted.
    pub fn is_encrypted(self) -> bool {
        matches!(self, Self::PrivateEncrypted | Self::PrivateEncryptedCache)
    }

    /// Whether the channel keeps its last event.
    pub fn is_cache(self) -> bool {
        matches!(
            self,
            Self::Cache | Self::PrivateCache | Self::PrivateEncryptedCache | Self::PresenceCache
        )
    }

    /// Whether this is a presence channel.
    pub fn is_presence(self) -> bool {
        matches!(self, Self::Presence | Self::PresenceCache)
    }
}

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// Empty name.
    #[error("channel name is empty")]
    Empty,
    /// Longer than [`MAX_CHANNEL_NAME_LEN`].
    #[error("channel name is longer than {MAX_CHANNEL_NAME_LEN} characters")]
    TooLong,
    /// A character outside `[A-Za-z0-9_\-=@,.;]`.
    #[error("channel name may only contain A-Z a-z 0-9 _ - = @ , . ;")]
    InvalidCharacter,
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

/// Validates a channel name and returns its kind. Prefixes are matched at the start of
/// the name only: `foo-private-bar` is public.
pub fn parse(name: &str) -> Result<ChannelKind, ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_CHANNEL_NAME_LEN {
        return Err(ChannelNameError::TooLong);
    }
    let (body, server_to_user) = match name.strip_prefix("#server-to-user-") {
        Some(id) if !id.is_empty() => (id, true),
        _ => (name, false),
    };
    if !body.bytes().all(allowed) {
        return Err(ChannelNameError::InvalidCharacter);
    }
    if server_to_user {
        return Ok(ChannelKind::ServerToUser);
    }
    const PREFIXES: [(&str, ChannelKind); 7] = [
        (
            "private-encrypted-cache-",
            ChannelKind::PrivateEncryptedCache,
        ),
        ("private-encrypted-", ChannelKind::PrivateEncrypted),
        ("private-cache-", ChannelKind::PrivateCache),
        ("private-", ChannelKind::Private),
        ("presence-cache-", ChannelKind::PresenceCache),
        ("presence-", ChannelKind::Presence),
        ("cache-", ChannelKind::Cache),
    ];
    Ok(PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map_or(ChannelKind::Public, |&(_, k)| k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_anchored() {
        assert_eq!(parse("foo-private-bar"), Ok(ChannelKind::Public));
        assert_eq!(parse("private-foo"), Ok(ChannelKind::Private));
        assert_eq!(
            parse("private-encrypted-x"),
            Ok(ChannelKind::PrivateEncrypted)
        );
        assert_eq!(
            parse("private-encrypted-cache-x"),
            Ok(ChannelKind::PrivateEncryptedCache)
        );
        assert_eq!(parse("presence-cache-x"), Ok(ChannelKind::PresenceCache));
        assert_eq!(parse("cache-x"), Ok(ChannelKind::Cache));
        assert_eq!(parse("#server-to-user-42"), Ok(ChannelKind::ServerToUser));
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(parse("a-b_c=d@e,f.g;h"), Ok(ChannelKind::Public));
        assert_eq!(parse(""), Err(ChannelNameError::Empty));
        assert_eq!(parse(&"a".repeat(164)), Ok(ChannelKind::Public));
        assert_eq!(parse(&"a".repeat(165)), Err(ChannelNameError::TooLong));
        assert_eq!(parse("a b"), Err(ChannelNameError::InvalidCharacter));
        assert_eq!(parse("#foo"), Err(ChannelNameError::InvalidCharacter));
        assert_eq!(
            parse("#server-to-user-"),
            Err(ChannelNameError::InvalidCharacter)
        );
        assert_eq!(parse("ü"), Err(ChannelNameError::InvalidCharacter));
    }
}
