//! The JetStream actor: one per account. It answers `$JS.API.>` (an internal
//! subscription), owns the registry of the account's streams (names, subjects, and the
//! mailbox of each stream actor), creates and deletes streams, and forwards every
//! request about one stream to that stream's actor.
//!
//! On start it opens the storage actor and restores every stored stream.
//!
//! Who waits on whom: this actor awaits stream actors (info, update, delete) and the
//! storage actor (a new stream's record is durable before the create is answered);
//! neither ever awaits this actor.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::publish::Publisher;
use super::router::{Account, SubChange};
use super::runtime::Spawner;
use super::storage::{Closed, Storage, StorageError, WriteBatch, WriteOp};
use super::stream::{self as stream_actor, now_ns, StreamCmd, StreamHandle, Usage};
use super::subscription::{InternalMsg, InternalSink, Subscription};
use crate::config::JetStreamConfig;
use crate::jetstream::advisory::{Action, Advisory};
use crate::jetstream::api::{self, AccountInfo, ListRequest, StreamConfig, StreamInfo};
use crate::jetstream::errors::ApiError;
use crate::jetstream::headers;
use crate::jetstream::request::{self, ApiRequest};
use crate::jetstream::schema::StreamRecord;
use crate::jetstream::stream::{self, Stream, STREAM_CACHE_BUDGET};
use crate::subject;

/// A started JetStream: when its store is closed, and its usage for monitoring.
pub struct Started {
    /// Tells when the store is closed after the node's runtime stopped.
    pub closed: Closed,
    pub usage: Arc<Usage>,
}

/// Starts JetStream for `account`: opens the store, restores the streams, subscribes
/// to the API. Fails if the store cannot be opened.
pub async fn start(
    config: &JetStreamConfig,
    account: Arc<Account>,
    spawner: Spawner,
    server_name: String,
) -> Result<Started, StorageError> {
    let (storage, closed) = Storage::open(&config.store_dir, config.ack)?;
    let usage = Arc::new(Usage {
        max_memory: config.max_memory.0,
        max_file: config.max_file.0,
        ..Usage::default()
    });
    let now = now_ns();
    let mut streams = BTreeMap::new();
    for loaded in storage.load_all()? {
        let n = loaded.messages.len();
        let stream = Stream::restore(loaded, now);
        log::info!(
            "JetStream: restored stream {} ({n} messages, {} consumers)",
            stream.name(),
            stream.consumers().count()
        );
        let name = stream.name().to_string();
        let handle = stream_actor::spawn(
            stream,
            account.clone(),
            Some(storage.clone()),
            usage.clone(),
            server_name.clone(),
            &spawner,
        );
        streams.insert(name, handle);
    }
    let (tx, rx) = async_channel::unbounded();
    let sub = Arc::new(Subscription::internal(
        "$JS.API.>",
        None,
        InternalSink {
            tag: 0,
            mailbox: tx,
        },
    ));
    account.apply(vec![SubChange::Add(sub.clone())]).await;
    let actor = JetStream {
        account,
        storage,
        usage: usage.clone(),
        streams,
        spawner: spawner.clone(),
        server_name,
        publisher: Publisher::default(),
        limits: config.clone(),
        advisories: Vec::new(),
    };
    log::info!(
        "JetStream enabled, store in {}",
        actor.storage.path().display()
    );
    spawner.spawn_detached(actor.run(rx, sub));
    Ok(Started { closed, usage })
}

struct JetStream {
    account: Arc<Account>,
    storage: Storage,
    usage: Arc<Usage>,
    streams: BTreeMap<String, StreamHandle>,
    spawner: Spawner,
    server_name: String,
    publisher: Publisher,
    limits: JetStreamConfig,
    /// Advisories of the request being handled.
    advisories: Vec<Advisory>,
}

impl JetStream {
    async fn run(mut self, requests: async_channel::Receiver<InternalMsg>, sub: Arc<Subscription>) {
        while let Ok(msg) = requests.recv().await {
            self.request(msg).await;
            self.publisher.flush();
        }
        sub.close();
    }

