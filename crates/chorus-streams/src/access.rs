//! The access calculation (DESIGN.md §1 "Access levels"; Qbix `Streams::calculateAccess`).
//!
//! 1. The app and the stream's publisher have max on all three levels.
//! 2. Otherwise start from the stream's own levels.
//! 3. Rows for everyone or for one of the caller's roles *raise* levels (max; `< 0` is unset).
//!    Rows come from the stream itself and from the `<type>*` rules of the app (`""`) and of the
//!    stream's publisher.
//! 4. Rows for the caller's user id *override* each level they set; a row on the stream itself
//!    beats the publisher's `<type>*` row, which beats the app's.
//! 5. `inheritAccess` parents (one generation, their own levels computed the same way, capped)
//!    raise levels that did not come from a user row; a parent level that came from a user row
//!    is taken as is.
//!
//! The inputs are gathered by the node; this module only combines them.

use chorus_types::{AccessRow, AccessSubject, InheritEntry, Levels, StreamRecord, UserId};

/// Who asks.
#[derive(Copy, Clone, Debug)]
pub enum Who<'a> {
    App,
    User { id: &'a UserId, roles: &'a [String] },
}

/// The rows that bear on one stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rows<'a> {
    /// Rows on the stream itself.
    pub own: &'a [AccessRow],
    /// Rows on `<type>*` published by the stream's publisher.
    pub type_publisher: &'a [AccessRow],
    /// Rows on `<type>*` published by the app (`""`).
    pub type_app: &'a [AccessRow],
}

/// Computed levels, and for each of read/write/admin whether it came from a user-specific
/// source (the publisher, a user row, or a parent's user row), which inheritance never lowers
/// or raises.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub levels: Levels,
    pub direct: [bool; 3],
}

impl Access {
    /// No access at all.
    pub const NONE: Access = Access {
        levels: Levels { read_level: 0, write_level: 0, admin_level: 0 },
        direct: [false; 3],
    };

    pub fn read(&self) -> i32 {
        self.levels.read_level
    }
    pub fn write(&self) -> i32 {
        self.levels.write_level
    }
    pub fn admin(&self) -> i32 {
        self.levels.admin_level
    }
}

fn as_array(l: Levels) -> [i32; 3] {
    [l.read_level, l.write_level, l.admin_level]
}

fn from_array(a: [i32; 3]) -> Levels {
    Levels { read_level: a[0], write_level: a[1], admin_level: a[2] }
}

fn row_levels(r: &AccessRow) -> [i32; 3] {
    [r.read_level, r.write_level, r.admin_level]
}

/// Levels without inheritance: steps 1–4.
pub fn base_access(who: Who<'_>, stream: &StreamRecord, rows: Rows<'_>) -> Access {
    let (user, roles) = match who {
        Who::App => return Access { levels: Levels::MAX, direct: [true; 3] },
        Who::User { id, roles } => (id, roles),
    };
    if stream.publisher_id.as_str() == user.as_str() {
        return Access { levels: Levels::MAX, direct: [true; 3] };
    }
    let mut levels = [stream.read_level, stream.write_level, stream.admin_level];
    let all = [rows.type_app, rows.type_publisher, rows.own];
    for row in all.iter().flat_map(|r| r.iter()) {
        let applies = match &row.subject {
            AccessSubject::Everyone => true,
            AccessSubject::Role(role) => roles.iter().any(|r| r == role),
            AccessSubject::User(_) => false,
        };
        if applies {
            for (level, v) in levels.iter_mut().zip(row_levels(row)) {
                if v >= 0 {
                    *level = (*level).max(v);
                }
            }
        }
    }
    let mut direct = [false; 3];
    let subject = AccessSubject::User(user.clone());
    // A user row on the stream itself suppresses that user's `<type>*` rows (Qbix A.2 step 4);
    // otherwise the publisher's rule beats the app's (least specific applied first).
    let user_rows: &[&[AccessRow]] = if rows.own.iter().any(|r| r.subject == subject) {
        &[rows.own]
    } else {
        &[rows.type_app, rows.type_publisher]
    };
    for row in user_rows.iter().flat_map(|r| r.iter()) {
        if row.subject == subject {
            for i in 0..3 {
                let v = row_levels(row)[i];
                if v >= 0 {
                    levels[i] = v;
                    direct[i] = true;
                }
            }
        }
    }
    Access { levels: from_array(levels), direct }
}

