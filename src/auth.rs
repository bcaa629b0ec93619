//! Access control: JWTs (HS256 or RS256), an API key, and allowed origins.
//!
//! | setting | WebSocket / SSE / reads | publish (WS or HTTP) |
//! |---|---|---|
//! | none | open | open (the node warns at start) |
//! | `--api-key` only | open | the API key |
//! | a JWT key (± API key) | a token whose `rooms` match (or the API key) | a token whose `publish` match (or the API key) |
//!
//! Tokens come in `?token=` or `Authorization: Bearer`; the API key only in
//! the header. Claims: `sub`, `exp` (required), `nbf` (honoured), `rooms`
//! and `publish` (room patterns, `*` matches any run).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::RoomName;
use crate::signing::constant_time_eq;

/// The claims roomcast reads from a token.
#[derive(Clone, Debug, Deserialize)]
pub struct Claims {
    /// Who the token is for (logged, not enforced).
    #[serde(default)]
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Room patterns the holder may subscribe to (and read).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Room patterns the holder may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Room patterns the holder moderates (edits, deletes, bans, settings).
    #[serde(default)]
    pub moderate: Vec<String>,
    /// What presence shows about the subject: a JSON object of at most
    /// [`MAX_INFO_BYTES`] (kept as compact JSON text).
    #[serde(default, deserialize_with = "info_object")]
    pub info: Option<String>,
}

/// Bytes a token's `info` may hold, as compact JSON.
pub const MAX_INFO_BYTES: usize = 1024;

/// Reads `info`: a JSON object of at most [`MAX_INFO_BYTES`], or the token is refused.
fn info_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("`info` must be a JSON object"));
    }
    let text = value.to_string();
    if text.len() > MAX_INFO_BYTES {
        return Err(serde::de::Error::custom(format!("`info` holds more than {MAX_INFO_BYTES} bytes")));
    }
    Ok(Some(text))
}

/// What a request or connection is allowed to do.
#[derive(Clone, Debug)]
pub enum Grant {
    /// No auth setting applies: everything, anonymously.
    Open,
    /// The API key: everything.
    ApiKey,
    /// Anonymous on a node with only an API key: read and subscribe, not publish.
    Anonymous,
    /// A verified token.
    Token(Claims),
}

/// Why a credential was refused (the upgrade or request gets 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential where one is needed.
    #[error("a token is required (?token= or Authorization: Bearer)")]
    Missing,
    /// The API key was sent in the URL, where proxies and browsers log it.
    #[error("the API key is accepted only in the Authorization header, never in a URL")]
    KeyInUrl,
    /// The token did not verify, has expired, or is not valid yet (`nbf`).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The node's access settings.
#[derive(Clone, Default)]
pub struct Auth {
    jwt: Option<(DecodingKey, Validation)>,
    api_key: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("jwt", &self.jwt.is_some()).field("api_key", &self.api_key.is_some()).finish()
    }
}

/// The JWT verification key.
#[derive(Clone, Debug)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(String),
    /// RS256 public key, PEM.
    RsaPem(Vec<u8>),
}

impl Auth {
    /// Builds the access settings; a bad key is a configuration error.
    pub fn new(jwt: Option<JwtKey>, api_key: Option<String>) -> Result<Auth, String> {
        let jwt = match jwt {
            None => None,
            Some(JwtKey::Secret(secret)) => {
                Some((DecodingKey::from_secret(secret.as_bytes()), validation(Algorithm::HS256)))
            }
            Some(JwtKey::RsaPem(pem)) => {
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
                Some((key, validation(Algorithm::RS256)))
            }
        };
        Ok(Auth { jwt, api_key })
    }

    /// True when no setting restricts anything.
    pub fn is_open(&self) -> bool {
        self.jwt.is_none() && self.api_key.is_none()
    }

    /// Checks the credential of a connection or request: the bearer header
    /// wins over the `token` query parameter.
    pub fn authenticate(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Grant, AuthError> {
        if self.is_open() {
            return Ok(Grant::Open);
        }
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let from_header = bearer.filter(|c| !c.is_empty()).is_some();
        let Some(credential) = bearer.or(query_token).filter(|c| !c.is_empty()) else {
            return match self.jwt {
                Some(_) => Err(AuthError::Missing),
                None => Ok(Grant::Anonymous),
            };
        };
        if self.api_key.as_deref().is_some_and(|key| constant_time_eq(key.as_bytes(), credential.as_bytes())) {
            // A key in a URL ends up in proxy logs and browser history.
            return if from_header { Ok(Grant::ApiKey) } else { Err(AuthError::KeyInUrl) };
        }
        match &self.jwt {
            Some((key, validation)) => decode::<Claims>(credential, key, validation)
                .map(|data| Grant::Token(data.claims))
                .map_err(|e| AuthError::Invalid(e.to_string())),
            None => Err(AuthError::Invalid("not the API key".into())),
        }
    }
}

fn validation(algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = 0;
    // RFC 7519: a token is not to be accepted before its `nbf`.
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    v
}

impl Grant {
    /// May subscribe to (and read) `room`.
    pub fn may_subscribe(&self, room: &RoomName) -> bool {
        match self {
            Grant::Open | Grant::ApiKey | Grant::Anonymous => true,
            Grant::Token(claims) => claims.rooms.iter().any(|p| glob_match(p, room.as_str())),
        }
    }

