//! The storage actor: the node's one redb database under `jetstream.store_dir`.
//!
//! Every write goes through its writer thread (redb is synchronous and `commit`
//! fsyncs, so it never runs on the async executor). The thread takes everything queued,
//! from every stream, and commits it in one transaction with `Durability::Immediate`
//! (group commit): one fsync covers a whole batch, and batches grow with load because
//! the next one fills while a commit is in flight. Each submitter is told once its
//! writes are durable; a stream acks a publish only then.
//!
//! With `[jetstream] ack = "write"` a journal thread sits in front of the writer: it
//! appends each batch to `jetstream.journal` with one `write()` (no fsync), reports the
//! batch written (streams ack then), and passes it on to the writer, which commits
//! as above and records in the same transaction how far into the journal redb is. On
//! open, whatever the journal holds past that mark is committed first, in either mode.
//!
//! Reads (a message a consumer needs that is no longer cached, the startup load) are
//! short read transactions on the caller's thread.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::config::AckAfter;
pub use crate::jetstream::journal::WriteOp;
use crate::jetstream::journal::{self, Applied, Next};
pub use crate::jetstream::schema::LoadedStream;
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
    #[error("JetStream journal {path}: {reason}")]
    Journal { path: PathBuf, reason: String },
    #[error("JetStream store write failed: {0}")]
    Write(String),
    #[error("the JetStream storage writer has stopped")]
    Stopped,
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Write(e.to_string())
}

/// How far a write batch has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// In the journal (`ack = "write"` only): it survives a crash of the process.
    Written,
    /// In an fsynced redb commit; readable from redb from now on.
    Committed,
}

/// Told of a batch's progress: with `ack = "write"` once `Written` and once
/// `Committed`, else once `Committed`; an error ends it.
pub type Done = Box<dyn FnMut(Result<Progress, Arc<StorageError>>) + Send>;

/// Writes of one stream, applied in order, with who to tell when they are durable.
pub struct WriteBatch {
    pub stream: String,
    pub ops: Vec<WriteOp>,
    pub done: Done,
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
/// `applied` → [`Applied`]: how far into the journal redb is.
const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("journal");
const RAFT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new(schema::RAFT_STATE_TABLE);
const APPLIED: TableDefinition<&str, u64> = TableDefinition::new(schema::APPLIED_TABLE);
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new(schema::SNAPSHOT_TABLE);
/// The journal is emptied (once redb has all of it) when it grows past this.
const JOURNAL_ROTATE_BYTES: u64 = 64 * 1024 * 1024;
/// The journal thread waits when the writer is this many bytes behind it (the
/// batches in between are held in memory, and stream caches must keep them).
const JOURNAL_MAX_LAG: u64 = 2 * 1024 * 1024;
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
    /// Opens (or creates) the store in `dir`, commits what its journal holds past
    /// redb's mark, and starts the writer thread (and the journal thread for
    /// `AckAfter::Write`).
    pub fn open(dir: &Path, ack: AckAfter) -> Result<(Storage, Closed), StorageError> {
        Self::open_with(dir, ack, JOURNAL_ROTATE_BYTES)
    }

