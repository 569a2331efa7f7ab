//! Pure codecs for everything that crosses the device socket: typed JSON messages in both
//! directions ([`message`]), binary audio frames of protocol versions 1, 2 and 3 ([`frame`]), the
//! MCP JSON-RPC envelope ([`mcp`]), and the MQTT + UDP transport's device identity ([`mqtt`]) and
//! encrypted audio packets ([`udp`]). Nothing here does I/O, so all of it is unit-tested and fuzzed.

pub mod frame;
pub mod mcp;
pub mod message;
pub mod mqtt;
pub mod udp;
