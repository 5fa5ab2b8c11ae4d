//! WebSocket frames: parsing a request frame into a [`Command`], and rendering replies and the
//! `resync` event.
//!
//! A request is `{"id", "op", "stream"?, …args}`. The arguments beside `id`, `op` and `stream`
//! are deserialized into the same strict request types as the HTTP bodies, so an unknown field
//! is `invalid_argument` on both transports.

use chorus_api::{
    CreateStream, HistoryQuery, JoinBatch, NewEphemeral, NewPost, ParticipantBody, ParticipantOp,
    ParticipantQuery, ServiceError, UpdateStream,
};
use chorus_types::{ApiError, StreamKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::error_json;
use crate::ops::{AccessRowsBody, BatchGetBody, OpName, Request};

/// What a well-formed request frame asks for.
#[derive(Debug)]
pub(crate) enum Command {
    /// An operation HTTP has too.
    Call(Request),
    Listen {
        key: StreamKey,
        since: Option<u64>,
    },
    Unlisten(StreamKey),
    Ping,
}

#[cfg(test)]
impl Command {
    fn op(&self) -> OpName {
        match self {
            Command::Call(request) => request.op(),
            Command::Listen { .. } => OpName::Listen,
            Command::Unlisten(_) => OpName::Unlisten,
            Command::Ping => OpName::Ping,
        }
    }
}

/// A parsed request frame.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Echoed as `re` in the reply: a JSON number or string.
    pub(crate) id: Value,
    pub(crate) command: Command,
}

/// A frame that cannot be executed; answered with `{"re": …, "error": …}`.
#[derive(Debug)]
pub(crate) struct FrameError {
    /// The request's id when it could be read, else `null`.
    pub(crate) re: Value,
    /// The operation when it could be told, for the metric label.
    pub(crate) op: OpName,
    pub(crate) error: ApiError,
}

impl FrameError {
    fn unreadable(message: impl Into<String>) -> Self {
        FrameError { re: Value::Null, op: OpName::Unknown, error: ApiError::invalid(message) }
    }

    /// The answer to a binary frame: the protocol is JSON text frames only.
    pub(crate) fn binary() -> Self {
        Self::unreadable("binary frames are not supported; send one JSON object per text frame")
    }
}

/// Arguments of operations that take none beyond `stream`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// `listen` arguments: `since` is the last ordinal the client has; absent listens from now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenArgs {
    since: Option<u64>,
}

pub(crate) fn parse_frame(text: &str) -> Result<Frame, FrameError> {
    if let Some(post) = super::fast_post::parse(text) {
        return Ok(post);
    }
    general(text)
}

/// Any frame, and every error's wording.
pub(crate) fn general(text: &str) -> Result<Frame, FrameError> {
    let value: Value = super::strict_json::from_str(text).map_err(|error| {
        let message = format!("frame is not valid JSON: {error}");
        match super::frame_id::readable_id(text) {
            Some(id) => error_for(id, OpName::Unknown, ApiError::invalid(message)),
            None => FrameError::unreadable(message),
        }
    })?;
    let Value::Object(mut fields) = value else {
        return Err(FrameError::unreadable("a frame must be a JSON object"));
    };
    let id = match fields.remove("id") {
        Some(id @ (Value::Number(_) | Value::String(_))) => id,
        Some(_) => return Err(FrameError::unreadable("id must be a number or a string")),
        None => return Err(FrameError::unreadable("missing field `id`")),
    };
    let op_text = match fields.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => {
            return Err(error_for(id, OpName::Unknown, ApiError::invalid("op must be a string")));
        }
        None => {
            return Err(error_for(id, OpName::Unknown, ApiError::invalid("missing field `op`")));
        }
    };
    let Some(op) = op_by_wire_name(&op_text) else {
        let error = ApiError::invalid(format!("unknown op `{op_text}`"));
        return Err(error_for(id, OpName::Unknown, error));
    };
    match command(op, fields) {
        Ok(command) => Ok(Frame { id, command }),
        Err(error) => Err(error_for(id, op, error)),
    }
}

fn error_for(re: Value, op: OpName, error: ApiError) -> FrameError {
    FrameError { re, op, error }
}

