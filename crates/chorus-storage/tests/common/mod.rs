//! Log entries the storage tests share.

#![allow(clippy::unwrap_used)]

use chorus_streams::template::resolve;
use chorus_streams::{Command, Envelope, FieldChanges};
use chorus_types::{Millis, PublisherId, StreamName, StreamType};

/// Alice creates her `Chat/room` stream `name`.
pub fn create(name: &str) -> Envelope {
    let (stream, rows) = resolve(
        PublisherId::new("alice").unwrap(),
        StreamName::new(name).unwrap(),
        StreamType::new("Chat/room").unwrap(),
        FieldChanges::default(),
        None,
    );
    Envelope {
        time: Millis(1),
        by: "alice".into(),
        command: Command::Create { stream: Box::new(stream), access_rows: rows },
    }
}
