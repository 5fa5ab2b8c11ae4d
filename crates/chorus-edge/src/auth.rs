//! Who is calling: the app's API key (optionally acting as a user) or a user's HS256 JWT.
//!
//! DESIGN.md §3 "Tokens": `sub` is required, `exp` is enforced when present, `roles` is
//! optional, other claims are ignored.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use chorus_api::Principal;
use chorus_types::records::validate_role;
use chorus_types::{ApiError, ErrorCode, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The header with which the app's API key acts as a user.
pub(crate) const AS_USER_HEADER: &str = "x-chorus-as-user";

/// Why a request could not be authenticated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("authorization header must be `Bearer <token>`")]
    MalformedHeader,
    #[error("token has expired")]
    Expired,
    #[error("invalid token")]
    InvalidToken,
    #[error("token has no sub claim")]
    MissingSub,
    #[error("token sub is not a valid userId")]
    InvalidSub,
    #[error("token roles must be strings of 1-64 bytes without control characters")]
    InvalidRoles,
    #[error("X-Chorus-As-User must be a userId: 1-64 characters of [A-Za-z0-9_.@:-]")]
    InvalidAsUser,
    /// Two credentials: a proxy in front may have checked the other one.
    #[error("a request carries one credential: one Authorization header, or one `token=`")]
    DuplicateAuthorization,
    #[error("a request carries at most one X-Chorus-As-User header")]
    DuplicateAsUser,
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        // A bad As-User value comes from an authenticated caller: its argument is wrong, not
        // its credentials.
        let code = match error {
            AuthError::InvalidAsUser | AuthError::DuplicateAsUser => ErrorCode::InvalidArgument,
            _ => ErrorCode::Unauthenticated,
        };
        ApiError::new(code, error.to_string())
    }
}

/// The claims Chorus reads; everything else in the token is ignored.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    /// Seconds since the epoch; jsonwebtoken has checked it is in the future.
    #[serde(default)]
    exp: Option<f64>,
}

/// Checks bearer tokens against the configured API key and JWT secret.
pub(crate) struct Authenticator {
    /// Empty when API-key authentication is disabled.
    api_key: Vec<u8>,
    /// `None` when JWT authentication is disabled (empty secret).
    jwt_key: Option<DecodingKey>,
    validation: Validation,
}

impl Authenticator {
    pub(crate) fn new(jwt_secret: &str, api_key: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is checked when present but not required; `sub` is checked by us so the
        // error can say what is wrong.
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_exp = true;
        // Other claims are ignored, `aud` included (jsonwebtoken rejects unknown audiences
        // by default).
        validation.validate_aud = false;
        let jwt_key =
            (!jwt_secret.is_empty()).then(|| DecodingKey::from_secret(jwt_secret.as_bytes()));
        Authenticator { api_key: api_key.as_bytes().to_vec(), jwt_key, validation }
    }

    /// Resolves a bearer token (and, for the API key, the As-User header value) to a principal.
    pub(crate) fn authenticate(
        &self,
        token: Option<&str>,
        as_user: Option<&[u8]>,
    ) -> Result<Principal, AuthError> {
        self.authenticate_until(token, as_user).map(|(principal, _)| principal)
    }

    /// [`Self::authenticate`], with the token's expiry (`exp`) when it has one: a WebSocket
    /// session outliving its token is closed then (DESIGN.md §3: `exp` is enforced).
    pub(crate) fn authenticate_until(
        &self,
        token: Option<&str>,
        as_user: Option<&[u8]>,
    ) -> Result<(Principal, Option<SystemTime>), AuthError> {
        let token = token.ok_or(AuthError::MissingToken)?;
        if !self.api_key.is_empty() && constant_time_eq(token.as_bytes(), &self.api_key) {
            return match as_user {
                None => Ok((Principal::App, None)),
                Some(raw) => {
                    let text = std::str::from_utf8(raw).map_err(|_| AuthError::InvalidAsUser)?;
                    let id = UserId::new(text).map_err(|_| AuthError::InvalidAsUser)?;
                    Ok((Principal::User { id, roles: Vec::new() }, None))
                }
            };
        }
        self.decode_jwt(token)
    }

    fn decode_jwt(&self, token: &str) -> Result<(Principal, Option<SystemTime>), AuthError> {
        let key = self.jwt_key.as_ref().ok_or(AuthError::InvalidToken)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|error| {
                match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::InvalidToken,
                }
            })?;
        // RFC 7515 §4.1.11: a token naming extensions its reader must understand (`crit`) is
        // refused by a reader that understands none of them.
        if data.header.crit.as_ref().is_some_and(|crit| !crit.is_empty()) {
            return Err(AuthError::InvalidToken);
        }
        let sub = data.claims.sub.ok_or(AuthError::MissingSub)?;
        let id = UserId::new(sub).map_err(|_| AuthError::InvalidSub)?;
        let roles = data.claims.roles.unwrap_or_default();
        for role in &roles {
            validate_role(role).map_err(|_| AuthError::InvalidRoles)?;
        }
        let expires = data
            .claims
            .exp
            .filter(|exp| exp.is_finite() && *exp >= 0.0)
            // jsonwebtoken compares whole seconds: a token is valid through the second `exp`.
            .and_then(|exp| {
                UNIX_EPOCH.checked_add(Duration::from_secs(exp.min(1e12).floor() as u64 + 1))
            });
        Ok((Principal::User { id, roles }, expires))
    }
}

/// The token of an `Authorization: Bearer <token>` header; `Ok(None)` when there is no header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = single(headers, AUTHORIZATION.as_str(), AuthError::DuplicateAuthorization)?
    else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(Some(token))
}