    /// [`Storage::open`] with the journal emptied once it passes `rotate_at` bytes.
    fn open_with(
        dir: &Path,
        ack: AckAfter,
        rotate_at: u64,
    ) -> Result<(Storage, Closed), StorageError> {
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
        let journal_path = dir.join("jetstream.journal");
        let replayed = replay_journal(&db, &journal_path)?;
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let spawn_err = |e: std::io::Error| StorageError::Open {
            path: path.clone(),
            reason: format!("cannot start the storage threads: {e}"),
        };
        let writer_db = db.clone();
        match ack {
            AckAfter::Fsync => {
                if replayed.had_file {
                    // Everything it held is in redb now.
                    let _ = std::fs::remove_file(&journal_path);
                }
                std::thread::Builder::new()
                    .name("meshbroker-storage".into())
                    .spawn(move || {
                        writer(writer_db, rx);
                        let _ = closed_tx.send(());
                    })
                    .map_err(spawn_err)?;
            }
            AckAfter::Write => {
                let journal = Journal::create(&journal_path, replayed.next_generation, rotate_at)?;
                let (to_writer, from_journal) = std::sync::mpsc::channel();
                let (to_journal, from_writer) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("meshbroker-storage".into())
                    .spawn(move || {
                        journaled_writer(writer_db, from_journal, to_journal);
                        let _ = closed_tx.send(());
                    })
                    .map_err(spawn_err)?;
                std::thread::Builder::new()
                    .name("meshbroker-journal".into())
                    .spawn(move || journal.run(rx, to_writer, from_writer))
                    .map_err(spawn_err)?;
            }
        }
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

    /// Queues writes; `batch.done` hears of their progress (on a storage thread).
    pub fn submit(&self, batch: WriteBatch) {
        if let Err(std::sync::mpsc::SendError(mut batch)) = self.writes.send(batch) {
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

    /// How far replicated stream `stream` has applied its Raft log (0: never).
    pub fn load_applied(&self, stream: &str) -> Result<u64, StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.damaged(e))?;
        match tx.open_table(APPLIED) {
            Ok(t) => Ok(t
                .get(stream)
                .map_err(|e| self.damaged(e))?
                .map_or(0, |v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.damaged(e)),
        }
    }

    /// Raft log `log`'s owner's last snapshot, still encoded (the owner checks it).
    pub fn load_snapshot(&self, log: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.damaged(e))?;
        match tx.open_table(SNAPSHOT) {
            Ok(t) => Ok(t
                .get(log)
                .map_err(|e| self.damaged(e))?
                .map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.damaged(e)),
        }
    }

    /// Reads a Raft group's log back (node start): its stored state, if any, and its
    /// entries in index order, still encoded (the group checks each one).
    pub fn load_raft_log(&self, log: &str) -> Result<LoadedLog, StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.damaged(e))?;
        let state = match tx.open_table(RAFT_STATE) {
            Ok(t) => t
                .get(log)
                .map_err(|e| self.damaged(e))?
                .map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.damaged(e)),
        };
        let name = schema::msgs_table(log);
        let mut entries = Vec::new();
        match tx.open_table(msgs_def(&name)) {
            Ok(t) => {
                for row in t.iter().map_err(|e| self.damaged(e))? {
                    let (k, v) = row.map_err(|e| self.damaged(e))?;
                    entries.push((k.value(), v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.damaged(e)),
        }
        Ok(LoadedLog { state, entries })
    }
}

impl Storage {
    /// The Raft logs the store holds a state for (node start, and tests).
    pub fn raft_logs(&self) -> Result<Vec<String>, StorageError> {
        let tx = self.db.begin_read().map_err(|e| self.damaged(e))?;
        let t = match tx.open_table(RAFT_STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.damaged(e)),
        };
        let mut logs = Vec::new();
        for row in t.iter().map_err(|e| self.damaged(e))? {
            let (k, _) = row.map_err(|e| self.damaged(e))?;
            logs.push(k.value().to_string());
        }
        Ok(logs)
    }
}

/// A Raft group's log as storage holds it.
pub struct LoadedLog {
    pub state: Option<Vec<u8>>,
    pub entries: Vec<(u64, Vec<u8>)>,
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

/// Write batches taken from the queue for one commit (or one journal write).
#[derive(Default)]
struct Gathered {
    batches: Vec<WriteBatch>,
    bytes: usize,
    ops: usize,
}

impl Gathered {
    fn push(&mut self, b: WriteBatch) {
        self.bytes += b
            .ops
            .iter()
            .map(|op| match op {
                WriteOp::Append { record, .. } => record.len(),
                WriteOp::PutConsumer { record, .. } => record.len(),
                _ => 16,
            })
            .sum::<usize>();
        self.ops += b.ops.len();
        self.batches.push(b);
    }

