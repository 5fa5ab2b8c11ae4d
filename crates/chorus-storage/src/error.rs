//! Errors of the storage layer.

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("corrupt record under {what}: {source}")]
    Corrupt { what: &'static str, source: serde_json::Error },
    #[error("encoding a record: {0}")]
    Encode(serde_json::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the log writer has stopped")]
    WriterStopped,
    #[error("a blocking storage task failed: {0}")]
    Join(String),
    #[error("data dir was created with {stored} shards, config asks for {asked}")]
    ShardCountMismatch { stored: u16, asked: u16 },
    #[error("snapshot file is malformed: {0}")]
    BadSnapshot(&'static str),
    #[error("data dir {0} is in use by another process (a chorus already running on it?)")]
    InUse(String),
}

impl StorageError {
    pub fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> StorageError {
        move |source| StorageError::Corrupt { what, source }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Runs blocking RocksDB work on the blocking pool, so async workers never wait on disk.
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Join(e.to_string()))?
}
