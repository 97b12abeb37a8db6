//! The actors: who does the work. Each file is one actor kind (or the runtime seam
//! they share), driving the pure code of the library with sockets, timers and
//! mailboxes. Who may wait on whom is written down in `actors/README.md`.

pub mod bench;
pub mod client;
pub mod cluster;
pub mod jetstream;
pub mod listener;
pub mod mailbox;
pub mod mesh;
pub mod monitor;
pub mod node;
pub mod outbound;
pub mod publish;
pub mod readbuf;
pub mod route;
pub mod router;
pub mod runtime;
pub mod signals;
pub mod storage;
pub mod stream;
pub mod websocket;
