//! Which level each write needs, and turning an allowed request into a replicated command.
//!
//! A caller who cannot `see` a stream is told `not_found`, never `forbidden`, so the existence
//! of a private stream does not leak (DESIGN.md §1).

use chorus_api::{Caller, Principal, ServiceError};
use chorus_streams::access::Access;
use chorus_streams::{Command, FieldChanges, ParticipantAction};
use chorus_types::{
    AccessRow, AccessSubject, AdminLevel, ClientMsgId, ErrorCode, ReadLevel, StreamKey,
    StreamRecord, StreamType, UserId, WriteLevel,
};
use serde_json::Value;

use crate::access_ctx::AccessCtx;
use crate::error::err;

/// A write as the actor receives it.
#[derive(Debug)]
pub enum WriteOp {
    Create {
        stream: Box<StreamRecord>,
        rows: Vec<AccessRow>,
    },
    Update {
        changes: FieldChanges,
        if_message_count: Option<u64>,
    },
    Close,
    Post {
        message_type: StreamType,
        content: String,
        instructions: Option<Value>,
        client_msg_id: Option<ClientMsgId>,
    },
    Participate {
        action: ParticipantAction,
        extra: Option<Value>,
        /// See `Command::Participate::extra_max`.
        extra_max: Option<u32>,
    },
    SetAccess {
        rows: Vec<AccessRow>,
    },
    /// The app joins these users (1 to `MAX_JOIN_BATCH`, checked by the service).
    JoinBatch {
        users: Vec<UserId>,
    },
}

impl WriteOp {
    /// What the op costs a stream actor's turn, in units of one ordinary command: a batch
    /// join writes a participant per user, so a turn (one Raft entry) carries at most one
    /// full batch instead of `max_batch` of them (512,000 rows in one apply would stall every
    /// shard behind the node's single write thread, which also writes the Raft log; it writes a
    /// group's log appends first when the group's applies are heavy).
    /// Whether the command changes what later commands are checked against (the stream's
    /// existence, levels or access rows): the actor ends its turn after it, so that the ones
    /// queued behind it are checked in the next turn, against what it did. A session may queue
    /// its next request before this one is done (`chorus_api::order`), and a post sent after a
    /// create or a grant must see them.
    pub fn ends_turn(&self) -> bool {
        matches!(
            self,
            WriteOp::Create { .. }
                | WriteOp::Update { .. }
                | WriteOp::Close
                | WriteOp::SetAccess { .. }
        )
    }

    pub fn weight(&self) -> usize {
        match self {
            WriteOp::JoinBatch { users } => users.len().max(1),
            _ => 1,
        }
    }
}

/// The caller's access to an existing stream it can see, or `not_found`.
pub fn visible(ctx: &AccessCtx, caller: &Caller) -> Result<Access, ServiceError> {
    match ctx.access(caller) {
        Some(a) if a.read() >= ReadLevel::SEE => Ok(a),
        _ => Err(err(ErrorCode::NotFound, "stream not found")),
    }
}

pub fn need(ok: bool, what: &str) -> Result<(), ServiceError> {
    if ok { Ok(()) } else { Err(err(ErrorCode::Forbidden, what)) }
}

/// Who may read or replace the rows of a `<type>*` rule pseudo-stream: its publisher, or the
/// app (only the app for publisher `""`).
pub fn may_manage_type_rule(key: &StreamKey, caller: &Caller) -> Result<(), ServiceError> {
    let name = key.name.as_str();
    let ty = name.strip_suffix('*').unwrap_or(name);
    if let Err(e) = StreamType::new(ty) {
        let message = format!("a rule pseudo-stream is `<type>*`: {}", e.message);
        return Err(err(ErrorCode::InvalidArgument, &message));
    }
    match &caller.principal {
        Principal::App => Ok(()),
        Principal::User { id, .. } if id.as_str() == key.publisher_id.as_str() => Ok(()),
        Principal::User { .. } => {
            Err(err(ErrorCode::Forbidden, "only the publisher manages its type rules"))
        }
    }
}