fn op_by_wire_name(op: &str) -> Option<OpName> {
    let name = match op {
        "create" => OpName::Create,
        "fetch" => OpName::Fetch,
        "batchGet" => OpName::BatchGet,
        "update" => OpName::Update,
        "close" => OpName::Close,
        "post" => OpName::Post,
        "messages" => OpName::Messages,
        "join" => OpName::Join,
        "leave" => OpName::Leave,
        "subscribe" => OpName::Subscribe,
        "unsubscribe" => OpName::Unsubscribe,
        "joinBatch" => OpName::JoinBatch,
        "participants" => OpName::Participants,
        "access" => OpName::Access,
        "setAccess" => OpName::SetAccess,
        "ephemeral" => OpName::Ephemeral,
        "listen" => OpName::Listen,
        "unlisten" => OpName::Unlisten,
        "ping" => OpName::Ping,
        _ => return None,
    };
    Some(name)
}

/// Builds the command of `op` from the frame's remaining fields (`id` and `op` removed).
fn command(op: OpName, mut fields: Map<String, Value>) -> Result<Command, ApiError> {
    let call = |request| Ok(Command::Call(request));
    match op {
        OpName::Create => {
            lift_stream(&mut fields)?;
            call(Request::Create(args::<CreateStream>(fields)?))
        }
        OpName::BatchGet => call(Request::BatchGet(args::<BatchGetBody>(fields)?.keys())),
        OpName::Ping => {
            args::<NoArgs>(fields)?;
            Ok(Command::Ping)
        }
        OpName::Fetch => {
            let key = take_stream(&mut fields)?;
            args::<NoArgs>(fields)?;
            call(Request::Fetch(key))
        }
        OpName::Update => {
            let key = take_stream(&mut fields)?;
            call(Request::Update(key, Box::new(args::<UpdateStream>(fields)?)))
        }
        OpName::Close => {
            let key = take_stream(&mut fields)?;
            args::<NoArgs>(fields)?;
            call(Request::Close(key))
        }
        OpName::Post => {
            let key = take_stream(&mut fields)?;
            call(Request::Post(key, args::<NewPost>(fields)?))
        }
        OpName::Messages => {
            let key = take_stream(&mut fields)?;
            call(Request::Messages(key, args::<HistoryQuery>(fields)?))
        }
        OpName::Join => participate(ParticipantOp::Join, fields),
        OpName::Leave => participate(ParticipantOp::Leave, fields),
        OpName::Subscribe => participate(ParticipantOp::Subscribe, fields),
        OpName::Unsubscribe => participate(ParticipantOp::Unsubscribe, fields),
        OpName::JoinBatch => {
            let key = take_stream(&mut fields)?;
            call(Request::JoinBatch(key, args::<JoinBatch>(fields)?))
        }
        OpName::Participants => {
            let key = take_stream(&mut fields)?;
            call(Request::Participants(key, args::<ParticipantQuery>(fields)?))
        }
        OpName::Access => {
            let key = take_stream(&mut fields)?;
            args::<NoArgs>(fields)?;
            call(Request::Access(key))
        }
        OpName::SetAccess => {
            let key = take_stream(&mut fields)?;
            call(Request::SetAccess(key, args::<AccessRowsBody>(fields)?.rows))
        }
        OpName::Ephemeral => {
            let key = take_stream(&mut fields)?;
            call(Request::Ephemeral(key, args::<NewEphemeral>(fields)?))
        }
        OpName::Listen => {
            let key = take_stream(&mut fields)?;
            let ListenArgs { since } = args(fields)?;
            Ok(Command::Listen { key, since })
        }
        OpName::Unlisten => {
            let key = take_stream(&mut fields)?;
            args::<NoArgs>(fields)?;
            Ok(Command::Unlisten(key))
        }
        OpName::Unknown => Err(ApiError::invalid("unknown op")),
    }
}

fn participate(op: ParticipantOp, mut fields: Map<String, Value>) -> Result<Command, ApiError> {
    let key = take_stream(&mut fields)?;
    Ok(Command::Call(Request::Participate(key, op, args::<ParticipantBody>(fields)?)))
}

const STREAM_NOT_OBJECT: &str = r#"stream: expected an object {"publisherId", "name"}"#;

fn take_stream(fields: &mut Map<String, Value>) -> Result<StreamKey, ApiError> {
    let stream =
        fields.remove("stream").ok_or_else(|| ApiError::invalid("missing field `stream`"))?;
    if !stream.is_object() {
        return Err(ApiError::invalid(STREAM_NOT_OBJECT));
    }
    serde_json::from_value(stream).map_err(|error| ApiError::invalid(format!("stream: {error}")))
}

