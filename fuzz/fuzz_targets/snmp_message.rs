//! SNMP messages (v1, v2c, v3) as the agent decodes them off UDP.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lifeboat::fuzzing::snmp_message(data));
