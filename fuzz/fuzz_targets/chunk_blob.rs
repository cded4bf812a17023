//! Chunk blobs, as uploaded by agents, stored in datastores and archives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_proto::{chunk, ChunkDigest};

fuzz_target!(|data: &[u8]| {
    if let Ok(plain) = chunk::decode(data) {
        let digest = ChunkDigest::of(&plain);
        assert!(chunk::decode_verified(data, &digest).is_ok());
    }
});
