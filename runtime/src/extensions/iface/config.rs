//! `xiaozhi:extension/config`: the operator's settings for this extension, only the keys its
//! manifest declares (and the grant sets).

use super::super::bindings::xiaozhi::extension::config::Host;
use super::super::host::CallState;

impl Host for CallState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.grant.config.get(&key).cloned()
    }
}
