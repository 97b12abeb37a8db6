//! JetStream, the pure part: the API's JSON and errors, advisories, message headers, a stream's
//! messages and state machine, consumers, the storage schema and the write journal's format. The actors in
//! `actors/jetstream.rs`, `actors/stream.rs` and `actors/storage.rs` drive it.

pub mod advisory;
pub mod api;
pub mod consumer;
pub mod errors;
pub mod headers;
pub mod journal;
pub mod meta;
pub mod replicated;
pub mod request;
pub mod schema;
pub mod sourcing;
pub mod store;
pub mod stream;

pub use errors::ApiError;