/// A manager may grant admin levels below manage only; `own` may grant any. Replacing the row
/// set must not take manage or own away from anyone either, unless the caller owns.
///
/// `PUT …/access` replaces the whole set, so a manager's request carries the rows of existing
/// managers (often the manager's own): resending such a row unchanged is neither a grant nor a
/// removal. Any other change to a manage-or-above row (new, dropped, or with other levels — a
/// manager must not lock an owner out by lowering its read level either) needs `own`. A subject
/// named twice is refused first ([`distinct_subjects`]), so no second row can undo a kept one.
///
/// A user row's `adminLevel` also overrides whatever roles, everyone and the stream's own
/// `adminLevel` give that user, so a row below manage can still move someone across it: set on
/// a user who manages through a role it demotes them, and dropped from one it unmasks the
/// role's manage. Roles come with tokens, so who holds them is unknown here: while any role or
/// everyone row of the set, or the stream's `adminLevel` (`stream_admin`), gives manage or
/// above, a manager may not set a user row's `adminLevel` where it was unset, nor unset or drop
/// one that was set (changing it between levels below manage stays allowed, and so do rows that
/// leave `adminLevel` unset: a manager still bans with `readLevel`/`writeLevel`).
pub fn may_grant(
    access: &Access,
    existing: &[AccessRow],
    rows: &[AccessRow],
    stream_admin: i32,
) -> Result<(), ServiceError> {
    need(access.admin() >= AdminLevel::MANAGE, "changing access needs admin level manage (30)")?;
    if access.admin() >= AdminLevel::OWN {
        return Ok(());
    }
    let grants_manage = rows.iter().any(|r| is_manage_row(r) && !existing.contains(r));
    let revokes_manage = existing.iter().any(|r| is_manage_row(r) && !rows.contains(r));
    need(
        !grants_manage && !revokes_manage,
        "granting or removing admin level manage or above needs admin level own (40)",
    )?;
    let others_manage = stream_admin >= AdminLevel::MANAGE
        || existing
            .iter()
            .chain(rows)
            .any(|r| !matches!(r.subject, AccessSubject::User(_)) && is_manage_row(r));
    if !others_manage {
        return Ok(());
    }
    let admin_set = |set: &[AccessRow], subject: &AccessSubject| {
        set.iter().any(|r| &r.subject == subject && r.admin_level >= 0)
    };
    let flips = existing.iter().chain(rows).any(|r| {
        matches!(r.subject, AccessSubject::User(_))
            && admin_set(existing, &r.subject) != admin_set(rows, &r.subject)
    });
    need(
        !flips,
        "a role, everyone or the stream gives manage here, so setting or removing a user row's \
         adminLevel (which overrides it for that user) needs admin level own (40)",
    )
}

fn is_manage_row(row: &AccessRow) -> bool {
    row.admin_level >= AdminLevel::MANAGE
}

/// A row set names each subject (user, role, everyone) at most once: with two rows for one
/// subject, which one counts would be an accident of order.
pub fn distinct_subjects(rows: &[AccessRow]) -> Result<(), ServiceError> {
    for (i, row) in rows.iter().enumerate() {
        if rows[..i].iter().any(|earlier| earlier.subject == row.subject) {
            return Err(err(
                ErrorCode::InvalidArgument,
                &format!(
                    "rows[{i}]: a row for the same subject comes earlier; one row per subject"
                ),
            ));
        }
    }
    Ok(())
}

/// Only the app (its API key without `X-Chorus-As-User`) joins other users. The answer does not
/// depend on the stream, so refusing a user with `forbidden` leaks nothing about it.
pub fn app_only_join_batch(caller: &Caller) -> Result<(), ServiceError> {
    need(
        caller.principal == Principal::App,
        "only the app (API key without X-Chorus-As-User) may batch-join users",
    )
}

