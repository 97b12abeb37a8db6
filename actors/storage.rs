//! The storage actor: the node's one redb database under `jetstream.store_dir`.
//!
//! Every write goes through its writer thread (redb is synchronous and `commit`
//! fsyncs, so it never runs on the async executor). The thread takes everything queued,
//! from every stream, and commits it in one transaction with `Durability::Immediate`
//! (group commit): one fsync covers a whole batch, and batches grow with load because
//! the next one fills while a commit is in flight. Each submitter is told once its
//! writes are durable; a stream acks a publish only then.
//!
//! Reads (a message a consumer needs that is no longer cached, the startup load) are
//! short read transactions on the caller's thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::jetstream::schema::{
    self, ConsumerRecord, MessageRecord, StreamRecord, MARKER_TABLE, STREAMS_TABLE,
};

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the JetStream store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the JetStream store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "{path} is not a meshbroker JetStream store (format {found:?}, expected {expected:?})"
    )]
    Foreign {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("JetStream store {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("JetStream store write failed: {0}")]
    Write(String),
    #[error("the JetStream storage writer has stopped")]
    Stopped,
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Write(e.to_string())
}

/// One write to apply, on behalf of one stream.
#[derive(Debug)]
pub enum WriteOp {
    PutStream(Box<StreamRecord>),
    DeleteStream,
    Append { seq: u64, record: Vec<u8> },
    Remove(u64),
    RemoveBelow(u64),
    PutConsumer { name: String, record: Vec<u8> },
    DeleteConsumer(String),
}

/// Writes of one stream, applied in order, with who to tell when they are durable.
pub struct WriteBatch {
    pub stream: String,
    pub ops: Vec<WriteOp>,
    pub done: Box<dyn FnOnce(Result<(), Arc<StorageError>>) + Send>,
}

/// A stream as stored: its record, messages and consumers.
pub struct LoadedStream {
    pub record: StreamRecord,
    pub messages: Vec<(u64, MessageRecord)>,
    pub consumers: Vec<ConsumerRecord>,
}

/// Tells when the writer thread has stopped and the database file is closed (after
/// every [`Storage`] handle is gone), so a node can be restarted on the same store.
pub struct Closed(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl Closed {
    pub fn wait(&self, limit: std::time::Duration) {
        if let Ok(rx) = self.0.lock() {
            let _ = rx.recv_timeout(limit);
        }
    }
}

/// The handle streams use. Cloning is cheap.
#[derive(Clone)]
pub struct Storage {
    db: Arc<redb::Database>,
    path: PathBuf,
    writes: std::sync::mpsc::Sender<WriteBatch>,
}

const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new(STREAMS_TABLE);
const MARKER: TableDefinition<&str, &str> = TableDefinition::new(MARKER_TABLE);
/// A group commit takes at most this many bytes of writes before it commits.
const MAX_COMMIT_BYTES: usize = 8 * 1024 * 1024;
const MAX_COMMIT_BATCHES: usize = 4096;
/// A commit at least this big makes the writer wait [`LINGER`] before a much smaller one.
const LINGER_MIN_OPS: usize = 32;
/// How long the writer waits for more writes before a shrunken commit.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);
/// redb's page cache (its default is 1 GiB).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

fn msgs_def(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

fn consumers_def(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl Storage {
    /// Opens (or creates) the store in `dir` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<(Storage, Closed), StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("jetstream.redb");
        let db = redb::Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StorageError::Open {
                path: path.clone(),
                reason: match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => {
                        "it is in use by another process".to_string()
                    }
                    other => other.to_string(),
                },
            })?;
        check_marker(&db, &path)?;
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("meshbroker-storage".into())
            .spawn(move || {
                writer(writer_db, rx);
                let _ = closed_tx.send(());
            })
            .map_err(|e| StorageError::Open {
                path: path.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok((
            Storage {
                db,
                path,
                writes: tx,
            },
            Closed(std::sync::Mutex::new(closed_rx)),
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues writes; `batch.done` runs (on the writer thread) once they are durable.
    pub fn submit(&self, batch: WriteBatch) {
        if let Err(std::sync::mpsc::SendError(batch)) = self.writes.send(batch) {
            (batch.done)(Err(Arc::new(StorageError::Stopped)));
        }
    }

    fn damaged(&self, reason: impl std::fmt::Display) -> StorageError {
        StorageError::Damaged {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Reads every stream with its messages and consumers (node start).
    pub fn load_all(&self) -> Result<Vec<LoadedStream>, StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.damaged(e))?;
        let streams = tx.open_table(STREAMS).map_err(|e| self.damaged(e))?;
        let mut out = Vec::new();
        for row in streams.iter().map_err(|e| self.damaged(e))? {
            let (name, value) = row.map_err(|e| self.damaged(e))?;
            let name = name.value().to_string();
            let record: StreamRecord = serde_json::from_slice(value.value())
                .map_err(|e| self.damaged(format!("stream {name}: {e}")))?;
            let mut messages = Vec::new();
            let table_name = schema::msgs_table(&name);
            match tx.open_table(msgs_def(&table_name)) {
                Ok(t) => {
                    for row in t.iter().map_err(|e| self.damaged(e))? {
                        let (seq, rec) = row.map_err(|e| self.damaged(e))?;
                        let m = schema::decode_message(rec.value()).map_err(|e| {
                            self.damaged(format!("stream {name} message {}: {e}", seq.value()))
                        })?;
                        messages.push((seq.value(), m));
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(self.damaged(e)),
            }
            let mut consumers = Vec::new();
            let table_name = schema::consumers_table(&name);
            match tx.open_table(consumers_def(&table_name)) {
                Ok(t) => {
                    for row in t.iter().map_err(|e| self.damaged(e))? {
                        let (cname, rec) = row.map_err(|e| self.damaged(e))?;
                        let c: ConsumerRecord =
                            serde_json::from_slice(rec.value()).map_err(|e| {
                                self.damaged(format!(
                                    "stream {name} consumer {}: {e}",
                                    cname.value()
                                ))
                            })?;
                        consumers.push(c);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(self.damaged(e)),
            }
            out.push(LoadedStream {
                record,
                messages,
                consumers,
            });
        }
        Ok(out)
    }

    /// Reads one message back (its bytes were evicted from the stream's cache).
    pub fn read_message(
        &self,
        stream: &str,
        seq: u64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.damaged(e))?;
        let name = schema::msgs_table(stream);
        let table = match tx.open_table(msgs_def(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.damaged(e)),
        };
        let Some(rec) = table.get(seq).map_err(|e| self.damaged(e))? else {
            return Ok(None);
        };
        schema::decode_message(rec.value())
            .map(Some)
            .map_err(|e| self.damaged(format!("stream {stream} message {seq}: {e}")))
    }
}

/// A new store gets the format marker; an existing one must carry ours.
fn check_marker(db: &redb::Database, path: &Path) -> Result<(), StorageError> {
    let damaged = |e: &dyn std::fmt::Display| StorageError::Damaged {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let tx = db.begin_write().map_err(|e| damaged(&e))?;
    let has_tables = tx.list_tables().map_err(|e| damaged(&e))?.next().is_some();
    {
        let mut marker = tx.open_table(MARKER).map_err(|e| damaged(&e))?;
        let found = marker
            .get("format")
            .map_err(|e| damaged(&e))?
            .map(|v| v.value().to_string());
        match found {
            Some(f) if f == schema::FORMAT => {}
            Some(f) => {
                return Err(StorageError::Foreign {
                    path: path.to_path_buf(),
                    found: f,
                    expected: schema::FORMAT,
                })
            }
            None if has_tables => {
                return Err(StorageError::Foreign {
                    path: path.to_path_buf(),
                    found: "none".into(),
                    expected: schema::FORMAT,
                })
            }
            None => {
                marker
                    .insert("format", schema::FORMAT)
                    .map_err(|e| damaged(&e))?;
            }
        }
    }
    tx.open_table(STREAMS).map_err(|e| damaged(&e))?;
    tx.commit().map_err(|e| damaged(&e))?;
    Ok(())
}

fn batch_bytes(b: &WriteBatch) -> usize {
    b.ops
        .iter()
        .map(|op| match op {
            WriteOp::Append { record, .. } => record.len(),
            WriteOp::PutConsumer { record, .. } => record.len(),
            _ => 16,
        })
        .sum()
}

/// The writer thread: group commits until every handle is gone.
fn writer(db: Arc<redb::Database>, rx: std::sync::mpsc::Receiver<WriteBatch>) {
    // Returning drops this thread's database reference; it is the last one once every
    // handle (which also holds the sender) is gone.
    let mut pending: Vec<WriteBatch> = Vec::new();
    let mut last_ops = 0usize;
    while let Ok(first) = rx.recv() {
        let mut bytes = batch_bytes(&first);
        let mut ops = first.ops.len();
        pending.push(first);
        let mut lingered = false;
        loop {
            while bytes < MAX_COMMIT_BYTES && pending.len() < MAX_COMMIT_BATCHES {
                match rx.try_recv() {
                    Ok(b) => {
                        bytes += batch_bytes(&b);
                        ops += b.ops.len();
                        pending.push(b);
                    }
                    Err(_) => break,
                }
            }
            // Under a steady load the acks of the last commit are what brings the next
            // writes: wait a moment for them when this batch is much smaller than the
            // last one, rather than paying a commit for half of it. A lone writer (the
            // last commit was small) never waits.
            if lingered || last_ops < LINGER_MIN_OPS || ops * 2 >= last_ops {
                break;
            }
            lingered = true;
            match rx.recv_timeout(LINGER) {
                Ok(b) => {
                    bytes += batch_bytes(&b);
                    ops += b.ops.len();
                    pending.push(b);
                }
                Err(_) => break,
            }
        }
        last_ops = ops;
        let result = commit(&db, &pending).map_err(Arc::new);
        if let Err(e) = &result {
            log::error!("{e}");
        }
        for b in pending.drain(..) {
            (b.done)(result.clone());
        }
    }
}

fn commit(db: &redb::Database, batches: &[WriteBatch]) -> Result<(), StorageError> {
    let tx = db.begin_write().map_err(write_err)?;
    for b in batches {
        apply(&tx, b).map_err(|e| StorageError::Write(format!("stream {}: {e}", b.stream)))?;
    }
    tx.commit().map_err(write_err)
}

fn apply(tx: &redb::WriteTransaction, b: &WriteBatch) -> Result<(), String> {
    let msgs_name = schema::msgs_table(&b.stream);
    let consumers_name = schema::consumers_table(&b.stream);
    let e = |e: &dyn std::fmt::Display| e.to_string();
    // Tables stay open across a batch's ops: opening one per message cost more than
    // the insert itself. Stream records and deletion close them first (a table cannot
    // be deleted, or opened twice, while open).
    let mut msgs: Option<redb::Table<u64, &[u8]>> = None;
    let mut consumers: Option<redb::Table<&str, &[u8]>> = None;
    // Appends are gathered into runs and written through a cursor at the table's end.
    let mut appends: Vec<(u64, &[u8])> = Vec::new();
    for op in &b.ops {
        if let WriteOp::Append { seq, record } = op {
            appends.push((*seq, record.as_slice()));
            continue;
        }
        if !appends.is_empty() {
            append_run(open(&mut msgs, tx, &msgs_name)?, &mut appends)?;
        }
        match op {
            WriteOp::Append { .. } => {}
            WriteOp::PutStream(record) => {
                let json = serde_json::to_vec(record).map_err(|x| e(&x))?;
                let mut t = tx.open_table(STREAMS).map_err(|x| e(&x))?;
                t.insert(b.stream.as_str(), json.as_slice())
                    .map_err(|x| e(&x))?;
            }
            WriteOp::DeleteStream => {
                msgs = None;
                consumers = None;
                let mut t = tx.open_table(STREAMS).map_err(|x| e(&x))?;
                t.remove(b.stream.as_str()).map_err(|x| e(&x))?;
                drop(t);
                tx.delete_table(msgs_def(&msgs_name)).map_err(|x| e(&x))?;
                tx.delete_table(consumers_def(&consumers_name))
                    .map_err(|x| e(&x))?;
            }
            WriteOp::Remove(seq) => {
                open(&mut msgs, tx, &msgs_name)?
                    .remove(*seq)
                    .map_err(|x| e(&x))?;
            }
            WriteOp::RemoveBelow(seq) => {
                open(&mut msgs, tx, &msgs_name)?
                    .retain_in(..*seq, |_, _| false)
                    .map_err(|x| e(&x))?;
            }
            WriteOp::PutConsumer { name, record } => {
                open(&mut consumers, tx, &consumers_name)?
                    .insert(name.as_str(), record.as_slice())
                    .map_err(|x| e(&x))?;
            }
            WriteOp::DeleteConsumer(name) => {
                open(&mut consumers, tx, &consumers_name)?
                    .remove(name.as_str())
                    .map_err(|x| e(&x))?;
            }
        }
    }
    if !appends.is_empty() {
        append_run(open(&mut msgs, tx, &msgs_name)?, &mut appends)?;
    }
    Ok(())
}

/// The table named `name`, opened in `tx` on first use and kept in `slot`.
fn open<'s, 'tx, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<redb::Table<'tx, K, V>>,
    tx: &'tx redb::WriteTransaction,
    name: &str,
) -> Result<&'s mut redb::Table<'tx, K, V>, String> {
    match slot {
        Some(t) => Ok(t),
        None => Ok(slot.insert(
            tx.open_table(TableDefinition::<K, V>::new(name))
                .map_err(|x| x.to_string())?,
        )),
    }
}

/// Writes a run of appended messages (ascending sequences, normally past the table's
/// last key) through a cursor at the end of the table, which is much cheaper than one
/// B-tree descent per message; a sequence that does not sort after the table's end
/// (a restore rewriting history) goes through the ordinary insert.
fn append_run(
    t: &mut redb::Table<'_, u64, &'static [u8]>,
    run: &mut Vec<(u64, &[u8])>,
) -> Result<(), String> {
    if run.is_empty() {
        return Ok(());
    }
    let mut written = 0;
    {
        let mut cursor = t
            .upper_bound_mut(std::ops::Bound::<u64>::Unbounded)
            .map_err(|x| x.to_string())?;
        for (seq, record) in run.iter() {
            match cursor.insert_before(*seq, *record) {
                Ok(()) => written += 1,
                Err(redb::CursorError::UnorderedKey) => break,
                Err(x) => return Err(x.to_string()),
            }
        }
        cursor.close().map_err(|x| x.to_string())?;
    }
    for (seq, record) in &run[written..] {
        t.insert(*seq, *record).map_err(|x| x.to_string())?;
    }
    run.clear();
    Ok(())
}
