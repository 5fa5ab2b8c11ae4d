//! Dev secrets: the JWT secret and API key `chorus dev` generates on first start and keeps in
//! `<data>/dev-secrets.json` (mode 0600), so `chorus token` and the client commands work beside
//! a running server.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub const FILE: &str = "dev-secrets.json";

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevSecrets {
    pub jwt_secret: String,
    pub api_key: String,
}

/// Checks the secrets a node or an edge was given (the same on every process of a cluster):
/// short ones are refused rather than run with a guessable key.
pub fn check_given(jwt_secret: &str, api_key: &str) -> anyhow::Result<()> {
    if jwt_secret.len() < 16 {
        anyhow::bail!("--jwt-secret must be at least 16 bytes");
    }
    if api_key.len() < 16 {
        anyhow::bail!("--api-key must be at least 16 bytes");
    }
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

pub fn load(data: &Path) -> anyhow::Result<DevSecrets> {
    let path = data.join(FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {} (start `chorus dev` once to create it)", path.display())
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Loads the secrets, creating them on first start.
pub fn load_or_create(data: &Path) -> anyhow::Result<DevSecrets> {
    let path = data.join(FILE);
    if path.is_file() {
        return load(data);
    }
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let secrets =
        DevSecrets { jwt_secret: random_hex(32), api_key: format!("chorus_{}", random_hex(24)) };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(&secrets)?.as_bytes())?;
    file.sync_all()?;
    Ok(secrets)
}