/// Checks `op` against the caller's access and returns the command to propose, with the
/// caller's access (for rendering the reply at its read level).
pub fn authorize(
    ctx: &AccessCtx,
    key: &StreamKey,
    caller: &Caller,
    op: WriteOp,
) -> Result<(Command, Access), ServiceError> {
    let key = key.clone();
    match op {
        WriteOp::Create { stream, rows } => {
            if ctx.stream().is_some() {
                return Err(err(ErrorCode::AlreadyExists, "stream already exists"));
            }
            // The creator is the publisher or the app: both have max.
            let access = Access { levels: chorus_types::Levels::MAX, direct: [true; 3] };
            Ok((Command::Create { stream, access_rows: rows }, access))
        }
        WriteOp::SetAccess { rows } if key.name.is_type_rule() => {
            may_manage_type_rule(&key, caller)?;
            let access = Access { levels: chorus_types::Levels::MAX, direct: [true; 3] };
            Ok((Command::SetAccess { key, rows }, access))
        }
        WriteOp::Participate {
            action: action @ (ParticipantAction::Leave | ParticipantAction::Unsubscribe),
            ..
        } if ctx.stream().is_some() && visible(ctx, caller).is_err() => {
            // Leaving stays open to a participant who can no longer see the stream (a ban
            // lowers readLevel; Qbix: "joining/leaving still ok"), or a banned member would
            // stay counted and subscribed for good. Whether the caller is one is known only
            // where the state is: `apply` answers `not_found` to anyone else, so the route
            // still tells nobody that a stream they cannot see exists. (The app, with max
            // access everywhere, never gets here.)
            let Principal::User { id, .. } = &caller.principal else {
                return Err(err(ErrorCode::NotFound, "stream not found"));
            };
            let command = Command::Participate {
                key,
                user: id.clone(),
                action,
                extra: None,
                extra_max: None,
                unseen: true,
            };
            Ok((command, Access::NONE))
        }
        WriteOp::JoinBatch { users } => {
            app_only_join_batch(caller)?;
            let access = visible(ctx, caller)?;
            Ok((Command::JoinBatch { key, users }, access))
        }
        op => {
            let access = visible(ctx, caller)?;
            let command = match op {
                WriteOp::Update { changes, if_message_count } => {
                    need(
                        access.write() >= WriteLevel::EDIT,
                        "editing needs write level edit (30)",
                    )?;
                    // Only what differs from the stream counts as a change: an SDK that sends
                    // the stream's fields back unchanged beside a new title is editing.
                    let current = ctx.stream();
                    let differs = |new: Option<i32>, old: fn(&StreamRecord) -> i32| {
                        new.is_some_and(|v| current.is_none_or(|s| old(s) != v))
                    };
                    let read_changes = differs(changes.read_level, |s| s.read_level);
                    let write_changes = differs(changes.write_level, |s| s.write_level);
                    let admin_changes = differs(changes.admin_level, |s| s.admin_level);
                    let inherit_changes = changes
                        .inherit_access
                        .as_ref()
                        .is_some_and(|v| current.is_none_or(|s| s.inherit_access != *v));
                    let touches_access =
                        read_changes || write_changes || admin_changes || inherit_changes;
                    need(
                        !touches_access || access.admin() >= AdminLevel::MANAGE,
                        "changing levels or inheritAccess needs admin level manage (30)",
                    )?;
                    // The stream's own levels apply to everyone, and inherited levels can carry
                    // anything a parent grants: moving adminLevel to or from manage and above
                    // (granting manage to everyone, or taking it from everyone, as a `PUT
                    // …/access` by a manager may not either), or changing inheritAccess, needs
                    // `own`.
                    let was_manage = current.is_some_and(|s| s.admin_level >= AdminLevel::MANAGE);
                    let moves_manage = admin_changes
                        && (changes.admin_level.is_some_and(|a| a >= AdminLevel::MANAGE)
                            || was_manage);
                    need(
                        !(moves_manage || inherit_changes) || access.admin() >= AdminLevel::OWN,
                        "setting adminLevel to or from manage and above, or inheritAccess, needs admin level own (40)",
                    )?;
                    // What was allowed because it changed nothing is dropped from the command:
                    // an echoed old value must not undo a change committed meanwhile (the
                    // actor checks a whole batch against one snapshot), and an unchanged
                    // level does not make the stream's listeners be checked again.
                    let mut changes = changes;
                    if !read_changes {
                        changes.read_level = None;
                    }
                    if !write_changes {
                        changes.write_level = None;
                    }
                    if !admin_changes {
                        changes.admin_level = None;
                    }
                    if !inherit_changes {
                        changes.inherit_access = None;
                    }
                    Command::Update { key, changes, if_message_count }
                }
                WriteOp::Close => {
                    need(
                        access.write() >= WriteLevel::CLOSE,
                        "closing needs write level close (40)",
                    )?;
                    Command::Close { key }
                }
                WriteOp::Post { message_type, content, instructions, client_msg_id } => {
                    need(
                        access.write() >= WriteLevel::POST,
                        "posting needs write level post (20)",
                    )?;
                    Command::Post { key, message_type, content, instructions, client_msg_id }
                }
                WriteOp::Participate { action, extra, extra_max } => {
                    let Principal::User { id, .. } = &caller.principal else {
                        return Err(err(
                            ErrorCode::InvalidArgument,
                            "the app joins as a user: send X-Chorus-As-User",
                        ));
                    };
                    if matches!(action, ParticipantAction::Join | ParticipantAction::Subscribe) {
                        need(
                            access.write() >= WriteLevel::JOIN,
                            "joining needs write level join (10)",
                        )?;
                    }
                    Command::Participate {
                        key,
                        user: id.clone(),
                        action,
                        extra,
                        extra_max,
                        unseen: false,
                    }
                }
                WriteOp::SetAccess { rows } => {
                    let existing =
                        ctx.target.as_ref().map(|t| t.own.as_slice()).unwrap_or_default();
                    let stream_admin = ctx.stream().map_or(-1, |s| s.admin_level);
                    may_grant(&access, existing, &rows, stream_admin)?;
                    Command::SetAccess { key, rows }
                }
                WriteOp::Create { .. } | WriteOp::JoinBatch { .. } => {
                    return Err(err(ErrorCode::Internal, "a write reached the wrong branch"));
                }
            };
            Ok((command, access))
        }
    }
}

