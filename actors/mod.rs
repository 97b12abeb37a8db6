//! The actors: who does the work. Each file is one actor kind (or a piece they share),
//! driving the pure code of the library with sockets, timers and mailboxes.
//!
//! The modules are in floors: a module uses only those on floors below it (checked by
//! `tests/layers.rs`), and who may wait on whom (`actors/README.md`) follows
//! the same order.
//!
//! 0. `runtime` (the one seam to the async runtime), `mailbox`, `outbound`, `readbuf`
//! 1. `subscription` (what a delivery reaches)
//! 2. `router` (an account's subject index)
//! 3. `context` (config, identity, counters, TLS setup of a node)
//! 4. `publish` (delivering)
//! 5. `storage`, then `raft` (a Raft group's actor and the node's Raft host), then
//!    `stream`, then `jetstream`, then `system` (the system account's services)
//! 6. `websocket`, then `transport` (a client connection's TLS and WebSocket setup),
//!    then `client` and `route`
//! 7. `listener`, `cluster`
//! 8. `mesh`
//! 9. `monitor`
//! 10. `node`, then `signals`, `bench` and `push` (command-line clients)

pub mod runtime;

pub mod mailbox;
pub mod outbound;
pub mod readbuf;

pub mod subscription;

pub mod router;

pub mod context;

pub mod publish;

pub mod storage;

pub mod raft;

pub mod stream;

pub mod jetstream;

pub mod system;

pub mod server_events;

pub mod websocket;

pub mod transport;

pub mod client;
pub mod route;

pub mod cluster;
pub mod listener;

pub mod mesh;

pub mod monitor;

pub mod node;

pub mod bench;
pub mod push;
pub mod signals;
