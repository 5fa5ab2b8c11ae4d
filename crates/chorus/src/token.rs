//! `chorus token`: prints a JWT signed with a data dir's dev secret.

use std::time::{SystemTime, UNIX_EPOCH};

use chorus_types::UserId;
use serde::Serialize;

use crate::cli::TokenArgs;
use crate::secrets;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    exp: u64,
}

pub fn mint(secret: &str, user: &str, roles: &[String], ttl_secs: u64) -> anyhow::Result<String> {
    UserId::new(user).map_err(|e| anyhow::anyhow!("--user: {}", e.message))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims { sub: user, roles, exp: now + ttl_secs };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?)
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let secrets = secrets::load(&args.data)?;
    println!("{}", mint(&secrets.jwt_secret, &args.user, &args.roles, args.ttl)?);
    Ok(())
}
