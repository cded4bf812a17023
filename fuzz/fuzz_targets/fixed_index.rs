//! Untrusted datastore and archive contents: see lifeboat_core::fuzzing::fixed_index.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lifeboat_core::fuzzing::fixed_index(data));
