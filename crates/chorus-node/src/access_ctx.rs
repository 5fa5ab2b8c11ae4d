//! Gathering the inputs of the access calculation for one stream: its record, its rows, the
//! `<type>*` rules of its publisher and of the app, and the same for each `inheritAccess`
//! parent (one generation).
//!
//! Only the stream itself is sure to be on a shard this node leads (the caller runs there).
//! Every other *source* — the rules, the parents, and at create the templates — lives on the
//! shard its own name hashes to, and is read:
//! - from this replica when this node leads that shard, or is a single node: no network, as
//!   before clusters grew past 3 nodes;
//! - else from the node's copy, while in force (`source_cache`);
//! - else from the shard's leader (`Owner.Call` `accessSource`, after a read barrier there),
//!   all missing sources of a round at once.
//!
//! **Fails closed.** A source that cannot be read (no leader within the deadline, the leader
//! unreachable) fails the whole request with `unavailable`. Access is never computed from a
//! partial context: a missing `<type>*` row could deny what it grants, and a missing user row
//! (which overrides downwards) could grant what it denies.
//!
//! Parts read from another shard bound the context's lifetime ([`AccessCtx::expires`], at most
//! [`SOURCE_TTL`] after they were read), since a change there need not apply on this node.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use chorus_api::{Caller, Principal};
use chorus_storage::StorageError;
use chorus_streams::access::{Access, Rows, Who, base_access, inherit};
use chorus_types::{
    AccessRow, InheritEntry, PublisherId, ShardId, StreamKey, StreamName, StreamRecord,
    shard::shard_of,
};

use crate::access_source::{SOURCE_TTL, SourceRows};
use crate::error::ContextError;
use crate::node::Inner;
use crate::source_cache::Fetched;

/// Rounds of reads one load may take: the stream, then its rules and parents, then the
/// parents' rules. One more absorbs a leadership change in between.
const MAX_ROUNDS: usize = 4;

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
}

pub struct AccessCtx {
    pub target: Option<StreamRows>,
    pub parents: Vec<(InheritEntry, StreamRows)>,
    /// When parts read from other shards must be read again. `None`: every part is on the
    /// stream's own shard or on a single node, where the hub's access epoch alone says when
    /// the context is stale.
    pub expires: Option<Instant>,
}

pub fn who(caller: &Caller) -> Who<'_> {
    match &caller.principal {
        Principal::App => Who::App,
        Principal::User { id, roles } => Who::User { id, roles },
    }
}

impl AccessCtx {
    /// The context of `key`, whose shard this node leads (the caller made sure of it).
    pub async fn load(node: &Arc<Inner>, key: &StreamKey) -> Result<AccessCtx, ContextError> {
        let own_shard = shard_of(key, node.shard_count);
        let target = key.clone();
        let (ctx, expires) = settle(node, own_shard, move |pass| assemble(pass, &target)).await?;
        Ok(AccessCtx { expires, ..ctx })
    }

    pub fn stream(&self) -> Option<&StreamRecord> {
        self.target.as_ref().map(|t| &t.stream)
    }

    /// Whether this context may still be used (its epoch aside).
    pub fn in_force(&self, now: Instant) -> bool {
        self.expires.is_none_or(|until| now < until)
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

/// One source, `key`, read for a stream on `own_shard` (a template at create).
pub async fn source(
    node: &Arc<Inner>,
    own_shard: ShardId,
    key: &StreamKey,
) -> Result<SourceRows, ContextError> {
    let wanted = key.clone();
    let (rows, _) = settle(node, own_shard, move |pass| pass.source(&wanted)).await?;
    Ok(rows)
}

/// One pass over the sources with what is at hand; what is not is listed in `missing`.
struct Pass<'a> {
    node: &'a Inner,
    own_shard: ShardId,
    /// Sources read from other nodes during this load.
    fetched: &'a HashMap<StreamKey, Fetched>,
    missing: Vec<StreamKey>,
    expires: Option<Instant>,
}

impl Pass<'_> {
    /// `key`'s rows, or `None` (and `key` listed as missing) when they must be fetched.
    fn source(&mut self, key: &StreamKey) -> Result<Option<SourceRows>, StorageError> {
        let shard = shard_of(key, self.node.shard_count);
        if shard == self.own_shard || self.node.serves_locally(shard) {
            if shard != self.own_shard && self.node.config.cluster.is_some() {
                // Led here now, but this replica may move away and stop hearing of changes.
                self.bound(Instant::now());
            }
            return SourceRows::read_local(&self.node.db, shard, key).map(Some);
        }
        let known = match self.fetched.get(key) {
            Some(f) => Some(f.clone()),
            None => self.node.sources.get(key, self.node.hub.shard_access_epoch(shard)),
        };
        let Some(fetched) = known else {
            if !self.missing.contains(key) {
                self.missing.push(key.clone());
            }
            return Ok(None);
        };
        self.bound(fetched.at);
        Ok(Some((*fetched.rows).clone()))
    }

