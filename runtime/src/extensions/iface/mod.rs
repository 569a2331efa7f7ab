//! The host imports an extension may call. Each file implements one WIT interface for
//! [`CallState`](super::CallState): the grant is checked first, then the call is delegated.

pub(crate) mod config;
pub(crate) mod http;
pub mod kv;
pub(crate) mod llm;
pub(crate) mod log;
mod v02;

use super::bindings::xiaozhi::extension::types;
use super::host::CallState;

impl types::Host for CallState {}
