//! Access levels. The numbers are part of the API (Qbix Streams' scales, DESIGN.md §1).

use serde::{Deserialize, Serialize};

/// Read levels: what of a stream a caller may see.
pub struct ReadLevel;
impl ReadLevel {
    pub const NONE: i32 = 0;
    pub const SEE: i32 = 10;
    pub const TEASER: i32 = 15;
    pub const RELATIONS: i32 = 20;
    pub const CONTENT: i32 = 23;
    pub const FIELDS: i32 = 25;
    pub const PARTICIPANTS: i32 = 30;
    pub const MESSAGES: i32 = 35;
    pub const RECEIPTS: i32 = 40;
    pub const MAX: i32 = 40;
}

/// Write levels: what a caller may change.
pub struct WriteLevel;
impl WriteLevel {
    pub const NONE: i32 = 0;
    pub const JOIN: i32 = 10;
    pub const VOTE: i32 = 13;
    pub const SUGGEST: i32 = 15;
    pub const EPHEMERAL: i32 = 16;
    pub const CONTRIBUTE: i32 = 18;
    pub const POST: i32 = 20;
    pub const RELATE: i32 = 23;
    pub const RELATIONS: i32 = 25;
    pub const EDIT: i32 = 30;
    pub const CLOSE_PENDING: i32 = 35;
    pub const CLOSE: i32 = 40;
    pub const MAX: i32 = 40;
}

/// Admin levels: what a caller may grant.
pub struct AdminLevel;
impl AdminLevel {
    pub const NONE: i32 = 0;
    pub const TELL: i32 = 10;
    pub const SHARE: i32 = 15;
    pub const INVITE: i32 = 20;
    pub const MANAGE: i32 = 30;
    pub const OWN: i32 = 40;
    pub const MAX: i32 = 40;
}

/// The three levels together, as a caller has them on one stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Levels {
    pub read_level: i32,
    pub write_level: i32,
    pub admin_level: i32,
}

impl Levels {
    pub const MAX: Levels = Levels {
        read_level: ReadLevel::MAX,
        write_level: WriteLevel::MAX,
        admin_level: AdminLevel::MAX,
    };
    pub const NONE: Levels = Levels { read_level: 0, write_level: 0, admin_level: 0 };
}

/// A level is valid on the wire when it is -1 (unset, in access rows) up to 40.
pub fn is_valid_level(v: i32) -> bool {
    (-1..=40).contains(&v)
}