    /// Takes what is queued, without waiting, until the queue is empty or a commit
    /// is full.
    fn take_queued(&mut self, rx: &std::sync::mpsc::Receiver<WriteBatch>) {
        while self.bytes < MAX_COMMIT_BYTES && self.batches.len() < MAX_COMMIT_BATCHES {
            match rx.try_recv() {
                Ok(b) => self.push(b),
                Err(_) => break,
            }
        }
    }
}

/// The writer thread: group commits until every handle is gone.
fn writer(db: Arc<redb::Database>, rx: std::sync::mpsc::Receiver<WriteBatch>) {
    // Returning drops this thread's database reference; it is the last one once every
    // handle (which also holds the sender) is gone.
    let mut last_ops = 0usize;
    while let Ok(first) = rx.recv() {
        let mut pending = Gathered::default();
        pending.push(first);
        let mut lingered = false;
        loop {
            pending.take_queued(&rx);
            // Under a steady load the acks of the last commit are what brings the next
            // writes: wait a moment for them when this batch is much smaller than the
            // last one, rather than paying a commit for half of it. A lone writer (the
            // last commit was small) never waits.
            if lingered || last_ops < LINGER_MIN_OPS || pending.ops * 2 >= last_ops {
                break;
            }
            lingered = true;
            match rx.recv_timeout(LINGER) {
                Ok(b) => pending.push(b),
                Err(_) => break,
            }
        }
        last_ops = pending.ops;
        let result = commit(&db, &pending.batches, None).map_err(Arc::new);
        if let Err(e) = &result {
            log::error!("{e}");
        }
        for mut b in pending.batches {
            (b.done)(result.clone().map(|()| Progress::Committed));
        }
    }
}

/// What the writer tells the journal thread after each commit: how far into the
/// journal redb now is, or `Err` when a commit failed (the journal keeps those
/// writes for the next start, so it must not be emptied from then on).
type CommittedUpTo = Result<Applied, ()>;

/// The writer thread behind the journal: commits whatever the journal thread has
/// passed on (its acks went out already, so there is nothing to wait for) together
/// with the journal position it reaches.
fn journaled_writer(
    db: Arc<redb::Database>,
    rx: std::sync::mpsc::Receiver<(Gathered, Applied)>,
    to_journal: std::sync::mpsc::Sender<CommittedUpTo>,
) {
    while let Ok((mut pending, mut at)) = rx.recv() {
        while pending.bytes < MAX_COMMIT_BYTES {
            match rx.try_recv() {
                Ok((more, upto)) => {
                    for b in more.batches {
                        pending.push(b);
                    }
                    at = upto;
                }
                Err(_) => break,
            }
        }
        let result = commit(&db, &pending.batches, Some(at)).map_err(Arc::new);
        if let Err(e) = &result {
            log::error!("{e}");
        }
        let _ = to_journal.send(result.as_ref().map(|()| at).map_err(|_| ()));
        for mut b in pending.batches {
            (b.done)(result.clone().map(|()| Progress::Committed));
        }
    }
}

/// Applies `batches` in one transaction (with the journal position they reach, if
/// they came through the journal) and commits it with an fsync.
fn commit(
    db: &redb::Database,
    batches: &[WriteBatch],
    mark: Option<Applied>,
) -> Result<(), StorageError> {
    let tx = db.begin_write().map_err(write_err)?;
    for b in batches {
        apply(&tx, b).map_err(|e| StorageError::Write(format!("stream {}: {e}", b.stream)))?;
    }
    if let Some(mark) = mark {
        let mut t = tx.open_table(JOURNAL).map_err(write_err)?;
        t.insert("applied", mark.to_bytes().as_slice())
            .map_err(write_err)?;
    }
    tx.commit().map_err(write_err)
}

/// The journal file and its writer thread (`ack = "write"`).
struct Journal {
    file: std::fs::File,
    path: PathBuf,
    generation: u64,
    /// Bytes in the file (the offset of the next record).
    written: u64,
    /// Set when a write failed: what follows could not be replayed in order, so
    /// nothing more is written (or acknowledged).
    broken: Option<Arc<StorageError>>,
    /// Emptied (once redb holds it all) when it passes this many bytes.
    rotate_at: u64,
    /// How far redb holds the journal, as the writer last said.
    committed: Applied,
    /// A commit failed: the journal is never emptied again.
    commit_failed: bool,
}

impl Journal {
    /// Starts an empty journal of `generation` at `path`.
    fn create(path: &Path, generation: u64, rotate_at: u64) -> Result<Journal, StorageError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StorageError::Journal {
                path: path.to_path_buf(),
                reason: format!("cannot open it: {e}"),
            })?;
        let mut journal = Journal {
            file,
            path: path.to_path_buf(),
            generation,
            written: 0,
            broken: None,
            rotate_at,
            committed: Applied::default(),
            commit_failed: false,
        };
        journal
            .restart(generation)
            .map_err(|e| StorageError::Journal {
                path: path.to_path_buf(),
                reason: format!("cannot write it: {e}"),
            })?;
        Ok(journal)
    }

    /// Empties the file and starts `generation` in it. Only once redb holds
    /// everything written so far (or at open, after the replay).
    fn restart(&mut self, generation: u64) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(&journal::header(generation))?;
        self.generation = generation;
        self.written = journal::HEADER_LEN;
        Ok(())
    }

    fn position(&self) -> Applied {
        Applied {
            generation: self.generation,
            offset: self.written,
        }
    }

    /// Notes what the writer said.
    fn heard(&mut self, word: CommittedUpTo) {
        match word {
            Ok(at) => self.committed = self.committed.max(at),
            Err(()) => self.commit_failed = true,
        }
    }

    /// Waits until redb holds the journal up to `at`; false if it never will (a
    /// commit failed, or the writer is gone).
    fn wait_for(
        &mut self,
        at: Applied,
        from_writer: &std::sync::mpsc::Receiver<CommittedUpTo>,
    ) -> bool {
        while let Ok(word) = from_writer.try_recv() {
            self.heard(word);
        }
        while self.committed < at && !self.commit_failed {
            match from_writer.recv() {
                Ok(word) => self.heard(word),
                Err(_) => return false,
            }
        }
        !self.commit_failed
    }

    fn run(
        mut self,
        rx: std::sync::mpsc::Receiver<WriteBatch>,
        to_writer: std::sync::mpsc::Sender<(Gathered, Applied)>,
        from_writer: std::sync::mpsc::Receiver<CommittedUpTo>,
    ) {
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut pending = Gathered::default();
            pending.push(first);
            pending.take_queued(&rx);
            buf.clear();
            for b in &pending.batches {
                journal::encode_record(&mut buf, self.generation, &b.stream, &b.ops);
            }
            let written = match &self.broken {
                Some(e) => Err(e.clone()),
                None => self.file.write_all(&buf).map_err(|e| {
                    let e = Arc::new(StorageError::Journal {
                        path: self.path.clone(),
                        reason: format!("write failed: {e}"),
                    });
                    log::error!("{e}");
                    self.broken = Some(e.clone());
                    e
                }),
            };
            if let Err(e) = written {
                for b in pending.batches.iter_mut() {
                    (b.done)(Err(e.clone()));
                }
                continue;
            }
            self.written += buf.len() as u64;
            for b in pending.batches.iter_mut() {
                (b.done)(Ok(Progress::Written));
            }
            let at = self.position();
            if to_writer.send((pending, at)).is_err() {
                return;
            }
            // Held batches are memory, and stream caches keep the messages redb does
            // not have yet: the writer may not fall far behind.
            let behind = Applied {
                generation: self.generation,
                offset: self.written.saturating_sub(JOURNAL_MAX_LAG),
            };
            if !self.wait_for(behind, &from_writer) {
                continue;
            }
            if self.written >= self.rotate_at && self.wait_for(at, &from_writer) {
                if let Err(e) = self.restart(self.generation + 1) {
                    let e = Arc::new(StorageError::Journal {
                        path: self.path.clone(),
                        reason: format!("cannot empty it: {e}"),
                    });
                    log::error!("{e}");
                    self.broken = Some(e);
                }
            }
        }
    }
}

