//! Wall-clock time as carried inside Raft entries.
//!
//! The proposer stamps each command; `apply` never reads a clock, so every replica computes the
//! same timestamps from the same log.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Millis(ms)
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        // Written digit by digit: this renders every message's `sentTime` on the post path,
        // where `format!` cost ~1 % of the server's CPU.
        if !(0..=9999).contains(&y) {
            return format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
                sod / 3600,
                (sod / 60) % 60,
                sod % 60
            );
        }
        let mut out = String::with_capacity(24);
        push_digits(&mut out, y as u64, 4);
        out.push('-');
        push_digits(&mut out, u64::from(m), 2);
        out.push('-');
        push_digits(&mut out, u64::from(d), 2);
        out.push('T');
        push_digits(&mut out, (sod / 3600) as u64, 2);
        out.push(':');
        push_digits(&mut out, ((sod / 60) % 60) as u64, 2);
        out.push(':');
        push_digits(&mut out, (sod % 60) as u64, 2);
        out.push('.');
        push_digits(&mut out, ms as u64, 3);
        out.push('Z');
        out
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Appends `n` as exactly `width` decimal digits (zero-padded; `n` must fit).
fn push_digits(out: &mut String, n: u64, width: u32) {
    let mut div = 10u64.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + ((n / div) % 10) as u8));
        div /= 10;
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is in 1..=31 and m in 1..=12 by construction.
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(Millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Millis(-1).to_rfc3339(), "1969-12-31T23:59:59.999Z");
        assert_eq!(Millis(253_402_300_800_000).to_rfc3339(), "10000-01-01T00:00:00.000Z");
        assert_eq!(Millis(1_700_000_000_123).to_rfc3339(), "2023-11-14T22:13:20.123Z");
        assert_eq!(Millis(951_782_400_000).to_rfc3339(), "2000-02-29T00:00:00.000Z");
    }
}
