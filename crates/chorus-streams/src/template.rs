//! Building a new stream from its create request and its type's template.
//!
//! A template is an ordinary stream named `<type>/` (type `<type>`), published by the new
//! stream's publisher or by `""` (the node picks the most specific that exists). Every field the
//! request leaves out is copied from it, and its access rows are copied as the new stream's
//! rows. Without a template a stream is private: levels 0/0/0.

use chorus_types::{AccessRow, Millis, PublisherId, StreamName, StreamRecord, StreamType};
use serde_json::{Map, Value};

use crate::command::FieldChanges;

/// The stream to propose (counters and times are set by `apply`) and its initial access rows.
pub fn resolve(
    publisher_id: PublisherId,
    name: StreamName,
    stream_type: StreamType,
    req: FieldChanges,
    template: Option<(&StreamRecord, &[AccessRow])>,
) -> (StreamRecord, Vec<AccessRow>) {
    let t = template.map(|(s, _)| s);
    let rows = template.map(|(_, r)| r.to_vec()).unwrap_or_default();
    let record = StreamRecord {
        publisher_id,
        name,
        stream_type,
        title: req.title.or_else(|| t.map(|t| t.title.clone())).unwrap_or_default(),
        icon: req.icon.or_else(|| t.map(|t| t.icon.clone())).unwrap_or_default(),
        content: req.content.or_else(|| t.map(|t| t.content.clone())).unwrap_or_default(),
        attributes: req
            .attributes
            .or_else(|| t.map(|t| t.attributes.clone()))
            .unwrap_or_else(|| Value::Object(Map::new())),
        read_level: req.read_level.or_else(|| t.map(|t| t.read_level)).unwrap_or(0),
        write_level: req.write_level.or_else(|| t.map(|t| t.write_level)).unwrap_or(0),
        admin_level: req.admin_level.or_else(|| t.map(|t| t.admin_level)).unwrap_or(0),
        inherit_access: req
            .inherit_access
            .or_else(|| t.map(|t| t.inherit_access.clone()))
            .unwrap_or_default(),
        message_count: 0,
        participant_count: 0,
        inserted_time: Millis(0),
        updated_time: Millis(0),
        closed_time: None,
    };
    (record, rows)
}

#[cfg(test)]
mod tests {
    use chorus_types::AccessSubject;
    use serde_json::json;

    use super::*;

    #[test]
    fn template_fills_what_the_request_leaves_out() {
        let ty = StreamType::new("Chat/room").unwrap();
        let (tpl, _) = resolve(
            PublisherId::app(),
            StreamName::template_for(&ty),
            ty.clone(),
            FieldChanges {
                title: Some("Room".into()),
                attributes: Some(json!({"a": 1})),
                read_level: Some(35),
                write_level: Some(20),
                ..Default::default()
            },
            None,
        );
        let rows = vec![AccessRow {
            subject: AccessSubject::Role("mod".into()),
            read_level: 40,
            write_level: 40,
            admin_level: 30,
        }];
        let (s, r) = resolve(
            PublisherId::new("alice").unwrap(),
            StreamName::new("Chat/room/1").unwrap(),
            ty,
            FieldChanges { title: Some("Mine".into()), ..Default::default() },
            Some((&tpl, &rows)),
        );
        assert_eq!(s.title, "Mine");
        assert_eq!(s.attributes, json!({"a": 1}));
        assert_eq!((s.read_level, s.write_level, s.admin_level), (35, 20, 0));
        assert_eq!(r, rows);
    }

    #[test]
    fn without_template_a_stream_is_private() {
        let (s, r) = resolve(
            PublisherId::new("alice").unwrap(),
            StreamName::new("x").unwrap(),
            StreamType::new("Chat/room").unwrap(),
            FieldChanges::default(),
            None,
        );
        assert_eq!((s.read_level, s.write_level, s.admin_level), (0, 0, 0));
        assert!(r.is_empty());
        assert_eq!(s.attributes, json!({}));
    }
}