    fn reply(&mut self, to: &[u8], body: &[u8]) {
        self.publisher.send(&self.account, to, None, None, body);
    }

    /// What a client sees when no server listens: a 503 status naming the subject.
    fn no_responders(&mut self, to: &[u8], subject: &[u8]) {
        let h = headers::no_responders(subject);
        self.publisher.send_status(&self.account, to, None, &h);
    }

    async fn request(&mut self, msg: InternalMsg) {
        let Ok(subject) = std::str::from_utf8(&msg.subject) else {
            return;
        };
        // Unknown or malformed API subjects get no answer at all from the reference
        // (not even no-responders: its subscription covers them).
        let Some(req) = request::parse(subject).filter(|r| *r != ApiRequest::Unknown) else {
            return;
        };
        let Some(reply) = msg.reply.clone() else {
            // The reference ignores API requests without a reply subject.
            return;
        };
        self.usage.api_total.fetch_add(1, Ordering::Relaxed);
        let kind = req.response_type();
        // Kept for the audit (cheap: shared bytes); the request may move on to a
        // stream actor, which then answers and audits it itself.
        let request = msg.clone();
        let result = self.handle(req.clone(), msg).await;
        let body = match result {
            Handled::Done => return,
            Handled::Reply(body) => body,
            Handled::Error(e) => {
                self.usage.api_errors.fetch_add(1, Ordering::Relaxed);
                api::error_response(kind, &e)
            }
            Handled::NoResponders => {
                self.no_responders(&reply, &request.subject);
                return;
            }
        };
        self.reply(&reply, &body);
        let now = now_ns();
        for advisory in std::mem::take(&mut self.advisories) {
            self.publisher.advise(&self.account, &advisory, now);
        }
        stream_actor::audit(
            &mut self.publisher,
            &self.account,
            &self.server_name,
            &request,
            body,
            now,
        );
    }

    /// Notes a stream's advisory, published once the request is answered.
    fn advise(&mut self, stream: &str, action: Action) {
        self.advisories.push(Advisory::Stream {
            stream: stream.to_string(),
            action,
        });
    }

    async fn handle(&mut self, req: ApiRequest, msg: InternalMsg) -> Handled {
        let body = msg.payload().to_vec();
        let kind = req.response_type();
        match &req {
            ApiRequest::AccountInfo => Handled::Reply(api::response(kind, &self.account_info())),
            ApiRequest::StreamCreate(name) => match self.create_stream(name, &body).await {
                Ok(info) => Handled::Reply(api::response(kind, &info)),
                Err(e) => Handled::Error(e),
            },
            ApiRequest::StreamUpdate(name) => match self.update_stream(name, &body).await {
                Ok(info) => Handled::Reply(api::response(kind, &info)),
                Err(e) => Handled::Error(e),
            },
            ApiRequest::StreamDelete(name) => match self.delete_stream(name).await {
                Ok(()) => {
                    Handled::Reply(api::response(kind, &serde_json::json!({"success": true})))
                }
                Err(e) => Handled::Error(e),
            },
            ApiRequest::StreamNames | ApiRequest::StreamList => {
                match api::parse_optional::<ListRequest>(&body) {
                    Ok(r) => Handled::Reply(self.list(&req, &r).await),
                    Err(e) => Handled::Error(e),
                }
            }
            other => {
                let Some(name) = other.stream() else {
                    return Handled::Done;
                };
                match self.streams.get(name) {
                    Some(handle) => {
                        let _ = handle.commands.try_send(StreamCmd::Api(req.clone(), msg));
                        Handled::Done
                    }
                    None => match other {
                        // Nobody would subscribe to these at the reference.
                        ApiRequest::MsgNext(..) | ApiRequest::DirectGet(..) => {
                            Handled::NoResponders
                        }
                        _ => Handled::Error(ApiError::stream_not_found()),
                    },
                }
            }
        }
    }

