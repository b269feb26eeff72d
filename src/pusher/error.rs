//! Why the protocol refuses something: typed, with Pusher's error type, status or close code
//! attached in one place each.

use crate::metrics::Limited;
use crate::protocol::channel::ChannelNameError;
use crate::protocol::{codes, MAX_EVENT_NAME_LEN, MAX_USER_ID_LEN};

/// Why a subscription is refused, as `pusher:subscription_error` reports it: Pusher's error
/// [`type`](SubscriptionError::kind), a [`status`](SubscriptionError::status) and this
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The channel name is not valid.
    #[error("{0}")]
    InvalidChannelName(ChannelNameError),
    /// The connection has `--max-channels-per-connection` subscriptions already.
    #[error("A connection may subscribe to at most {0} channels")]
    ConnectionChannelLimit(usize),
    /// The connection subscribes faster than `--max-subscriptions-per-second`.
    #[error("A connection may subscribe at most {0} times per second")]
    SubscriptionRate(u32),
    /// A new channel would pass `--max-channels`.
    #[error("The server is at its limit of {0} channels")]
    ServerChannelLimit(usize),
    /// A new channel would pass the app's `max_channels`.
    #[error("This app is at its limit of {0} channels")]
    AppChannelLimit(usize),
    /// `#server-to-user-{id}` of a user the connection is not signed in as.
    #[error("Sign in as this user before subscribing to its #server-to-user- channel")]
    NotThisUser,
    /// A presence subscription without `channel_data`.
    #[error("Presence channels need channel_data with the signed member")]
    MissingChannelData,
    /// The authorization signature is missing or wrong.
    #[error("{0}")]
    Auth(AuthError),
    /// `channel_data` does not describe a member.
    #[error("{0}")]
    InvalidChannelData(MemberError),
    /// The presence channel has its maximum of members.
    #[error("Presence channel {channel} already has the maximum of {max} members")]
    PresenceFull {
        /// The channel.
        channel: String,
        /// The app's `max_presence_members`.
        max: usize,
    },
}

impl SubscriptionError {
    /// Pusher's error type (`data.type` of `pusher:subscription_error`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidChannelName(_) => "InvalidChannelName",
            Self::ConnectionChannelLimit(_)
            | Self::SubscriptionRate(_)
            | Self::ServerChannelLimit(_)
            | Self::AppChannelLimit(_)
            | Self::PresenceFull { .. } => "LimitReached",
            Self::NotThisUser | Self::MissingChannelData | Self::Auth(_) => "AuthError",
            Self::InvalidChannelData(_) => "InvalidChannelData",
        }
    }

    /// The status it carries (`data.status`), as an auth endpoint would have answered.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidChannelName(_) | Self::InvalidChannelData(_) => 400,
            Self::MissingChannelData | Self::Auth(_) => 401,
            Self::NotThisUser | Self::PresenceFull { .. } => 403,
            Self::ConnectionChannelLimit(_)
            | Self::SubscriptionRate(_)
            | Self::ServerChannelLimit(_)
            | Self::AppChannelLimit(_) => 429,
        }
    }

    /// The limit counted in `ringcast_rate_limited_total`, if a limit refused it.
    pub fn limit(&self) -> Option<Limited> {
        match self {
            Self::ConnectionChannelLimit(_) => Some(Limited::ConnectionChannels),
            Self::SubscriptionRate(_) => Some(Limited::Subscriptions),
            Self::ServerChannelLimit(_) | Self::AppChannelLimit(_) => Some(Limited::Channels),
            Self::PresenceFull { .. } => Some(Limited::PresenceMembers),
            _ => None,
        }
    }
}

/// Why an `auth` value (channel authorization or sign-in) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `auth`, or an empty one.
    #[error("auth is missing")]
    Missing,
    /// Not `key:signature`.
    #[error("auth must be \"key:signature\"")]
    Malformed,
    /// The key is not the app's.
    #[error("auth key does not match the app key")]
    WrongKey,
    /// The signature does not match.
    #[error("invalid signature: expected the hex HMAC-SHA256 of {signed:?} with the app secret")]
    BadSignature {
        /// What should have been signed (contains no secret).
        signed: String,
    },
}

/// Why a presence subscription's `channel_data` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// Not JSON.
    #[error("channel_data is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("channel_data must be a JSON object")]
    NotObject,
    /// `user_id` absent, or neither a string nor a number.
    #[error("channel_data.user_id must be a string or a number")]
    UserIdType,
    /// `user_id` empty or too long.
    #[error("channel_data.user_id must be 1 to {MAX_USER_ID_LEN} characters")]
    UserIdLength,
    /// `user_info` over the app's `max_presence_user_info`.
    #[error("user_info is {size} bytes; at most {max} bytes are allowed")]
    InfoTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a sign-in's `user_data` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    /// Not JSON of the expected shape.
    #[error("user_data is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("user_data must be a JSON object")]
    NotObject,
    /// `id` is not a string.
    #[error("user_data.id must be a string")]
    IdNotString,
    /// `id` empty or too long.
    #[error("user_data.id must be 1 to {MAX_USER_ID_LEN} characters")]
    IdLength,
    /// `id` would not make a valid `#server-to-user-` channel name.
    #[error("user_data.id may only contain A-Z a-z 0-9 _ - = @ , . ;")]
    IdCharacters,
}

/// Why a `pusher:signin` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigninError {
    /// The signature is missing or wrong.
    #[error("Sign-in refused: {0}")]
    Auth(AuthError),
    /// `user_data` is not a valid user.
    #[error("Sign-in refused: {0}")]
    UserData(UserDataError),
    /// The connection is signed in as another user.
    #[error("Sign-in refused: this connection is signed in as {0:?} already")]
    AlreadySignedIn(String),
}

impl SigninError {
    /// The `pusher:error` code: 4009 for authorization failures, none otherwise.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Auth(_) | Self::AlreadySignedIn(_) => Some(codes::CONNECTION_UNAUTHORIZED),
            Self::UserData(_) => None,
        }
    }
}

/// Why a client event is refused (the connection stays open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientEventError {
    /// The app does not allow client events.
    #[error("client events are not enabled for this app")]
    NotEnabled,
    /// No `channel`.
    #[error("no channel given")]
    NoChannel,
    /// An encrypted channel: the server cannot vouch for what it cannot read.
    #[error("client events are not supported on encrypted channels")]
    Encrypted,
    /// Not a private or presence channel.
    #[error("client events are only supported on private and presence channels")]
    NotPrivate,
    /// The sender is not subscribed to the channel.
    #[error("not subscribed to {0}")]
    NotSubscribed(String),
    /// The event name is too long.
    #[error("event name is longer than {MAX_EVENT_NAME_LEN} characters")]
    NameTooLong,
    /// `data` is over `--max-event-size`.
    #[error("data is {size} bytes; at most {max} bytes are allowed")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Over the app's `client_event_rate`.
    #[error("at most {0} client events per second")]
    RateLimited(u32),
}

impl ClientEventError {
    /// The `pusher:error` code: 4301 for the rate limit, none otherwise.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::RateLimited(_) => Some(codes::CLIENT_EVENT_RATE_LIMIT),
            _ => None,
        }
    }
}