/// `create` names its stream like every other op (`"stream": {"publisherId", "name"}`, both
/// optional here: the publisher defaults to the caller and a missing name is generated) or, as
/// the HTTP body does, with `publisherId` / `name` at the top level. Either is accepted; naming
/// the same field both ways is refused rather than guessing which one was meant.
fn lift_stream(fields: &mut Map<String, Value>) -> Result<(), ApiError> {
    let Some(stream) = fields.remove("stream") else { return Ok(()) };
    let Value::Object(stream) = stream else {
        return Err(ApiError::invalid(STREAM_NOT_OBJECT));
    };
    for (key, value) in stream {
        if key != "publisherId" && key != "name" {
            return Err(ApiError::invalid(format!("stream: unknown field `{key}`")));
        }
        if fields.contains_key(&key) {
            return Err(ApiError::invalid(format!(
                "`{key}` is given both in `stream` and beside it"
            )));
        }
        fields.insert(key, value);
    }
    Ok(())
}

/// Deserializes the top-level arguments strictly, with the offending field's path in the error
/// (as an HTTP body's error names it).
///
/// Straight from the parsed frame: the frame's text was checked for repeated keys as it was
/// parsed, so the arguments are not written back to text and parsed again (which cost each
/// post an encoding of its content and two more passes over it).
fn args<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ApiError> {
    let value = Value::Object(fields);
    // Displayed as axum's `Json` displays it for an HTTP body: "path: error".
    serde_path_to_error::deserialize(&value).map_err(|error| ApiError::invalid(error.to_string()))
}

/// `{"re": id, "ok": body}`.
pub(crate) fn ok_frame(re: &Value, body: Value) -> String {
    json!({"re": re, "ok": body}).to_string()
}

