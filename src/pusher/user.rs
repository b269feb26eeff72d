//! Users: `pusher:signin` (a signed `user_data`), the watchlist online/offline events, and
//! terminating a user's connections.
//!
//! A user is online from its first signed-in connection anywhere to its last; the broker
//! counts connections and decides both transitions ([`on_signed_in`], [`on_signed_out`]).

use std::collections::HashSet;
use std::sync::Arc;

use super::{authorize, ConnState, Ctx, Effect, SigninError, UserDataError};
use crate::protocol::channel;
use crate::protocol::client::Signin;
use crate::protocol::{codes, messages, SocketId, MAX_USER_ID_LEN};

/// Most user ids in one watchlist.
pub const MAX_WATCHLIST: usize = 100;

/// `pusher:signin`.
pub fn signin(
    conn: &mut ConnState,
    ctx: &Ctx<'_>,
    socket_id: SocketId,
    req: &Signin,
    out: &mut Vec<Effect>,
) {
    let user = match check(conn, ctx, socket_id, req) {
        Ok(user) => user,
        Err(e) => return out.push(Effect::Send(messages::error(e.code(), &e.to_string()))),
    };
    let success = messages::signin_success(&req.user_data);
    if conn.user().is_some() {
        // Signed in as this user already: nothing changes.
        return out.push(Effect::Send(success));
    }
    conn.authorized = true;
    out.push(Effect::Send(success));
    // Each watched user once (in the order given): a repeated id would otherwise get one
    // identical frame per repetition at every transition.
    let mut seen = HashSet::with_capacity(user.watchlist.len());
    let mut watchlist: Vec<Arc<str>> = user
        .watchlist
        .iter()
        .filter(|w| seen.insert(w.as_str()))
        .map(|w| Arc::from(w.as_str()))
        .collect();
    if watchlist.len() > MAX_WATCHLIST {
        out.push(Effect::Send(messages::error(
            Some(codes::WATCHLIST_LIMIT_EXCEEDED),
            &format!(
                "Watchlist has {} user ids; at most {MAX_WATCHLIST} are allowed, so it is ignored",
                watchlist.len()
            ),
        )));
        watchlist.clear();
    }
    let id: Arc<str> = Arc::from(user.id);
    conn.sign_in(id.clone(), watchlist.clone());
    out.push(Effect::SignIn {
        user: id,
        watchlist,
    });
}

/// The signed user, or why the sign-in is refused.
fn check(
    conn: &ConnState,
    ctx: &Ctx<'_>,
    socket_id: SocketId,
    req: &Signin,
) -> Result<User, SigninError> {
    let signed = format!("{socket_id}::user::{}", req.user_data);
    authorize(ctx.settings, Some(&req.auth), &signed).map_err(SigninError::Auth)?;
    let user = parse_user(&req.user_data).map_err(SigninError::UserData)?;
    match conn.user() {
        Some(current) if **current != *user.id => {
            Err(SigninError::AlreadySignedIn(current.to_string()))
        }
        _ => Ok(user),
    }
}

/// The broker's answer to [`Effect::SignIn`]: the connection is told which of its watched
/// users are online, and, if this was the user's first connection, its watchers that it
/// came online.
pub fn on_signed_in(
    user: &Arc<str>,
    came_online: bool,
    watched_online: &[Arc<str>],
    out: &mut Vec<Effect>,
) {
    if !watched_online.is_empty() {
        let ids: Vec<&str> = watched_online.iter().map(|u| &**u).collect();
        out.push(Effect::Send(messages::watchlist_event(true, &ids)));
    }
    if came_online {
        out.push(Effect::Watchlist {
            user: user.clone(),
            online: true,
        });
    }
}

/// The broker's answer to [`Effect::SignOut`]: if that was the user's last connection, its
/// watchers are told it went offline.
pub fn on_signed_out(user: &Arc<str>, went_offline: bool, out: &mut Vec<Effect>) {
    if went_offline {
        out.push(Effect::Watchlist {
            user: user.clone(),
            online: false,
        });
    }
}

/// A watched user came online or went offline: the frame for each connection watching it.
pub fn watchlist_changed(user: &str, online: bool) -> bytes::Bytes {
    messages::watchlist_event(online, &[user])
}

/// `terminate_connections` for the user this connection is signed in as: closed with 4009.
pub fn terminated(out: &mut Vec<Effect>) {
    out.push(Effect::Close {
        code: codes::CONNECTION_UNAUTHORIZED,
        reason: "Connection terminated: the app ended this user's connections".into(),
    });
}

#[derive(serde::Deserialize)]
struct UserData {
    id: serde_json::Value,
    #[serde(default)]
    watchlist: Vec<String>,
}

/// A signed-in user.
#[derive(Debug, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub id: String,
    /// The user ids it watches, as given.
    pub watchlist: Vec<String>,
}

