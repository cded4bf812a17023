//! The controller's adapters: HTTPS ([`http`]), the REST API ([`api`]), the
//! web console ([`web`]), XML-RPC ([`xmlrpc`]), SNMP ([`snmp`]) and the
//! offline CLI ([`cli`]). Everything they do
//! goes through `lifeboat_core::ops`; the store and domain modules are
//! private to that crate. `main.rs` is the `lifeboat` binary over them; a
//! library as well so the fuzz targets (`fuzz/`) reach request parsing.

pub mod api;
pub mod cli;
pub mod http;
pub mod reports;
pub mod snmp;
pub mod web;
pub mod xmlrpc;

/// Entry points for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::fuzz_request as http_request;
    pub use crate::xmlrpc::fuzz_call as xmlrpc_call;

    /// An SNMP message as the agent decodes it off the wire, before any
    /// community or USM check.
    pub fn snmp_message(bytes: &[u8]) {
        let _ = async_snmp::message::Message::decode(
            bytes::Bytes::copy_from_slice(bytes),
            async_snmp::DecodeConfig::default(),
        );
    }
}