/// Step 5: fold in the parents of `inheritAccess`, each given with its base access for the
/// same caller.
pub fn inherit(mut access: Access, parents: &[(InheritEntry, Access)]) -> Access {
    let mut levels = as_array(access.levels);
    for (entry, parent) in parents {
        let caps = entry.caps.unwrap_or([i32::MAX; 3]);
        let parent_levels = as_array(parent.levels);
        for i in 0..3 {
            if access.direct[i] {
                continue;
            }
            let v = parent_levels[i].min(caps[i]);
            if parent.direct[i] {
                levels[i] = v;
                access.direct[i] = true;
            } else {
                levels[i] = levels[i].max(v);
            }
        }
    }
    access.levels = from_array(levels);
    access
}

#[cfg(test)]
mod tests {
    use chorus_types::{Millis, PublisherId, StreamName, StreamType};
    use serde_json::json;

    use super::*;

    fn stream(publisher: &str, levels: [i32; 3]) -> StreamRecord {
        StreamRecord {
            publisher_id: PublisherId::new(publisher).unwrap(),
            name: StreamName::new("Chat/room/1").unwrap(),
            stream_type: StreamType::new("Chat/room").unwrap(),
            title: String::new(),
            icon: String::new(),
            content: String::new(),
            attributes: json!({}),
            read_level: levels[0],
            write_level: levels[1],
            admin_level: levels[2],
            inherit_access: vec![],
            message_count: 0,
            participant_count: 0,
            inserted_time: Millis(0),
            updated_time: Millis(0),
            closed_time: None,
        }
    }

    fn row(subject: AccessSubject, l: [i32; 3]) -> AccessRow {
        AccessRow { subject, read_level: l[0], write_level: l[1], admin_level: l[2] }
    }

    fn user(id: &str) -> AccessSubject {
        AccessSubject::User(UserId::new(id).unwrap())
    }

    fn role(r: &str) -> AccessSubject {
        AccessSubject::Role(r.into())
    }