/// [`ok_frame`] around a body already rendered as JSON text.
pub(crate) fn ok_frame_text(re: &Value, body: &str) -> String {
    // Built by hand: this wraps every post's answer, where `format!` cost ~1 % of the CPU.
    let re = re.to_string();
    let mut out = String::with_capacity(re.len() + body.len() + 13);
    out.push_str(r#"{"re":"#);
    out.push_str(&re);
    out.push_str(r#","ok":"#);
    out.push_str(body);
    out.push('}');
    out
}

/// `{"re": id, "error": {…}}`, with `"stream"` beside the error for a failed precondition.
pub(crate) fn error_frame(re: &Value, error: &ServiceError) -> String {
    let mut frame = match error_json(error) {
        Value::Object(object) => object,
        other => Map::from_iter([("error".to_owned(), other)]),
    };
    frame.insert("re".into(), re.clone());
    Value::Object(frame).to_string()
}

/// `{"ev": "resync", "stream": {…}, "from": n}`: the listen ended; fetch from `from`.
pub(crate) fn resync_frame(key: &StreamKey, from: u64) -> String {
    json!({"ev": "resync", "stream": key, "from": from}).to_string()
}

#[cfg(test)]
mod tests {
    use chorus_types::ErrorCode;

    use super::*;

    fn parse_err(text: &str) -> FrameError {
        match parse_frame(text) {
            Ok(frame) => panic!("{text} parsed as {frame:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn not_json_not_object_and_missing_id_reply_to_null() {
        for text in ["nope", "[1,2]", "42", r#"{"op":"ping"}"#, r#"{"id":[1],"op":"ping"}"#] {
            let error = parse_err(text);
            assert_eq!(error.re, Value::Null, "{text}");
            assert_eq!(error.error.code, ErrorCode::InvalidArgument, "{text}");
            assert_eq!(error.op, OpName::Unknown);
        }
    }

    #[test]
    fn a_key_named_twice_echoes_the_id_when_it_is_unambiguous() {
        let nested = parse_err(
            r#"{"id":2,"op":"fetch","stream":{"publisherId":"a","publisherId":"b","name":"x"}}"#,
        );
        assert_eq!(nested.re, json!(2));
        assert!(nested.error.message.contains("duplicate"), "{}", nested.error.message);
        assert_eq!(parse_err(r#"{"id":8,"op":"ping","op":"ping"}"#).re, json!(8));
        assert_eq!(parse_err(r#"{"id":1,"id":2,"op":"ping"}"#).re, Value::Null);
    }

    #[test]
    fn missing_and_unknown_op_echo_the_id() {
        let missing = parse_err(r#"{"id":7}"#);
        assert_eq!(missing.re, json!(7));
        assert!(missing.error.message.contains("op"));
        let unknown = parse_err(r#"{"id":"a","op":"explode"}"#);
        assert_eq!(unknown.re, json!("a"));
        assert!(unknown.error.message.contains("explode"));
        assert_eq!(unknown.error.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = r#"{"id":1,"op":"post","stream":{"publisherId":"a","name":"x"},"type":"Chat/message","bogus":true}"#;
        let error = parse_err(text);
        assert_eq!(error.re, json!(1));
        assert_eq!(error.op, OpName::Post);
        assert!(error.error.message.contains("bogus"), "{}", error.error.message);
        assert!(!error.error.message.contains("line"), "{}", error.error.message);

        let fetch_extra =
            parse_err(r#"{"id":1,"op":"fetch","stream":{"publisherId":"a","name":"x"},"x":1}"#);
        assert!(fetch_extra.error.message.contains('x'));
        let ping_with_stream = parse_err(r#"{"id":1,"op":"ping","stream":{}}"#);
        assert!(ping_with_stream.error.message.contains("stream"));
        let bad_stream =
            parse_err(r#"{"id":1,"op":"fetch","stream":{"publisherId":"a","nam":"x"}}"#);
        assert!(bad_stream.error.message.starts_with("stream:"), "{}", bad_stream.error.message);
        let no_stream = parse_err(r#"{"id":1,"op":"listen","since":3}"#);
        assert!(no_stream.error.message.contains("stream"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text =
            r#"{"id":1,"op":"messages","stream":{"publisherId":"a","name":"x"},"limit":"ten"}"#;
        let error = parse_err(text);
        assert!(error.error.message.contains("limit"), "{}", error.error.message);
    }

    #[test]
    fn well_formed_frames_parse() {
        let frame = parse_frame(r#"{"id":"q1","op":"ping"}"#).unwrap();
        assert_eq!(frame.id, json!("q1"));
        assert!(matches!(frame.command, Command::Ping));

        let listen =
            r#"{"id":2,"op":"listen","stream":{"publisherId":"","name":"Chat/room/1"},"since":5}"#;
        let frame = parse_frame(listen).unwrap();
        match frame.command {
            Command::Listen { key, since } => {
                assert!(key.publisher_id.is_app());
                assert_eq!(since, Some(5));
            }
            other => panic!("{other:?}"),
        }

        let create = r#"{"id":3,"op":"create","type":"Chat/room","name":"Chat/room/9"}"#;
        assert_eq!(parse_frame(create).unwrap().command.op(), OpName::Create);
        let nested = r#"{"id":3,"op":"create","type":"Chat/room","stream":{"publisherId":"a","name":"Chat/room/9"}}"#;
        match parse_frame(nested).unwrap().command {
            Command::Call(Request::Create(c)) => {
                assert_eq!(c.name.unwrap().as_str(), "Chat/room/9");
                assert_eq!(c.publisher_id.unwrap().as_str(), "a");
            }
            other => panic!("{other:?}"),
        }
        let both = r#"{"id":3,"op":"create","type":"T","name":"x","stream":{"name":"y"}}"#;
        assert!(parse_frame(both).is_err());
        let array = r#"{"id":3,"op":"fetch","stream":["a","x"]}"#;
        assert!(parse_frame(array).is_err());

        let join = r#"{"id":4,"op":"join","stream":{"publisherId":"a","name":"x"}}"#;
        assert_eq!(parse_frame(join).unwrap().command.op(), OpName::Join);

        let set_access = r#"{"id":5,"op":"setAccess","stream":{"publisherId":"a","name":"x"},"rows":[{"ofRole":"mod","writeLevel":30}]}"#;
        assert_eq!(parse_frame(set_access).unwrap().command.op(), OpName::SetAccess);

        let batch = r#"{"id":6,"op":"batchGet","streams":[{"publisherId":"a","name":"x"}]}"#;
        assert_eq!(parse_frame(batch).unwrap().command.op(), OpName::BatchGet);
    }

    #[test]
    fn binary_frames_are_refused_with_null_re() {
        let error = FrameError::binary();
        assert_eq!(error.re, Value::Null);
        assert_eq!(error.error.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn reply_frames() {
        assert_eq!(
            serde_json::from_str::<Value>(&ok_frame(&json!(7), json!({}))).unwrap(),
            json!({"re": 7, "ok": {}})
        );
        let error = ServiceError::from(ApiError::new(ErrorCode::Unavailable, "busy"));
        let frame: Value = serde_json::from_str(&error_frame(&json!("x"), &error)).unwrap();
        assert_eq!(frame["re"], "x");
        assert_eq!(frame["error"]["code"], "unavailable");
        assert!(frame["error"]["retryAfterMs"].is_u64());
        let key = StreamKey::new(
            chorus_types::PublisherId::new("a").unwrap(),
            chorus_types::StreamName::new("x").unwrap(),
        );
        let resync: Value = serde_json::from_str(&resync_frame(&key, 12)).unwrap();
        assert_eq!(
            resync,
            json!({"ev": "resync", "stream": {"publisherId": "a", "name": "x"}, "from": 12})
        );
    }
}
