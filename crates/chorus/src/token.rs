//! `chorus token`: prints a JWT signed with a data dir's dev secret, or with the cluster's
//! secret given as `--jwt-secret` / `CHORUS_JWT_SECRET`.

use crate::say;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
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
    let secret = match args.jwt_secret {
        Some(secret) => secret,
        None => {
            secrets::load(&args.data)
                .context("no --jwt-secret (or CHORUS_JWT_SECRET) given, and no dev secrets")?
                .jwt_secret
        }
    };
    if let Some(role) = args.roles.iter().find(|r| r.is_empty()) {
        anyhow::bail!("--role {role:?}: a role is a non-empty string");
    }
    say!("{}", mint(&secret, &args.user, &args.roles, args.ttl)?);
    Ok(())
}