    struct Case {
        name: &'static str,
        stream: [i32; 3],
        own: Vec<AccessRow>,
        type_publisher: Vec<AccessRow>,
        type_app: Vec<AccessRow>,
        roles: &'static [&'static str],
        want: [i32; 3],
    }

    /// One table, one rule per row (DESIGN.md §1, semantics reference A.2).
    #[test]
    fn access_table() {
        let everyone = AccessSubject::Everyone;
        let cases = vec![
            Case {
                name: "private stream gives nothing",
                stream: [0, 0, 0],
                own: vec![],
                type_publisher: vec![],
                type_app: vec![],
                roles: &[],
                want: [0, 0, 0],
            },
            Case {
                name: "stream levels are the start",
                stream: [35, 20, 0],
                own: vec![],
                type_publisher: vec![],
                type_app: vec![],
                roles: &[],
                want: [35, 20, 0],
            },
            Case {
                name: "public row raises",
                stream: [10, 0, 0],
                own: vec![row(everyone.clone(), [35, 10, -1])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &[],
                want: [35, 10, 0],
            },
            Case {
                name: "public row never lowers",
                stream: [35, 20, 10],
                own: vec![row(everyone.clone(), [10, 0, 0])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &[],
                want: [35, 20, 10],
            },
            Case {
                name: "negative values are unset",
                stream: [23, 10, 0],
                own: vec![row(everyone.clone(), [-1, -1, -1])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &[],
                want: [23, 10, 0],
            },
            Case {
                name: "role row raises for holders",
                stream: [10, 0, 0],
                own: vec![row(role("mod"), [40, 40, 30])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &["mod"],
                want: [40, 40, 30],
            },
            Case {
                name: "role row ignored without the role",
                stream: [10, 0, 0],
                own: vec![row(role("mod"), [40, 40, 30])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &["user"],
                want: [10, 0, 0],
            },
            Case {
                name: "user row overrides down",
                stream: [40, 40, 0],
                own: vec![row(user("bob"), [10, 0, -1])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &[],
                want: [10, 0, 0],
            },
            Case {
                name: "user row overrides role raise",
                stream: [0, 0, 0],
                own: vec![row(role("mod"), [40, 40, 30]), row(user("bob"), [-1, 10, -1])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &["mod"],
                want: [40, 10, 30],
            },
            Case {
                name: "user row for someone else ignored",
                stream: [0, 0, 0],
                own: vec![row(user("carol"), [40, 40, 40])],
                type_publisher: vec![],
                type_app: vec![],
                roles: &[],
                want: [0, 0, 0],
            },
            Case {
                name: "publisher type* row raises",
                stream: [0, 0, 0],
                own: vec![],
                type_publisher: vec![row(everyone.clone(), [35, 20, -1])],
                type_app: vec![],
                roles: &[],
                want: [35, 20, 0],
            },
            Case {
                name: "app type* row raises",
                stream: [0, 0, 0],
                own: vec![],
                type_publisher: vec![],
                type_app: vec![row(role("staff"), [40, 30, 20])],
                roles: &["staff"],
                want: [40, 30, 20],
            },
            Case {
                name: "exact user row suppresses type* user rows",
                stream: [0, 0, 0],
                own: vec![row(user("bob"), [10, -1, -1])],
                type_publisher: vec![row(user("bob"), [35, 20, -1])],
                type_app: vec![],
                roles: &[],
                want: [10, 0, 0],
            },
            Case {
                name: "publisher type* user row beats app's",
                stream: [0, 0, 0],
                own: vec![],
                type_publisher: vec![row(user("bob"), [30, -1, -1])],
                type_app: vec![row(user("bob"), [10, 10, -1])],
                roles: &[],
                want: [30, 10, 0],
            },
        ];
        for c in cases {
            let s = stream("alice", c.stream);
            let bob = UserId::new("bob").unwrap();
            let roles: Vec<String> = c.roles.iter().map(|r| r.to_string()).collect();
            let rows =
                Rows { own: &c.own, type_publisher: &c.type_publisher, type_app: &c.type_app };
            let got = base_access(Who::User { id: &bob, roles: &roles }, &s, rows);
            assert_eq!(as_array(got.levels), c.want, "{}", c.name);
        }
    }

    #[test]
    fn publisher_and_app_have_max() {
        let s = stream("alice", [0, 0, 0]);
        let alice = UserId::new("alice").unwrap();
        let deny = vec![row(user("alice"), [0, 0, 0])];
        let rows = Rows { own: &deny, ..Rows::default() };
        assert_eq!(base_access(Who::User { id: &alice, roles: &[] }, &s, rows).levels, Levels::MAX);
        assert_eq!(base_access(Who::App, &s, rows).levels, Levels::MAX);
    }

    fn parent(caps: Option<[i32; 3]>) -> InheritEntry {
        InheritEntry {
            publisher_id: PublisherId::new("alice").unwrap(),
            name: StreamName::new("Chat/lobby").unwrap(),
            caps,
        }
    }

    #[test]
    fn inheritance_table() {
        let public = |l: [i32; 3]| Access { levels: from_array(l), direct: [false; 3] };
        let direct = |l: [i32; 3]| Access { levels: from_array(l), direct: [true; 3] };
        type InheritCase = (&'static str, Access, Vec<(InheritEntry, Access)>, [i32; 3]);
        let cases: Vec<InheritCase> = vec![
            (
                "parent raises",
                public([10, 0, 0]),
                vec![(parent(None), public([35, 20, 0]))],
                [35, 20, 0],
            ),
            (
                "parent never lowers",
                public([35, 20, 10]),
                vec![(parent(None), public([10, 0, 0]))],
                [35, 20, 10],
            ),
            (
                "caps limit what is inherited",
                public([0, 0, 0]),
                vec![(parent(Some([30, 10, 0])), public([40, 40, 40]))],
                [30, 10, 0],
            ),
            (
                "parent user row is taken as is",
                public([35, 20, 0]),
                vec![(parent(None), direct([10, 0, 0]))],
                [10, 0, 0],
            ),
            (
                "own user row wins over parent",
                direct([10, 0, 0]),
                vec![(parent(None), public([40, 40, 40]))],
                [10, 0, 0],
            ),
            (
                "several parents, max of public",
                public([0, 0, 0]),
                vec![(parent(None), public([20, 0, 0])), (parent(None), public([35, 10, 0]))],
                [35, 10, 0],
            ),
        ];
        for (name, own, parents, want) in cases {
            assert_eq!(as_array(inherit(own, &parents).levels), want, "{name}");
        }
    }
}