/// What opening found of an earlier journal.
struct Replayed {
    /// Whether a journal file existed.
    had_file: bool,
    /// The generation a new journal must have: past both the file's and redb's mark,
    /// so that replay never mistakes its records for applied ones.
    next_generation: u64,
}

/// Commits whatever the journal at `path` holds past redb's mark.
fn replay_journal(db: &redb::Database, path: &Path) -> Result<Replayed, StorageError> {
    let err = |reason: String| StorageError::Journal {
        path: path.to_path_buf(),
        reason,
    };
    let mark = {
        let tx = db.begin_read().map_err(|e| err(e.to_string()))?;
        match tx.open_table(JOURNAL) {
            Ok(t) => match t.get("applied").map_err(|e| err(e.to_string()))? {
                Some(v) => Applied::from_bytes(v.value())
                    .ok_or_else(|| err("redb's journal mark is not 16 bytes".into()))?,
                None => Applied::default(),
            },
            Err(redb::TableError::TableDoesNotExist(_)) => Applied::default(),
            Err(e) => return Err(err(e.to_string())),
        }
    };
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| err(format!("cannot read it: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Replayed {
                had_file: false,
                next_generation: mark.generation + 1,
            })
        }
        Err(e) => return Err(err(format!("cannot open it: {e}"))),
    }
    if journal::is_unfinished_header(&bytes) {
        // Emptied for a new generation, and stopped before its header was written
        // (or in the middle of it).
        if !bytes.is_empty() {
            log::warn!(
                "{}: an unfinished header ({} bytes) from a crash while the journal was emptied; starting a new generation",
                path.display(),
                bytes.len()
            );
        }
        return Ok(Replayed {
            had_file: true,
            next_generation: mark.generation + 1,
        });
    }
    let generation = journal::read_header(&bytes).map_err(|e| err(e.to_string()))?;
    let replayed = Replayed {
        had_file: true,
        next_generation: generation.max(mark.generation) + 1,
    };
    let Some(mut at) = mark.replay_from(generation) else {
        return Ok(replayed);
    };
    let mut batches = Vec::new();
    loop {
        let rest = bytes.get(at as usize..).unwrap_or_default();
        match journal::next_record(rest, generation)
            .map_err(|e| err(format!("record at byte {at}: {e}")))?
        {
            Next::Record { stream, ops, len } => {
                batches.push(WriteBatch {
                    stream,
                    ops,
                    done: Box::new(|_| {}),
                });
                at += len as u64;
            }
            Next::End => break,
            Next::Torn => {
                log::warn!(
                    "JetStream journal {}: the last {} bytes (from byte {at}) are not a \
                     whole record: a write cut short by a crash, never acknowledged, or \
                     damage; ignored",
                    path.display(),
                    rest.len()
                );
                break;
            }
        }
    }
    if !batches.is_empty() {
        log::info!(
            "JetStream journal {}: committing {} write batches not yet in the store",
            path.display(),
            batches.len()
        );
        commit(
            db,
            &batches,
            Some(Applied {
                generation,
                offset: at,
            }),
        )?;
    }
    Ok(replayed)
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
                let mut applied = tx.open_table(APPLIED).map_err(|x| e(&x))?;
                applied.remove(b.stream.as_str()).map_err(|x| e(&x))?;
                // A Raft group's log goes the same way, with its state.
                let mut state = tx.open_table(RAFT_STATE).map_err(|x| e(&x))?;
                state.remove(b.stream.as_str()).map_err(|x| e(&x))?;
                let mut snapshot = tx.open_table(SNAPSHOT).map_err(|x| e(&x))?;
                snapshot.remove(b.stream.as_str()).map_err(|x| e(&x))?;
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
            WriteOp::RemoveFrom(seq) => {
                open(&mut msgs, tx, &msgs_name)?
                    .retain_in(*seq.., |_, _| false)
                    .map_err(|x| e(&x))?;
            }
            WriteOp::PutRaftState(record) => {
                let mut t = tx.open_table(RAFT_STATE).map_err(|x| e(&x))?;
                t.insert(b.stream.as_str(), record.as_slice())
                    .map_err(|x| e(&x))?;
            }
            WriteOp::PutApplied(index) => {
                let mut t = tx.open_table(APPLIED).map_err(|x| e(&x))?;
                t.insert(b.stream.as_str(), *index).map_err(|x| e(&x))?;
            }
            WriteOp::PutSnapshot(record) => {
                let mut t = tx.open_table(SNAPSHOT).map_err(|x| e(&x))?;
                t.insert(b.stream.as_str(), record.as_slice())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::api::StreamConfig;

    fn scratch(tag: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "meshbroker-storage-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn stream_record(name: &str) -> WriteOp {
        WriteOp::PutStream(Box::new(StreamRecord {
            config: StreamConfig {
                name: name.into(),
                ..StreamConfig::default()
            },
            created: 1,
            last_seq: 0,
            last_ts: 0,
        }))
    }

    fn append(seq: u64, body: &str) -> WriteOp {
        let mut record = Vec::new();
        schema::encode_message(&mut record, seq as i64, None, "s", 0, body.as_bytes());
        WriteOp::Append { seq, record }
    }

    /// Submits `ops` and returns every progress report, waiting for the last.
    fn write(storage: &Storage, ops: Vec<WriteOp>) -> Vec<Progress> {
        let (tx, rx) = std::sync::mpsc::channel();
        storage.submit(WriteBatch {
            stream: "S".into(),
            ops,
            done: Box::new(move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }),
        });
        let mut seen = Vec::new();
        while let Ok(r) = rx.recv_timeout(std::time::Duration::from_secs(10)) {
            let p = r.expect("write succeeds");
            seen.push(p);
            if p == Progress::Committed {
                break;
            }
        }
        seen
    }

    fn close(storage: Storage, closed: Closed) {
        drop(storage);
        closed.wait(std::time::Duration::from_secs(10));
    }

    fn bodies(dir: &Path) -> Vec<(u64, String)> {
        let (storage, closed) = Storage::open(dir, AckAfter::Fsync).expect("open");
        let loaded = storage.load_all().expect("load");
        close(storage, closed);
        loaded
            .iter()
            .flat_map(|s| &s.messages)
            .map(|(seq, m)| (*seq, String::from_utf8_lossy(&m.data).into_owned()))
            .collect()
    }

    #[test]
    fn write_acks_come_before_the_commit_and_both_modes_read_the_result() {
        let dir = scratch("modes");
        let (storage, closed) = Storage::open(&dir, AckAfter::Write).expect("open");
        let progress = write(&storage, vec![stream_record("S"), append(1, "one")]);
        assert_eq!(progress, [Progress::Written, Progress::Committed]);
        write(&storage, vec![append(2, "two")]);
        close(storage, closed);
        assert!(dir.join("jetstream.journal").exists());
        // Opened with fsync acks, the journal is done with and goes.
        assert_eq!(bodies(&dir), [(1, "one".into()), (2, "two".into())]);
        assert!(!dir.join("jetstream.journal").exists());
        let (storage, closed) = Storage::open(&dir, AckAfter::Fsync).expect("open");
        assert_eq!(
            write(&storage, vec![append(3, "three")]),
            [Progress::Committed]
        );
        close(storage, closed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash after the journal write and before the commit leaves records past
    /// redb's mark: the next open commits them, once, and ignores a torn tail.
    #[test]
    fn records_past_the_mark_are_committed_on_open() {
        let dir = scratch("replay");
        let (storage, closed) = Storage::open(&dir, AckAfter::Write).expect("open");
        write(&storage, vec![stream_record("S"), append(1, "one")]);
        close(storage, closed);
        // What a killed node leaves: records of the current generation past the mark
        // (redb's mark is generation 1, so the new file is generation 2 from its
        // start), the last one cut short.
        let path = dir.join("jetstream.journal");
        let mut file = journal::header(2).to_vec();
        journal::encode_record(&mut file, 2, "S", &[append(2, "two")]);
        journal::encode_record(&mut file, 2, "S", &[append(3, "three")]);
        let mut torn = Vec::new();
        journal::encode_record(&mut torn, 2, "S", &[append(4, "four")]);
        file.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(&path, &file).expect("journal");
        let expected: Vec<(u64, String)> =
            vec![(1, "one".into()), (2, "two".into()), (3, "three".into())];
        assert_eq!(bodies(&dir), expected);
        // Nothing is applied twice on the next open, in either mode.
        let (storage, closed) = Storage::open(&dir, AckAfter::Write).expect("open");
        write(&storage, vec![append(4, "four again")]);
        close(storage, closed);
        let mut after = expected.clone();
        after.push((4, "four again".into()));
        assert_eq!(bodies(&dir), after);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Past its size the journal is emptied under a new generation once redb has
    /// everything; nothing is lost or replayed twice across the generations.
    #[test]
    fn the_journal_is_emptied_once_redb_holds_it() {
        let dir = scratch("rotate");
        let path = dir.join("jetstream.journal");
        // The file is read only once the storage is closed: while it runs, the journal
        // thread may be between emptying the file and writing its new header.
        let (storage, closed) = Storage::open_with(&dir, AckAfter::Write, 512).expect("open");
        write(&storage, vec![stream_record("S"), append(1, "m1")]);
        close(storage, closed);
        let first = journal::read_header(&std::fs::read(&path).expect("journal")).expect("hdr");
        let (storage, closed) = Storage::open_with(&dir, AckAfter::Write, 512).expect("reopen");
        for seq in 2..=40 {
            write(&storage, vec![append(seq, &format!("m{seq}"))]);
        }
        close(storage, closed);
        let bytes = std::fs::read(&path).expect("journal");
        let now = journal::read_header(&bytes).expect("header");
        assert!(now > first + 2, "generations {first} -> {now}");
        assert!(bytes.len() < 1024, "journal holds {} bytes", bytes.len());
        let expected: Vec<(u64, String)> = (1..=40).map(|s| (s, format!("m{s}"))).collect();
        assert_eq!(bodies(&dir), expected);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash between emptying the journal and finishing its new header (a prefix of
    /// it, or zeros after an OS crash) leaves a node that starts and keeps its data.
    #[test]
    fn a_journal_cut_inside_its_header_starts_a_new_generation() {
        for cut in [1usize, 7, 8, 15] {
            let dir = scratch(&format!("cut-header-{cut}"));
            let path = dir.join("jetstream.journal");
            let (storage, closed) = Storage::open(&dir, AckAfter::Write).expect("open");
            write(&storage, vec![stream_record("S"), append(1, "kept")]);
            close(storage, closed);
            let header = std::fs::read(&path).expect("journal");
            let generation = journal::read_header(&header).expect("header");
            std::fs::write(&path, &header[..cut]).expect("cut");
            let (storage, closed) = Storage::open(&dir, AckAfter::Write).expect("reopen cut");
            write(&storage, vec![append(2, "after")]);
            close(storage, closed);
            let now = journal::read_header(&std::fs::read(&path).expect("journal")).expect("hdr");
            assert!(
                now > generation,
                "cut at {cut}: generation {generation} -> {now}"
            );
            let expected: Vec<(u64, String)> = vec![(1, "kept".into()), (2, "after".into())];
            assert_eq!(bodies(&dir), expected, "cut at {cut}");
            let _ = std::fs::remove_dir_all(&dir);
        }
        let dir = scratch("zeroed-header");
        let (storage, closed) = Storage::open(&dir, AckAfter::Write).expect("open");
        write(&storage, vec![stream_record("S"), append(1, "kept")]);
        close(storage, closed);
        std::fs::write(dir.join("jetstream.journal"), [0u8; 16]).expect("zero");
        assert_eq!(bodies(&dir), vec![(1, "kept".to_string())]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_foreign_journal_is_refused_by_name() {
        let dir = scratch("foreign");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("jetstream.journal"), b"not a journal at all").expect("w");
        let err = Storage::open(&dir, AckAfter::Write)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("jetstream.journal"), "{err}");
        assert!(err.contains("header"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
