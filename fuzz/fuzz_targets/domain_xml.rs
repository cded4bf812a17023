//! Domain definitions and virsh output: checked before a host is sent a
//! definition (controller), parsed from libvirt (agent).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    lifeboat_core::fuzzing::definition(&text);
    lifeboat_agent::fuzzing::virsh_output(&text);
});
