//! Untrusted datastore and archive contents: see lifeboat_core::fuzzing::manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lifeboat_core::fuzzing::manifest(data));
