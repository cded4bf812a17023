//! XML-RPC method calls (`POST /RPC2` bodies), through the checks before
//! dxr, dxr's parser, and the binding of arguments to a REST route.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lifeboat::fuzzing::xmlrpc_call(data));
