//! Creating, fetching, updating and closing streams, and the templates new streams start from.

use super::*;

/// The stream fields a create or an update request sets: the two request types name them
/// alike.
macro_rules! field_changes {
    ($req:ident) => {
        FieldChanges {
            title: $req.title,
            icon: $req.icon,
            content: $req.content,
            attributes: $req.attributes,
            read_level: $req.read_level,
            write_level: $req.write_level,
            admin_level: $req.admin_level,
            inherit_access: $req.inherit_access,
        }
    };
}

impl Node {
    pub(super) async fn create_stream(
        &self,
        caller: &Caller,
        req: CreateStream,
    ) -> Result<StreamView, ServiceError> {
        let publisher = match (&caller.principal, req.publisher_id) {
            (Principal::App, Some(p)) => p,
            // `publisherId` defaults to the caller (DESIGN.md §3), and the app's own identity is
            // the publisher `""`, as its posts' `byUserId` is.
            (Principal::App, None) => PublisherId::app(),
            (Principal::User { id, .. }, None) => PublisherId::from(id.clone()),
            (Principal::User { id, .. }, Some(p)) => {
                if p.as_str() != id.as_str() {
                    return Err(err(
                        ErrorCode::Forbidden,
                        "only the app may create streams for another publisher",
                    ));
                }
                p
            }
        };
        let name = match req.name {
            Some(n) => n,
            None => StreamName::new(format!("{}/{}", req.stream_type, ulid::Ulid::new()))?,
        };
        if name.is_type_rule() {
            return Err(err(
                ErrorCode::InvalidArgument,
                "names ending in '*' are access-rule pseudo-streams",
            ));
        }
        // A URL path segment `.` or `..` is resolved away by browsers, curl and most HTTP
        // clients before it is sent, so such a stream could be created but not reached.
        if matches!(name.as_str(), "." | "..") {
            return Err(err(
                ErrorCode::InvalidArgument,
                "a stream may not be named '.' or '..' (clients resolve those path segments away)",
            ));
        }
        if name.is_template()
            && name.as_str() != StreamName::template_for(&req.stream_type).as_str()
        {
            return Err(err(
                ErrorCode::InvalidArgument,
                "a template is named '<type>/' after its own type",
            ));
        }
        let fields = field_changes!(req);
        self.inner.config.limits.check_fields(fields.as_fields())?;
        let template = if name.is_template() {
            None
        } else {
            let for_stream = StreamKey::new(publisher.clone(), name.clone());
            self.template(&for_stream, &req.stream_type).await?
        };
        let (stream, rows) = resolve(
            publisher,
            name,
            req.stream_type,
            fields,
            template.as_ref().map(|(s, r)| (s, r.as_slice())),
        );
        let key = stream.key();
        not_own_parent(&key, Some(&stream.inherit_access))?;
        let span = tracing::Span::current();
        span.record("shard", self.shard_of(&key).0);
        span.record("stream", tracing::field::display(&key));
        self.write_stream(caller, &key, WriteOp::Create { stream: Box::new(stream), rows }).await
    }

    pub(super) async fn fetch_stream(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<StreamView, ServiceError> {
        self.read_barrier(key).await?;
        let ctx = self.context(key).await?;
        let access = visible(&ctx, caller)?;
        let record = ctx
            .target
            .map(|t| t.stream)
            .ok_or_else(|| err(ErrorCode::NotFound, "stream not found"))?;
        Ok(view(record, &access))
    }

    pub(super) async fn update_stream(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: UpdateStream,
    ) -> Result<StreamView, ServiceError> {
        let changes = field_changes!(req);
        self.inner.config.limits.check_fields(changes.as_fields())?;
        not_own_parent(key, changes.inherit_access.as_deref())?;
        let op = WriteOp::Update { changes, if_message_count: req.if_message_count };
        self.write_stream(caller, key, op).await
    }

    /// The template a new stream `for_stream` of `stream_type` starts from: its publisher's,
    /// else the app's. Templates live on their own shards, read as access sources are.
    async fn template(
        &self,
        for_stream: &StreamKey,
        stream_type: &chorus_types::StreamType,
    ) -> Result<Option<(StreamRecord, Vec<AccessRow>)>, ServiceError> {
        let name = StreamName::template_for(stream_type);
        let own_shard = self.shard_of(for_stream);
        for p in [for_stream.publisher_id.clone(), PublisherId::app()] {
            let key = StreamKey::new(p, name.clone());
            let found = access_ctx::source(&self.inner, own_shard, &key).await?;
            if let Some(stream) = found.stream {
                return Ok(Some((stream, found.rows)));
            }
        }
        Ok(None)
    }
}

/// A stream inheriting from itself would only ever see its own rows again: a client's mistake.
fn not_own_parent(
    key: &StreamKey,
    parents: Option<&[chorus_types::InheritEntry]>,
) -> Result<(), ServiceError> {
    if parents.unwrap_or_default().iter().any(|p| p.key() == *key) {
        return Err(err(ErrorCode::InvalidArgument, "inheritAccess names the stream itself"));
    }
    Ok(())
}
