//! The gateway ⇄ driver channel: TLS, length-prefixed JSON frames, a mutual HMAC handshake
//! (docs/driver-protocol.md).

pub mod handshake;
pub mod link;
pub mod protocol;
pub mod secret_key;
pub mod server;

pub use handshake::SessionSecret;
pub use link::{DriverLink, QueueLimits, Transport};
pub use protocol::{FromDriver, ToDriver};
pub use secret_key::SecretKey;
pub use server::{
    DriverRegistry, HandshakeError, LocalListenError, LocalListeners, Peer, Refusal, RpcServer, RpcSettings,
    SessionSocket,
};