    fn account_info(&self) -> AccountInfo {
        AccountInfo {
            memory: self.usage.memory.load(Ordering::Relaxed),
            storage: self.usage.storage.load(Ordering::Relaxed),
            reserved_memory: 0,
            reserved_storage: 0,
            streams: self.streams.len() as u64,
            consumers: self.usage.consumers.load(Ordering::Relaxed),
            limits: api::AccountLimits {
                max_memory: api::limit_or_none(self.limits.max_memory.0),
                max_storage: api::limit_or_none(self.limits.max_file.0),
                max_streams: -1,
                max_consumers: -1,
                max_ack_pending: -1,
                memory_max_stream_bytes: -1,
                storage_max_stream_bytes: -1,
                max_bytes_required: false,
            },
            api: api::ApiStats {
                level: api::API_LEVEL,
                total: self.usage.api_total.load(Ordering::Relaxed),
                errors: self.usage.api_errors.load(Ordering::Relaxed),
            },
        }
    }

    fn parse_config(&self, name: &str, body: &[u8]) -> Result<StreamConfig, ApiError> {
        // No body is no name, and so (as at the reference) a name that does not match.
        if body.trim_ascii().is_empty() {
            return Err(ApiError::stream_name_mismatch());
        }
        let mut config: StreamConfig = api::parse_required(body)?;
        if config.name.is_empty() {
            config.name = name.to_string();
        }
        if config.name != name {
            return Err(ApiError::stream_name_mismatch());
        }
        stream::normalize_config(config)
    }

    fn check_overlap(&self, config: &StreamConfig) -> Result<(), ApiError> {
        for (other, handle) in &self.streams {
            if other == &config.name {
                continue;
            }
            for a in &config.subjects {
                for b in &handle.config.subjects {
                    if subject::overlaps(a.as_bytes(), b.as_bytes()) {
                        return Err(ApiError::subjects_overlap());
                    }
                }
            }
        }
        Ok(())
    }

    fn check_limits(&self, config: &StreamConfig) -> Result<(), ApiError> {
        let (limit, used, err) = match config.storage {
            api::Storage::Memory => (
                self.limits.max_memory.0,
                self.usage.memory.load(Ordering::Relaxed),
                ApiError::insufficient_memory(),
            ),
            api::Storage::File => (
                self.limits.max_file.0,
                self.usage.storage.load(Ordering::Relaxed),
                ApiError::insufficient_storage(),
            ),
        };
        if limit > 0
            && (used >= limit || (config.max_bytes > 0 && config.max_bytes as u64 > limit - used))
        {
            return Err(err);
        }
        Ok(())
    }

    async fn create_stream(&mut self, name: &str, body: &[u8]) -> Result<StreamInfo, ApiError> {
        let config = self.parse_config(name, body)?;
        if let Some(existing) = self.streams.get(name) {
            if existing.config != config {
                return Err(ApiError::stream_name_exists());
            }
            // The reference says did_create for an identical re-create too.
            return Ok(self.stream_info(name).await?.for_change(true));
        }
        self.check_overlap(&config)?;
        self.check_limits(&config)?;
        let now = now_ns();
        let stream = Stream::new(config.clone(), now, STREAM_CACHE_BUDGET);
        let file = config.storage == api::Storage::File;
        if file {
            let record = StreamRecord {
                config: config.clone(),
                created: now,
                last_seq: stream.store().last_seq(),
                last_ts: 0,
            };
            self.write(name, vec![WriteOp::PutStream(Box::new(record))])
                .await
                .map_err(|e| ApiError::stream_general(&e))?;
        }
        let handle = stream_actor::spawn(
            stream,
            self.account.clone(),
            file.then(|| self.storage.clone()),
            self.usage.clone(),
            self.server_name.clone(),
            &self.spawner,
        );
        self.streams.insert(name.to_string(), handle);
        log::debug!("JetStream: stream {name} created");
        self.advise(name, Action::Create);
        // Answered once the stream's subscriptions are visible (it answers Info after).
        Ok(self.stream_info(name).await?.for_change(true))
    }

