//! Requests to the console and API, up to the route tables and the body
//! and form parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lifeboat::fuzzing::http_request(data));