/// The `X-Chorus-As-User` header's value, refusing it named twice (RFC 9110 leaves a repeated
/// singleton field to whoever reads it, and a proxy may read the other copy).
pub(crate) fn as_user_header(headers: &HeaderMap) -> Result<Option<&[u8]>, AuthError> {
    let value = single(headers, AS_USER_HEADER, AuthError::DuplicateAsUser)?;
    Ok(value.map(HeaderValue::as_bytes))
}

/// The one value of header `name`, `twice` when the request names it more than once.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &str,
    twice: AuthError,
) -> Result<Option<&'a HeaderValue>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(twice);
    }
    Ok(first)
}

/// Compares without an early exit, so response timing does not reveal how much of the API key
/// a guess got right. Only the length can leak, which is not secret.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let difference = given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &str = "test-secret";
    const API_KEY: &str = "app-key-123";

    fn authenticator() -> Authenticator {
        Authenticator::new(SECRET, API_KEY)
    }

    fn jwt(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .try_into()
            .unwrap()
    }

    fn user(id: &str, roles: &[&str]) -> Principal {
        Principal::User {
            id: UserId::new(id).unwrap(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn valid_jwt_without_exp_is_a_user_without_roles() {
        let token = jwt(json!({"sub": "alice"}));
        assert_eq!(authenticator().authenticate(Some(&token), None), Ok(user("alice", &[])));
    }

    #[test]
    fn valid_jwt_with_future_exp_and_extra_claims() {
        let token = jwt(json!({"sub": "alice", "exp": now() + 3600, "aud": "x", "iss": "y"}));
        assert_eq!(authenticator().authenticate(Some(&token), None), Ok(user("alice", &[])));
    }

    #[test]
    fn expired_jwt_is_refused() {
        let token = jwt(json!({"sub": "alice", "exp": now() - 5}));
        assert_eq!(authenticator().authenticate(Some(&token), None), Err(AuthError::Expired));
    }

    #[test]
    fn jwt_without_sub_is_refused() {
        let token = jwt(json!({"roles": ["mod"]}));
        assert_eq!(authenticator().authenticate(Some(&token), None), Err(AuthError::MissingSub));
    }

    #[test]
    fn jwt_with_invalid_sub_is_refused() {
        let token = jwt(json!({"sub": "not a user id"}));
        assert_eq!(authenticator().authenticate(Some(&token), None), Err(AuthError::InvalidSub));
    }

    #[test]
    fn roles_claim_becomes_principal_roles() {
        let token = jwt(json!({"sub": "bob", "roles": ["mod", "vip"]}));
        assert_eq!(
            authenticator().authenticate(Some(&token), None),
            Ok(user("bob", &["mod", "vip"]))
        );
    }

    #[test]
    fn roles_claim_of_wrong_shape_is_refused() {
        let token = jwt(json!({"sub": "bob", "roles": "mod"}));
        assert_eq!(authenticator().authenticate(Some(&token), None), Err(AuthError::InvalidToken));
        let token = jwt(json!({"sub": "bob", "roles": [""]}));
        assert_eq!(authenticator().authenticate(Some(&token), None), Err(AuthError::InvalidRoles));
    }

    #[test]
    fn jwt_naming_critical_extensions_is_refused() {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp-ext".into()]);
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = encode(&header, &json!({"sub": "alice"}), &key).unwrap();
        assert_eq!(authenticator().authenticate(Some(&token), None), Err(AuthError::InvalidToken));
    }

    #[test]
    fn jwt_signed_with_another_key_is_refused() {
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice"}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(authenticator().authenticate(Some(&token), None), Err(AuthError::InvalidToken));
        assert_eq!(
            authenticator().authenticate(Some("garbage"), None),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn api_key_alone_is_the_app() {
        assert_eq!(authenticator().authenticate(Some(API_KEY), None), Ok(Principal::App));
    }

    #[test]
    fn api_key_with_as_user_acts_as_that_user() {
        let principal = authenticator().authenticate(Some(API_KEY), Some(b"carol"));
        assert_eq!(principal, Ok(user("carol", &[])));
    }

    #[test]
    fn api_key_with_bad_as_user_is_an_invalid_argument() {
        let outcome = authenticator().authenticate(Some(API_KEY), Some(b"no spaces allowed"));
        assert_eq!(outcome, Err(AuthError::InvalidAsUser));
        assert_eq!(ApiError::from(AuthError::InvalidAsUser).code, ErrorCode::InvalidArgument);
        let empty = authenticator().authenticate(Some(API_KEY), Some(b""));
        assert_eq!(empty, Err(AuthError::InvalidAsUser));
    }

    #[test]
    fn as_user_is_ignored_for_jwts() {
        let token = jwt(json!({"sub": "alice"}));
        let principal = authenticator().authenticate(Some(&token), Some(b"mallory"));
        assert_eq!(principal, Ok(user("alice", &[])));
    }

    #[test]
    fn missing_token_and_empty_secrets() {
        assert_eq!(authenticator().authenticate(None, None), Err(AuthError::MissingToken));
        let disabled = Authenticator::new("", "");
        assert_eq!(disabled.authenticate(Some(""), None), Err(AuthError::InvalidToken));
        let token = jwt(json!({"sub": "alice"}));
        assert_eq!(disabled.authenticate(Some(&token), None), Err(AuthError::InvalidToken));
        assert_eq!(ApiError::from(AuthError::MissingToken).code, ErrorCode::Unauthenticated);
    }

    #[test]
    fn bearer_header_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), Ok(None));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&headers), Ok(Some("abc")));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer_token(&headers), Ok(Some("abc")));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), Err(AuthError::MalformedHeader));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer_token(&headers), Err(AuthError::MalformedHeader));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