    fn bound(&mut self, read_at: Instant) {
        let until = read_at + SOURCE_TTL;
        self.expires = Some(self.expires.map_or(until, |e| e.min(until)));
    }

    /// `stream` with its own rows and its type's rules; `None` while a rule is missing.
    fn with_rules(
        &mut self,
        stream: StreamRecord,
        own: Vec<AccessRow>,
    ) -> Result<Option<StreamRows>, StorageError> {
        let rule = StreamName::type_rule_for(&stream.stream_type);
        let publisher_rule = StreamKey::new(stream.publisher_id.clone(), rule.clone());
        let type_publisher = self.source(&publisher_rule)?;
        let type_app = if stream.publisher_id.is_app() {
            Some(SourceRows::default())
        } else {
            self.source(&StreamKey::new(PublisherId::app(), rule))?
        };
        let (Some(type_publisher), Some(type_app)) = (type_publisher, type_app) else {
            return Ok(None);
        };
        Ok(Some(StreamRows {
            stream,
            own,
            type_publisher: type_publisher.rows,
            type_app: type_app.rows,
        }))
    }
}

/// `key`'s context from what is at hand, or `None` when sources are missing.
fn assemble(pass: &mut Pass<'_>, key: &StreamKey) -> Result<Option<AccessCtx>, StorageError> {
    let Some(found) = pass.source(key)? else { return Ok(None) };
    let Some(stream) = found.stream else {
        return Ok(Some(AccessCtx { target: None, parents: Vec::new(), expires: None }));
    };
    let inherited = stream.inherit_access.clone();
    let target = pass.with_rules(stream, found.rows)?;
    let mut parents = Vec::new();
    for entry in inherited {
        let parent_key = entry.key();
        if parent_key == *key {
            continue;
        }
        // A parent that does not exist passes nothing on.
        let Some(found) = pass.source(&parent_key)? else { continue };
        let Some(parent) = found.stream else { continue };
        if let Some(rows) = pass.with_rules(parent, found.rows)? {
            parents.push((entry, rows));
        }
    }
    if !pass.missing.is_empty() {
        return Ok(None);
    }
    Ok(target.map(|t| AccessCtx { target: Some(t), parents, expires: None }))
}

/// Runs `step` on the blocking pool until it has every source it asks for, fetching what is
/// missing between rounds. Returns its result and when the parts from other shards expire.
async fn settle<T, F>(
    node: &Arc<Inner>,
    own_shard: ShardId,
    step: F,
) -> Result<(T, Option<Instant>), ContextError>
where
    T: Send + 'static,
    F: Fn(&mut Pass<'_>) -> Result<Option<T>, StorageError> + Clone + Send + 'static,
{
    let mut fetched = HashMap::new();
    for _ in 0..MAX_ROUNDS {
        let (inner, step) = (node.clone(), step.clone());
        let (outcome, missing, expires, back) = chorus_storage::error::blocking(move || {
            let mut pass = Pass {
                node: &inner,
                own_shard,
                fetched: &fetched,
                missing: Vec::new(),
                expires: None,
            };
            let outcome = step(&mut pass)?;
            let (missing, expires) = (pass.missing, pass.expires);
            Ok((outcome, missing, expires, fetched))
        })
        .await?;
        fetched = back;
        match outcome {
            Some(done) if missing.is_empty() => return Ok((done, expires)),
            _ => fetch(node, missing, &mut fetched).await?,
        }
    }
    Err(ContextError::Unsettled)
}

/// Reads `keys` (all at once) where their shards are led, into `fetched` and the node's cache.
async fn fetch(
    node: &Arc<Inner>,
    keys: Vec<StreamKey>,
    fetched: &mut HashMap<StreamKey, Fetched>,
) -> Result<(), ContextError> {
    let reader = node.remote_sources.get().and_then(Weak::upgrade).ok_or(ContextError::NoRouter)?;
    let caller = Caller::app();
    let reads = keys.into_iter().map(|key| {
        let (reader, caller) = (&reader, &caller);
        async move {
            // Before the read: a change applied here meanwhile makes the answer stale.
            let epoch = node.hub.shard_access_epoch(shard_of(&key, node.shard_count));
            let at = Instant::now();
            let result = reader.access_source(caller, &key).await;
            (key, at, epoch, result)
        }
    });
    for (key, at, epoch, result) in futures_util::future::join_all(reads).await {
        crate::metrics::ACCESS_SOURCE_READS.inc();
        let rows = result.map_err(|e| ContextError::Source { key: key.clone(), error: e.error })?;
        let read = Fetched { at, epoch, rows: Arc::new(rows) };
        node.sources.insert(key.clone(), read.clone());
        fetched.insert(key, read);
    }
    Ok(())
}
