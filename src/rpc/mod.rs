//! The gateway ⇄ driver channel: TLS, length-prefixed JSON frames, a mutual HMAC handshake
//! (docs/driver-protocol.md).

pub mod handshake;
pub mod protocol;
pub mod server;

pub use handshake::SessionSecret;
pub use protocol::{FromDriver, ToDriver};
pub use server::{DriverLink, DriverRegistry, HandshakeError, Refusal, RpcServer, RpcSettings};