/// The user a sign-in names: `user_data` with a string `id` that can name a
/// `#server-to-user-` channel, and an optional `watchlist`.
pub fn parse_user(user_data: &str) -> Result<User, UserDataError> {
    // serde would also read the struct from an array: only an object is a user.
    if !user_data.trim_start().starts_with('{') {
        return Err(UserDataError::NotObject);
    }
    let d: UserData =
        serde_json::from_str(user_data).map_err(|e| UserDataError::NotJson(e.to_string()))?;
    let id = match d.id {
        serde_json::Value::String(s) => s,
        _ => return Err(UserDataError::IdNotString),
    };
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(UserDataError::IdLength);
    }
    if channel::parse(&format!("#server-to-user-{id}")).is_err() {
        return Err(UserDataError::IdCharacters);
    }
    Ok(User {
        id,
        watchlist: d.watchlist,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn error_of(out: &[Effect]) -> (serde_json::Value, String) {
        let v = frame_json(sent(&out[0]));
        assert_eq!(v["event"], "pusher:error", "{v}");
        (
            v["data"]["code"].clone(),
            v["data"]["message"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn a_signed_sign_in_succeeds_and_records_the_user() {
        let mut t = Test::new();
        let out = t.signin("ann", &["bob", "bob", "cy"]);
        let v = frame_json(sent(&out[0]));
        assert_eq!(v["event"], "pusher:signin_success");
        assert_eq!(
            out[1],
            Effect::SignIn {
                user: "ann".into(),
                watchlist: vec!["bob".into(), "cy".into()],
            },
            "each watched user once"
        );
        assert_eq!(t.conn.user().map(|u| &**u), Some("ann"));
        assert!(t.conn.authorized);
    }

    #[test]
    fn a_bad_signature_is_refused_with_4009() {
        let mut t = Test::new();
        let data = r#"{"id":"ann"}"#;
        let (code, message) = error_of(&t.signin_with(data, &format!("{KEY}:{}", "0".repeat(64))));
        assert_eq!(code, 4009);
        assert!(
            message.starts_with("Sign-in refused: invalid signature"),
            "{message}"
        );
        assert!(t.conn.user().is_none());
    }

    #[test]
    fn invalid_user_data_is_refused_without_a_code() {
        let mut t = Test::new();
        let data = r#"{"id":12345}"#;
        let auth = t.auth(&format!("{}::user::{data}", t.socket_id));
        let (code, message) = error_of(&t.signin_with(data, &auth));
        assert!(code.is_null());
        assert_eq!(message, "Sign-in refused: user_data.id must be a string");
    }

    #[test]
    fn signing_in_again_as_the_same_user_succeeds_as_another_is_refused() {
        let mut t = Test::new();
        t.signin("ann", &[]);
        let out = t.signin("ann", &[]);
        assert_eq!(out.len(), 1, "nothing to record twice: {out:?}");
        assert_eq!(frame_json(sent(&out[0]))["event"], "pusher:signin_success");
        let (code, message) = error_of(&t.signin("bob", &[]));
        assert_eq!(code, 4009);
        assert!(
            message.contains("signed in as \"ann\" already"),
            "{message}"
        );
    }

    #[test]
    fn a_watchlist_over_100_is_ignored_with_4302() {
        let mut t = Test::new();
        let ids: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let out = t.signin("ann", &ids);
        let v = frame_json(sent(&out[1]));
        assert_eq!(v["data"]["code"], 4302);
        assert_eq!(
            out[2],
            Effect::SignIn {
                user: "ann".into(),
                watchlist: vec![]
            }
        );
    }

    #[test]
    fn watched_users_online_are_reported_and_a_first_sign_in_tells_watchers() {
        let user: Arc<str> = "ann".into();
        let mut out = Vec::new();
        on_signed_in(&user, true, &["bob".into()], &mut out);
        let data = frame_data(sent(&out[0]));
        assert_eq!(data["events"][0]["name"], "online");
        assert_eq!(data["events"][0]["user_ids"], serde_json::json!(["bob"]));
        assert_eq!(
            out[1],
            Effect::Watchlist {
                user: user.clone(),
                online: true
            }
        );
        let mut out = Vec::new();
        on_signed_in(&user, false, &[], &mut out);
        assert!(out.is_empty(), "another tab: nothing to tell");
        on_signed_out(&user, false, &mut out);
        assert!(out.is_empty(), "a tab is still signed in");
        on_signed_out(&user, true, &mut out);
        assert_eq!(
            out,
            vec![Effect::Watchlist {
                user,
                online: false
            }]
        );
    }

    #[test]
    fn terminated_connections_close_with_4009() {
        let mut out = Vec::new();
        terminated(&mut out);
        assert!(matches!(&out[..], [Effect::Close { code: 4009, .. }]));
    }

    #[test]
    fn user_data_needs_a_string_id_fit_for_a_channel_name() {
        assert_eq!(parse_user(r#"{"id":"12345"}"#).unwrap().id, "12345");
        let u = parse_user(r#"{"id":"a","watchlist":["b","c"],"user_info":{"x":1}}"#).unwrap();
        assert_eq!(u.watchlist, vec!["b", "c"]);
        assert_eq!(
            parse_user(r#"{"id":12345}"#),
            Err(UserDataError::IdNotString)
        );
        assert_eq!(parse_user(r#"{"id":""}"#), Err(UserDataError::IdLength));
        assert_eq!(
            parse_user(r#"{"id":"a b"}"#),
            Err(UserDataError::IdCharacters)
        );
        assert!(matches!(parse_user("{"), Err(UserDataError::NotJson(_))));
        // Found by fuzzing: the struct's fields as an array were accepted.
        assert!(matches!(
            parse_user(r#"["ann", []]"#),
            Err(UserDataError::NotObject)
        ));
    }
}
