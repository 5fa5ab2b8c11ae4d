//! What the stream actor proposes and what `apply` answers.

use chorus_types::{
    AccessRow, ClientMsgId, ErrorCode, InheritEntry, MessageRecord, Millis, ParticipantRecord,
    StreamKey, StreamRecord, StreamType, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One command with the context the proposer stamped on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Proposal time; the only clock `apply` ever sees.
    pub time: Millis,
    /// `byUserId` of any message this command posts (`""` for the app).
    pub by: String,
    pub command: Command,
}

/// The stream fields a create or update sets; `None` leaves a field as it is (on create: takes
/// it from the template, or the default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldChanges {
    pub title: Option<String>,
    pub icon: Option<String>,
    pub content: Option<String>,
    pub attributes: Option<Value>,
    pub read_level: Option<i32>,
    pub write_level: Option<i32>,
    pub admin_level: Option<i32>,
    pub inherit_access: Option<Vec<InheritEntry>>,
}

impl FieldChanges {
    /// The fields as the limit checks see them.
    pub fn as_fields(&self) -> crate::validate::FieldsRef<'_> {
        crate::validate::FieldsRef {
            title: self.title.as_deref(),
            icon: self.icon.as_deref(),
            content: self.content.as_deref(),
            attributes: self.attributes.as_ref(),
            read_level: self.read_level,
            write_level: self.write_level,
            admin_level: self.admin_level,
            inherit_access: self.inherit_access.as_deref(),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantAction {
    Join,
    Leave,
    Subscribe,
    Unsubscribe,
}

/// A change to one stream. Access has been checked by the proposer; `apply` checks only what
/// depends on the state at commit time (existence, closed, preconditions, dedupe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create a fully resolved stream (template applied, name generated); counters and times
    /// are set by `apply`. Posts `Streams/created`.
    Create { stream: Box<StreamRecord>, access_rows: Vec<AccessRow> },
    /// Posts `Streams/changed` with the fields that changed.
    Update { key: StreamKey, changes: FieldChanges, if_message_count: Option<u64> },
    /// Sets `closedTime`, posts `Streams/closed`.
    Close { key: StreamKey },
    Post {
        key: StreamKey,
        message_type: StreamType,
        content: String,
        instructions: Option<Value>,
        client_msg_id: Option<ClientMsgId>,
    },
    Participate {
        key: StreamKey,
        user: UserId,
        action: ParticipantAction,
        extra: Option<Value>,
        /// The most bytes the participant's `extra` may take serialized once this command's
        /// `extra` is merged into what is stored (the proposer's configured limit, carried in
        /// the command so every replica decides alike). Entries written before it existed
        /// carry none and are not checked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        extra_max: Option<u32>,
        /// The caller cannot see the stream (a leave or unsubscribe only): it goes ahead for a
        /// participant it changes, and is `not_found` for anyone else, so the answer tells
        /// nobody else that the stream exists.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unseen: bool,
    },
    /// Replaces the row set of a stream or of a `<type>*` rule pseudo-stream.
    SetAccess { key: StreamKey, rows: Vec<AccessRow> },
    /// The app joins many users at once (1 to [`MAX_JOIN_BATCH`], checked before proposing):
    /// one replicated command for the whole batch, so populating a 300,000-member room costs
    /// 300 Raft entries, not 300,000. Users already participating are skipped. Posts **one**
    /// `Streams/joined` naming the users it joined (none when it joined nobody), where a single
    /// join posts one per user: a message per user would flood the log and every listener.
    JoinBatch { key: StreamKey, users: Vec<UserId> },
}

/// Most users one [`Command::JoinBatch`] may name (beyond it: 413 `too_large`). It bounds the
/// Raft entry (ids are at most 64 bytes) and the work of one apply.
pub const MAX_JOIN_BATCH: usize = 1000;

impl Command {
    /// What the command costs to apply, in rows: a batch join writes a participant per user.
    pub fn weight(&self) -> usize {
        match self {
            Command::JoinBatch { users, .. } => users.len().max(1),
            _ => 1,
        }
    }

    pub fn key(&self) -> StreamKey {
        match self {
            Command::Create { stream, .. } => stream.key(),
            Command::Update { key, .. }
            | Command::Close { key }
            | Command::Post { key, .. }
            | Command::Participate { key, .. }
            | Command::SetAccess { key, .. }
            | Command::JoinBatch { key, .. } => key.clone(),
        }
    }
}

/// The reply to one envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Stream(Box<StreamRecord>),
    Posted {
        message: Box<MessageRecord>,
        duplicate: bool,
    },
    Participant(Box<ParticipantRecord>),
    Access(Vec<AccessRow>),
    /// A [`Command::JoinBatch`]: how many users it newly joined (each counted once, however
    /// often the batch names them), and the stream's exact `participantCount` after it.
    BatchJoined {
        joined: u64,
        participant_count: u64,
    },
    /// The command changed nothing. `stream` is the current stream for a failed precondition.
    Rejected {
        code: ErrorCode,
        reason: Rejection,
        stream: Option<Box<StreamRecord>>,
    },
}

/// Why `apply` refused a command; each maps to one error code and message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    NotFound,
    AlreadyExists,
    Closed,
    MessageCountMismatch,
    /// A participant's merged `extra` would exceed the command's `extra_max`.
    ExtraTooLarge,
}

impl Rejection {
    pub fn code(self) -> ErrorCode {
        match self {
            Rejection::NotFound => ErrorCode::NotFound,
            Rejection::AlreadyExists => ErrorCode::AlreadyExists,
            Rejection::Closed | Rejection::MessageCountMismatch => ErrorCode::Conflict,
            Rejection::ExtraTooLarge => ErrorCode::TooLarge,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Rejection::NotFound => "stream not found",
            Rejection::AlreadyExists => "stream already exists",
            Rejection::Closed => "stream is closed",
            Rejection::MessageCountMismatch => "messageCount differs from ifMessageCount",
            Rejection::ExtraTooLarge => {
                "extra merged into the participant's stored extra would exceed the extra size limit"
            }
        }
    }
}