#[cfg(test)]
mod tests {
    use chorus_types::{AccessSubject, Levels, UserId};

    use super::*;

    fn manager() -> Access {
        let levels = Levels { read_level: 40, write_level: 40, admin_level: AdminLevel::MANAGE };
        Access { levels, direct: [true; 3] }
    }

    fn user_row(user: &str, admin_level: i32) -> AccessRow {
        AccessRow {
            subject: AccessSubject::User(UserId::new(user).unwrap()),
            read_level: 40,
            write_level: 40,
            admin_level,
        }
    }

    /// DESIGN.md §3 "Access rows": a manager may grant admin levels below manage, even though
    /// the replaced set keeps existing managers' rows (the manager's own included).
    #[test]
    fn manager_keeps_manage_rows_and_grants_below_manage() {
        let existing = [user_row("mgr", 30), user_row("owner", 40)];
        let mut rows = existing.to_vec();
        rows.push(user_row("carol", 20));
        assert!(may_grant(&manager(), &existing, &rows, 20).is_ok());
        // A row below manage may change.
        rows[2].read_level = 10;
        assert!(may_grant(&manager(), &existing, &rows, 20).is_ok());
    }

    #[test]
    fn manager_cannot_change_a_manage_row_nor_name_a_subject_twice() {
        let existing = [user_row("mgr", 30), user_row("owner", 40)];
        let mut locks_out = existing.to_vec();
        locks_out[1].read_level = 0;
        let error = may_grant(&manager(), &existing, &locks_out, 20).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::Forbidden);
        let mut twice = existing.to_vec();
        twice.push(user_row("owner", 0));
        let error = distinct_subjects(&twice).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::InvalidArgument);
        assert!(distinct_subjects(&existing).is_ok());
    }

    #[test]
    fn manager_cannot_grant_raise_or_remove_manage() {
        let existing = [user_row("mgr", 30), user_row("owner", 40)];
        let forbidden = |rows: &[AccessRow]| {
            let error = may_grant(&manager(), &existing, rows, 20).unwrap_err();
            assert_eq!(error.error.code, ErrorCode::Forbidden);
        };
        let mut grants = existing.to_vec();
        grants.push(user_row("carol", 30));
        forbidden(&grants);
        let mut raises = existing.to_vec();
        raises[0].admin_level = 40;
        forbidden(&raises);
        forbidden(&[user_row("mgr", 30)]);
        let mut lowers = existing.to_vec();
        lowers[1].admin_level = 20;
        forbidden(&lowers);
    }

    #[test]
    fn owner_may_grant_anything() {
        let owner = Access { levels: Levels::MAX, direct: [true; 3] };
        assert!(may_grant(&owner, &[user_row("mgr", 30)], &[user_row("carol", 40)], 40).is_ok());
    }

    fn role_row(role: &str, admin_level: i32) -> AccessRow {
        AccessRow { subject: AccessSubject::Role(role.into()), ..user_row("x", admin_level) }
    }

    /// While a role gives manage, a user row's adminLevel decides whether that user manages:
    /// a manager may neither set one (demoting an owner by role) nor drop one (unmasking the
    /// role's manage), but may still ban with read and write levels.
    #[test]
    fn manager_cannot_move_a_role_manager_across_manage_with_a_user_row() {
        let mut unset = user_row("dave", -1);
        unset.read_level = 0;
        let existing = [user_row("mgr", 30), role_row("owners", 40), user_row("dave", 10)];
        let forbidden = |rows: &[AccessRow], stream_admin: i32| {
            let error = may_grant(&manager(), &existing, rows, stream_admin).unwrap_err();
            assert_eq!(error.error.code, ErrorCode::Forbidden);
        };
        // Dropping dave's lowering row unmasks the role.
        forbidden(&existing[..2], 20);
        // Demoting carol, who may own through the role.
        let mut demotes = existing.to_vec();
        demotes.push(user_row("carol", 0));
        forbidden(&demotes, 20);
        // A ban that leaves adminLevel unset, and a change below manage, stay allowed.
        let mut bans = existing.to_vec();
        bans.push(AccessRow {
            subject: AccessSubject::User(UserId::new("troll").unwrap()),
            ..unset
        });
        bans[2].admin_level = 20;
        assert!(may_grant(&manager(), &existing, &bans, 20).is_ok());
        // With no role, everyone or stream manage, setting a user's adminLevel is fine.
        let plain = [user_row("mgr", 30)];
        let mut sets = plain.to_vec();
        sets.push(user_row("carol", 0));
        assert!(may_grant(&manager(), &plain, &sets, 20).is_ok());
        // The stream's own adminLevel counts as such a source.
        let error = may_grant(&manager(), &plain, &sets, 30).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::Forbidden);
    }
}
