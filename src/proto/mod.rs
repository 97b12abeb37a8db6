//! The NATS client protocol: parser, encoders, INFO/CONNECT bodies and wire errors.

pub mod encode;
pub mod errors;
pub mod info;
pub mod parser;
pub mod route;

pub use errors::{ProtoError, WireError};
pub use info::{ConnectOptions, ServerInfo};
pub use parser::{Op, Parsed, Parser};