    /// May publish to `room`.
    pub fn may_publish(&self, room: &RoomName) -> bool {
        match self {
            Grant::Open | Grant::ApiKey => true,
            Grant::Anonymous => false,
            Grant::Token(claims) => claims.publish.iter().any(|p| glob_match(p, room.as_str())),
        }
    }

    /// May moderate `room`: the API key, a token whose `moderate` patterns
    /// cover it, or anyone on an open node (which has no credentials at all).
    pub fn may_moderate(&self, room: &RoomName) -> bool {
        match self {
            Grant::Open | Grant::ApiKey => true,
            Grant::Anonymous => false,
            Grant::Token(claims) => claims.moderate.iter().any(|p| glob_match(p, room.as_str())),
        }
    }

    /// How long the grant remains valid (`None`: no expiry).
    pub fn remaining(&self) -> Option<Duration> {
        match self {
            Grant::Token(claims) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                Some(Duration::from_secs(claims.exp.saturating_sub(now)))
            }
            _ => None,
        }
    }

    /// The token's `info` (compact JSON), when it has one.
    pub fn info(&self) -> Option<&str> {
        match self {
            Grant::Token(claims) => claims.info.as_deref(),
            _ => None,
        }
    }

    /// The token's `sub`, when it names one.
    pub fn sub(&self) -> Option<&str> {
        match self {
            Grant::Token(claims) => claims.sub.as_deref(),
            Grant::Open | Grant::ApiKey | Grant::Anonymous => None,
        }
    }

    /// Who holds it, for logs.
    pub fn subject(&self) -> &str {
        match self {
            Grant::Token(claims) => claims.sub.as_deref().unwrap_or("token"),
            Grant::ApiKey => "api-key",
            Grant::Open | Grant::Anonymous => "anonymous",
        }
    }
}

/// Matches a room pattern: `*` stands for any run of characters (`:`
/// included, so `show-*` also covers `show-1:backstage`), `%` for any run
/// that holds no `:` (so `show-%` covers `show-1` and not its sub-rooms).
/// Time and memory grow with the product of the two lengths, never worse.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // `next[j]`: whether the pattern after the current position matches t[j..].
    let mut next: Vec<bool> = (0..=t.len()).map(|j| j == t.len()).collect();
    for &c in p.iter().rev() {
        let mut here = vec![false; t.len() + 1];
        for j in (0..=t.len()).rev() {
            here[j] = match c {
                b'*' => next[j] || (j < t.len() && here[j + 1]),
                b'%' => next[j] || (j < t.len() && t[j] != b':' && here[j + 1]),
                _ => j < t.len() && t[j] == c && next[j + 1],
            };
        }
        next = here;
    }
    next[0]
}

/// Browser origins allowed to connect; empty allows every origin.
#[derive(Clone, Debug, Default)]
pub struct Origins(Vec<String>);

impl Origins {
    /// From a comma-separated list (`*` allows all).
    pub fn parse(list: Option<&str>) -> Origins {
        let origins: Vec<String> = list
            .unwrap_or("")
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.iter().any(|o| o == "*") {
            Origins(Vec::new())
        } else {
            Origins(origins)
        }
    }

