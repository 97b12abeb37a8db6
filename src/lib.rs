//! meshbroker: a broker node that speaks the NATS protocol.
//!
//! `src/` holds what the broker knows, free of sockets, tasks and clocks: the protocol,
//! subjects and the subject index, the configuration. `actors/` (the module
//! [`actors`]) drives it with real sockets, timers and mailboxes. Programs that embed a
//! node use [`Node`].

pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod events;
pub mod jetstream;
pub mod mesh;
pub mod monitor;
pub mod proto;
pub mod raft;
pub mod subject;
pub mod subject_index;
pub mod subject_transform;
pub mod tls;
pub mod values;
pub mod websocket;

#[path = "../actors/mod.rs"]
pub mod actors;

pub use actors::node::{Node, NodeError};
pub use config::Config;
