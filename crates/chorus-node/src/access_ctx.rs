//! Gathering the inputs of the access calculation for one stream: its record, its rows, the
//! `<type>*` rules of its publisher and of the app, and the same for each `inheritAccess`
//! parent (one generation). Read fresh for every actor batch and every read request, so an
//! access change is in force for the next request.

use chorus_api::{Caller, Principal};
use chorus_storage::{Db, StorageError, reads};
use chorus_streams::access::{Access, Rows, Who, base_access, inherit};
use chorus_types::{
    AccessRow, InheritEntry, PublisherId, StreamKey, StreamName, StreamRecord, shard::shard_of,
};

/// A stream and every row that bears on it.
pub struct StreamRows {
    pub stream: StreamRecord,
    pub own: Vec<AccessRow>,
    pub type_publisher: Vec<AccessRow>,
    pub type_app: Vec<AccessRow>,
}

impl StreamRows {
    fn rows(&self) -> Rows<'_> {
        Rows { own: &self.own, type_publisher: &self.type_publisher, type_app: &self.type_app }
    }

    fn load(db: &Db, shards: u16, key: &StreamKey) -> Result<Option<StreamRows>, StorageError> {
        let Some(stream) = reads::stream(db, shard_of(key, shards), key)? else { return Ok(None) };
        let own = reads::access_rows(db, shard_of(key, shards), key)?;
        let rule = StreamName::type_rule_for(&stream.stream_type);
        let rows_of = |publisher: PublisherId| {
            let k = StreamKey::new(publisher, rule.clone());
            reads::access_rows(db, shard_of(&k, shards), &k)
        };
        let type_publisher = rows_of(stream.publisher_id.clone())?;
        let type_app =
            if stream.publisher_id.is_app() { Vec::new() } else { rows_of(PublisherId::app())? };
        Ok(Some(StreamRows { stream, own, type_publisher, type_app }))
    }
}

pub struct AccessCtx {
    pub target: Option<StreamRows>,
    pub parents: Vec<(InheritEntry, StreamRows)>,
}

pub fn who(caller: &Caller) -> Who<'_> {
    match &caller.principal {
        Principal::App => Who::App,
        Principal::User { id, roles } => Who::User { id, roles },
    }
}

impl AccessCtx {
    /// Blocking: run on the blocking pool.
    pub fn load(db: &Db, shards: u16, key: &StreamKey) -> Result<AccessCtx, StorageError> {
        let target = StreamRows::load(db, shards, key)?;
        let mut parents = Vec::new();
        if let Some(t) = &target {
            for entry in &t.stream.inherit_access {
                let pk = entry.key();
                if pk == *key {
                    continue;
                }
                if let Some(rows) = StreamRows::load(db, shards, &pk)? {
                    parents.push((entry.clone(), rows));
                }
            }
        }
        Ok(AccessCtx { target, parents })
    }

    pub fn stream(&self) -> Option<&StreamRecord> {
        self.target.as_ref().map(|t| &t.stream)
    }

    /// The caller's levels on the stream; `None` when it does not exist.
    pub fn access(&self, caller: &Caller) -> Option<Access> {
        let t = self.target.as_ref()?;
        let who = who(caller);
        let own = base_access(who, &t.stream, t.rows());
        let parents: Vec<(InheritEntry, Access)> = self
            .parents
            .iter()
            .map(|(e, p)| (e.clone(), base_access(who, &p.stream, p.rows())))
            .collect();
        Some(inherit(own, &parents))
    }
}