    /// Whether a request with these headers may connect. Requests without an
    /// `Origin` header (not from a browser) are allowed.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        match headers.get(axum::http::header::ORIGIN).map(|v| v.to_str()) {
            None => true,
            Some(Ok(origin)) => self.allows_origin(origin),
            // An Origin that is not even text names no allowed page: refused
            // where origins are checked, not taken for a client without one.
            Some(Err(_)) => self.0.is_empty(),
        }
    }

    /// Whether a page of `origin` (an `Origin` header's value) is allowed.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|o| o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {value}").parse().unwrap());
        h
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("show-*", "show-42"));
        assert!(glob_match("show-*", "show-"));
        assert!(!glob_match("show-*", "shop-1"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abcd"));
        assert!(glob_match("exact", "exact"));
        assert!(glob_match("show-*", "show-1:backstage"), "`*` crosses `:`");
        assert!(glob_match("show-%", "show-1"));
        assert!(!glob_match("show-%", "show-1:backstage"), "`%` stops at `:`");
        assert!(glob_match("show-%:chat", "show-1:chat"));
        assert!(glob_match("%", ""));
        assert!(!glob_match("a*a*a*a*a*a*a*a*b", &"a".repeat(128)), "no blow-up on many stars");
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*-vip", "room-vip"));
    }

    #[test]
    fn hs256_tokens_grant_by_pattern() {
        let auth = Auth::new(Some(JwtKey::Secret("s3cret".into())), None).unwrap();
        let t = token(
            "s3cret",
            serde_json::json!({"sub": "ann", "exp": now() + 60, "rooms": ["show-*"], "publish": ["show-1"]}),
        );
        let grant = auth.authenticate(&HeaderMap::new(), Some(&t)).unwrap();
        assert!(grant.may_subscribe(&room("show-9")) && !grant.may_subscribe(&room("backstage")));
        assert!(grant.may_publish(&room("show-1")) && !grant.may_publish(&room("show-2")));
        assert_eq!(grant.subject(), "ann");
        assert!(grant.remaining().unwrap() <= Duration::from_secs(60));
        // The header wins over the query parameter.
        assert!(auth.authenticate(&bearer(&t), Some("garbage")).is_ok());
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = Auth::new(Some(JwtKey::Secret("s3cret".into())), Some("key-1".into())).unwrap();
        assert!(matches!(auth.authenticate(&HeaderMap::new(), None), Err(AuthError::Missing)));
        let expired = token("s3cret", serde_json::json!({"exp": now() - 5, "rooms": ["*"]}));
        assert!(matches!(auth.authenticate(&HeaderMap::new(), Some(&expired)), Err(AuthError::Invalid(_))));
        let forged = token("other", serde_json::json!({"exp": now() + 60, "rooms": ["*"]}));
        assert!(auth.authenticate(&HeaderMap::new(), Some(&forged)).is_err());
        let no_exp = token("s3cret", serde_json::json!({"rooms": ["*"]}));
        assert!(auth.authenticate(&HeaderMap::new(), Some(&no_exp)).is_err());
        assert!(auth.authenticate(&HeaderMap::new(), Some("not.a.jwt")).is_err());
        assert!(matches!(auth.authenticate(&bearer("key-1"), None), Ok(Grant::ApiKey)));
        let not_yet = token("s3cret", serde_json::json!({"exp": now() + 600, "nbf": now() + 300, "rooms": ["*"]}));
        assert!(matches!(auth.authenticate(&HeaderMap::new(), Some(&not_yet)), Err(AuthError::Invalid(_))));
        let started = token("s3cret", serde_json::json!({"exp": now() + 600, "nbf": now() - 5, "rooms": ["*"]}));
        assert!(auth.authenticate(&HeaderMap::new(), Some(&started)).is_ok());
    }

    #[test]
    fn the_api_key_is_refused_in_a_url() {
        for jwt in [None, Some(JwtKey::Secret("s3cret".into()))] {
            let auth = Auth::new(jwt, Some("key-1".into())).unwrap();
            assert!(matches!(auth.authenticate(&HeaderMap::new(), Some("key-1")), Err(AuthError::KeyInUrl)));
            assert!(matches!(auth.authenticate(&bearer("key-1"), None), Ok(Grant::ApiKey)));
        }
    }

    #[test]
    fn api_key_alone_keeps_reads_open_and_guards_publishing() {
        let auth = Auth::new(None, Some("key-1".into())).unwrap();
        let anonymous = auth.authenticate(&HeaderMap::new(), None).unwrap();
        assert!(anonymous.may_subscribe(&room("x")) && !anonymous.may_publish(&room("x")));
        assert!(auth.authenticate(&bearer("key-2"), None).is_err());
        assert!(auth.authenticate(&bearer("key-1"), None).unwrap().may_publish(&room("x")));
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        assert!(Origins::parse(Some("https://a.example")).allows(&h), "non-browser clients have no Origin");
        h.insert("origin", "https://a.example".parse().unwrap());
        assert!(Origins::parse(Some("https://a.example/, https://b.example")).allows(&h));
        assert!(!Origins::parse(Some("https://b.example")).allows(&h));
        assert!(Origins::parse(Some("*")).allows(&h));
        assert!(Origins::parse(None).allows(&h));
        // An Origin header that is not text is not a missing one.
        h.insert("origin", axum::http::HeaderValue::from_bytes(b"https://a.example\xff").unwrap());
        assert!(!Origins::parse(Some("https://a.example")).allows(&h));
        assert!(Origins::parse(None).allows(&h), "an open node checks no origin");
    }
}
