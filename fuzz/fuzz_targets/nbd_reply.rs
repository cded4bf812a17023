//! What a hostile NBD server says to the agent's NBD client.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lifeboat_agent::fuzzing::nbd_replies(data));