    async fn write(&self, stream: &str, ops: Vec<WriteOp>) -> Result<(), String> {
        let (tx, rx) = async_channel::bounded(1);
        self.storage.submit(WriteBatch {
            stream: stream.to_string(),
            ops,
            done: Box::new(move |r| {
                let _ = tx.try_send(r);
            }),
        });
        // The first word (written, or committed) is the answer; a second is ignored.
        match rx.recv().await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("storage stopped".into()),
        }
    }

    async fn stream_info(&self, name: &str) -> Result<StreamInfo, ApiError> {
        let handle = self
            .streams
            .get(name)
            .ok_or_else(ApiError::stream_not_found)?;
        let (tx, rx) = async_channel::bounded(1);
        handle
            .commands
            .send(StreamCmd::Info(tx))
            .await
            .map_err(|_| ApiError::stream_not_found())?;
        rx.recv().await.map_err(|_| ApiError::stream_not_found())
    }

    async fn update_stream(&mut self, name: &str, body: &[u8]) -> Result<StreamInfo, ApiError> {
        let config = self.parse_config(name, body)?;
        let Some(handle) = self.streams.get(name) else {
            return Err(ApiError::stream_not_found());
        };
        self.check_overlap(&config)?;
        let (tx, rx) = async_channel::bounded(1);
        handle
            .commands
            .send(StreamCmd::Update(Box::new(config.clone()), tx))
            .await
            .map_err(|_| ApiError::stream_not_found())?;
        let info = rx
            .recv()
            .await
            .map_err(|_| ApiError::stream_not_found())??;
        if let Some(h) = self.streams.get_mut(name) {
            h.config = config;
        }
        self.advise(name, Action::Modify);
        Ok(info.for_change(false))
    }

    async fn delete_stream(&mut self, name: &str) -> Result<(), ApiError> {
        let Some(handle) = self.streams.remove(name) else {
            return Err(ApiError::stream_not_found());
        };
        let (tx, rx) = async_channel::bounded(1);
        if handle.commands.send(StreamCmd::Delete(tx)).await.is_err() {
            return Ok(());
        }
        rx.recv()
            .await
            .map_err(|_| ApiError::stream_general("stream stopped"))??;
        self.advise(name, Action::Delete);
        Ok(())
    }

    async fn list(&self, req: &ApiRequest, r: &ListRequest) -> Vec<u8> {
        let kind = req.response_type();
        let filter = r.subject.as_deref().filter(|s| !s.is_empty());
        let names: Vec<&String> = self
            .streams
            .iter()
            .filter(|(_, h)| {
                filter.is_none_or(|f| {
                    h.config
                        .subjects
                        .iter()
                        .any(|s| subject::overlaps(s.as_bytes(), f.as_bytes()))
                })
            })
            .map(|(n, _)| n)
            .collect();
        let total = names.len();
        if matches!(req, ApiRequest::StreamNames) {
            let limit = 1024;
            let page: Vec<&String> = names.into_iter().skip(r.offset).take(limit).collect();
            // The reference sends null, not [], for no names (its LIST sends []).
            let streams = (!page.is_empty()).then_some(page);
            return api::response(
                kind,
                &serde_json::json!({
                    "total": total, "offset": r.offset, "limit": limit, "streams": streams,
                }),
            );
        }
        let limit = 256;
        let mut infos = Vec::new();
        for n in names.into_iter().skip(r.offset).take(limit) {
            if let Ok(info) = self.stream_info(n).await {
                infos.push(info.for_list());
            }
        }
        api::response(
            kind,
            &serde_json::json!({
                "total": total, "offset": r.offset, "limit": limit, "streams": infos,
            }),
        )
    }
}

enum Handled {
    /// Forwarded: the stream actor answers.
    Done,
    Reply(Vec<u8>),
    Error(ApiError),
    NoResponders,
}
