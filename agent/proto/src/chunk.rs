//! The chunk blob: a 24-byte header (magic, encoding, lengths, payload CRC32)
//! then the raw or zstd payload. Decoding checks sizes before allocating and
//! bounds zstd output to the declared length: a hostile blob costs ≤ 4 MiB.

use std::borrow::Cow;

use crate::digest::ChunkDigest;
use crate::CHUNK_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk blob truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("not a chunk blob (bad magic)")]
    BadMagic,
    #[error("chunk blob header invalid: {0}")]
    BadHeader(String),
    #[error("chunk payload CRC mismatch: stored {stored:08x}, computed {computed:08x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("chunk payload does not decompress to its declared {declared} bytes: {reason}")]
    Decompress { declared: usize, reason: String },
    #[error("chunk data is {len} bytes, over the {CHUNK_SIZE}-byte chunk size")]
    TooLarge { len: usize },
    #[error("chunk data does not match digest {expected} (it hashes to {actual})")]
    DigestMismatch {
        expected: ChunkDigest,
        actual: ChunkDigest,
    },
}

pub type Result<T, E = ChunkError> = std::result::Result<T, E>;

pub const MAGIC: [u8; 8] = *b"LBCHUNK1";
pub const HEADER_SIZE: usize = 24;
pub const ENCODING_RAW: u8 = 0;
pub const ENCODING_ZSTD: u8 = 1;
/// Largest payload a reader accepts. Above zstd's worst-case expansion of a
/// 4 MiB chunk (4 MiB + 16 KiB + a few bytes), so any honest blob fits.
pub const MAX_PAYLOAD: usize = (CHUNK_SIZE + CHUNK_SIZE / 128) as usize;
/// zstd level for new blobs: the fast end, see the throughput target.
const ZSTD_LEVEL: i32 = 1;

/// Builds the blob for one chunk. With `compress`, the payload is zstd unless
/// that would not be smaller (random or already-compressed data), then raw.
pub fn encode(data: &[u8], compress: bool) -> Result<Vec<u8>> {
    let mut blob = Vec::new();
    encode_into(data, compress, &mut blob)?;
    Ok(blob)
}

/// Room a blob of `len` bytes of data may need; a buffer this large never
/// grows in [`encode_into`].
pub fn blob_capacity(len: usize) -> usize {
    HEADER_SIZE + zstd::zstd_safe::compress_bound(len)
}

/// [`encode`] into `blob`, replacing what it held: a caller encoding many
/// chunks reuses one buffer.
pub fn encode_into(data: &[u8], compress: bool, blob: &mut Vec<u8>) -> Result<()> {
    if data.len() as u64 > CHUNK_SIZE {
        return Err(ChunkError::TooLarge { len: data.len() });
    }
    blob.clear();
    blob.reserve(blob_capacity(data.len()));
    blob.resize(HEADER_SIZE, 0);
    let encoding = if compress && compress_after_header(data, blob) {
        ENCODING_ZSTD
    } else {
        blob.truncate(HEADER_SIZE);
        blob.extend_from_slice(data);
        ENCODING_RAW
    };
    let payload = &blob[HEADER_SIZE..];
    let mut header = [0u8; HEADER_SIZE];
    header[..8].copy_from_slice(&MAGIC);
    header[8] = encoding;
    // Both lengths fit in u32: checked against CHUNK_SIZE / MAX_PAYLOAD above.
    header[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
    header[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[20..24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    blob[..HEADER_SIZE].copy_from_slice(&header);
    Ok(())
}

/// Appends `data` zstd-compressed to `blob` (which holds the header so far);
/// false, with `blob` in an unspecified state, if that is not smaller than
/// `data`. Each thread keeps one compression context: making one per chunk
/// costs as much as compressing random data.
fn compress_after_header(data: &[u8], blob: &mut Vec<u8>) -> bool {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|cell| {
        let mut context = cell.borrow_mut();
        if context.is_none() {
            *context = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let Some(compressor) = context.as_mut() else {
            return false;
        };
        let mut out = std::io::Cursor::new(std::mem::take(blob));
        out.set_position(HEADER_SIZE as u64);
        let written = compressor.compress_to_buffer(data, &mut out);
        *blob = out.into_inner();
        matches!(written, Ok(n) if n < data.len())
    })
}

/// Decodes a blob to the chunk's data, validating header, CRC and lengths.
pub fn decode(blob: &[u8]) -> Result<Vec<u8>> {
    decode_borrowed(blob).map(Cow::into_owned)
}

/// [`decode`] without copying a raw payload.
fn decode_borrowed(blob: &[u8]) -> Result<Cow<'_, [u8]>> {
    let header = blob.get(..HEADER_SIZE).ok_or(ChunkError::Truncated {
        need: HEADER_SIZE,
        have: blob.len(),
    })?;
    if header[0..8] != MAGIC {
        return Err(ChunkError::BadMagic);
    }
    let le32 = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let encoding = header[8];
    let declared = le32(12) as usize;
    let payload_len = le32(16) as usize;
    let stored_crc = le32(20);
    let bad = |why: String| Err(ChunkError::BadHeader(why));
    if header[9..12] != [0, 0, 0] {
        return bad("reserved bytes are not zero".into());
    }
    if declared as u64 > CHUNK_SIZE {
        return bad(format!(
            "declares {declared} bytes, over the {CHUNK_SIZE}-byte chunk size"
        ));
    }
    if payload_len > MAX_PAYLOAD {
        return bad(format!(
            "payload of {payload_len} bytes, over the {MAX_PAYLOAD}-byte limit"
        ));
    }
    match encoding {
        ENCODING_RAW if payload_len != declared => {
            return bad(format!(
                "raw payload of {payload_len} bytes declares {declared}"
            ))
        }
        ENCODING_RAW | ENCODING_ZSTD => {}
        other => return bad(format!("unknown encoding {other}")),
    }
    let need = HEADER_SIZE + payload_len;
    if blob.len() < need {
        return Err(ChunkError::Truncated {
            need,
            have: blob.len(),
        });
    }
    if blob.len() > need {
        return bad(format!("{} bytes after the payload", blob.len() - need));
    }
    let payload = &blob[HEADER_SIZE..];
    let computed = crc32fast::hash(payload);
    if computed != stored_crc {
        return Err(ChunkError::CrcMismatch {
            stored: stored_crc,
            computed,
        });
    }
    if encoding == ENCODING_RAW {
        return Ok(Cow::Borrowed(payload));
    }
    // One-shot decompression into a buffer of exactly `declared` bytes: zstd
    // fails with "destination too small" rather than grow it.
    let data = zstd::bulk::decompress(payload, declared).map_err(|e| ChunkError::Decompress {
        declared,
        reason: e.to_string(),
    })?;
    if data.len() != declared {
        return Err(ChunkError::Decompress {
            declared,
            reason: format!("decompressed to {} bytes", data.len()),
        });
    }
    Ok(Cow::Owned(data))
}

/// [`decode`], then checks that the data hashes to `expected`.
pub fn decode_verified(blob: &[u8], expected: &ChunkDigest) -> Result<Vec<u8>> {
    decode_verified_borrowed(blob, expected).map(Cow::into_owned)
}

/// [`decode_verified`] without copying a raw payload out of `blob`.
pub fn decode_verified_borrowed<'a>(
    blob: &'a [u8],
    expected: &ChunkDigest,
) -> Result<Cow<'a, [u8]>> {
    let data = decode_borrowed(blob)?;
    check_digest(&data, expected)?;
    Ok(data)
}

/// Checks that a blob decodes to data hashing to `expected`, without
/// keeping the data: what the controller runs on every upload so no chunk
/// is stored under a wrong name.
pub fn verify(blob: &[u8], expected: &ChunkDigest) -> Result<()> {
    decode_verified_borrowed(blob, expected).map(drop)
}

fn check_digest(data: &[u8], expected: &ChunkDigest) -> Result<()> {
    let actual = ChunkDigest::of(data);
    if actual != *expected {
        return Err(ChunkError::DigestMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with a valid CRC around any header values and payload.
    fn forge(encoding: u8, declared: u32, payload: &[u8]) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&[encoding, 0, 0, 0]);
        blob.extend_from_slice(&declared.to_le_bytes());
        blob.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        blob.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        blob.extend_from_slice(payload);
        blob
    }

    fn random(len: usize) -> Vec<u8> {
        (0..len).map(|_| rand::random::<u8>()).collect()
    }

    #[test]
    fn round_trips_raw_and_zstd() {
        let text = b"lifeboat ".repeat(100_000);
        let full = vec![0xab; CHUNK_SIZE as usize];
        for data in [Vec::new(), b"x".to_vec(), text, random(70_000), full] {
            for compress in [false, true] {
                let blob = encode(&data, compress).unwrap();
                assert_eq!(decode(&blob).unwrap(), data);
                assert_eq!(
                    decode_verified(&blob, &ChunkDigest::of(&data)).unwrap(),
                    data
                );
            }
        }
    }

    #[test]
    fn picks_zstd_only_when_smaller() {
        let text = b"abcd".repeat(50_000);
        let blob = encode(&text, true).unwrap();
        assert_eq!(blob[8], ENCODING_ZSTD);
        assert!(blob.len() < text.len() / 10);
        assert_eq!(encode(&random(10_000), true).unwrap()[8], ENCODING_RAW);
        assert_eq!(encode(&text, false).unwrap()[8], ENCODING_RAW);
    }

    #[test]
    fn refuses_oversized_input() {
        let too_big = vec![0; CHUNK_SIZE as usize + 1];
        assert!(matches!(
            encode(&too_big, true),
            Err(ChunkError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_blob_is_an_error() {
        let blob = encode(&b"hello world".repeat(1000), true).unwrap();
        for len in [0, 7, HEADER_SIZE - 1, HEADER_SIZE, blob.len() - 1] {
            let err = decode(&blob[..len]).unwrap_err();
            assert!(matches!(err, ChunkError::Truncated { .. }), "{len}: {err}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(ChunkError::BadHeader(_))));
    }

    #[test]
    fn flipped_payload_byte_fails_crc() {
        for compress in [false, true] {
            let mut blob = encode(&b"payload".repeat(500), compress).unwrap();
            let last = blob.len() - 1;
            blob[last] ^= 0x01;
            assert!(matches!(decode(&blob), Err(ChunkError::CrcMismatch { .. })));
        }
    }

    #[test]
    fn bad_header_fields_are_errors() {
        let blob = encode(b"data", false).unwrap();
        let mut magic = blob.clone();
        magic[0] = b'X';
        assert!(matches!(decode(&magic), Err(ChunkError::BadMagic)));
        let mut reserved = blob.clone();
        reserved[10] = 1;
        assert!(matches!(decode(&reserved), Err(ChunkError::BadHeader(_))));
        assert!(matches!(
            decode(&forge(7, 4, b"data")),
            Err(ChunkError::BadHeader(_))
        ));
        assert!(matches!(
            decode(&forge(ENCODING_RAW, 5, b"data")),
            Err(ChunkError::BadHeader(_))
        ));
    }

    #[test]
    fn oversized_declarations_are_refused_before_reading_on() {
        // Header alone, claiming more than a chunk: refused from the header.
        let huge = CHUNK_SIZE as u32 + 1;
        let err = decode(&forge(ENCODING_ZSTD, huge, b"")).unwrap_err();
        assert!(matches!(err, ChunkError::BadHeader(_)), "{err}");
        let mut blob = forge(ENCODING_ZSTD, 10, b"");
        blob[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&blob), Err(ChunkError::BadHeader(_))));
    }

    #[test]
    fn zip_bomb_is_bounded_to_declared_length() {
        use std::io::Write;
        let bomb = vec![0u8; 4 * CHUNK_SIZE as usize];
        // A frame that records its content size, and a streamed one that does not.
        let sized = zstd::bulk::compress(&bomb, 1).unwrap();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.write_all(&bomb).unwrap();
        let unsized_frame = enc.finish().unwrap();
        for payload in [sized, unsized_frame] {
            let err = decode(&forge(ENCODING_ZSTD, CHUNK_SIZE as u32, &payload)).unwrap_err();
            assert!(matches!(err, ChunkError::Decompress { .. }), "{err}");
        }
        // Decompressing to less than declared is just as wrong.
        let short = zstd::bulk::compress(&[1u8; 100], 1).unwrap();
        let err = decode(&forge(ENCODING_ZSTD, 200, &short)).unwrap_err();
        assert!(matches!(err, ChunkError::Decompress { .. }), "{err}");
        let garbage = decode(&forge(ENCODING_ZSTD, 200, b"not zstd at all")).unwrap_err();
        assert!(
            matches!(garbage, ChunkError::Decompress { .. }),
            "{garbage}"
        );
    }

    #[test]
    fn wrong_digest_is_refused() {
        let blob = encode(b"the real data", true).unwrap();
        let err = decode_verified(&blob, &ChunkDigest::of(b"other data")).unwrap_err();
        assert!(matches!(err, ChunkError::DigestMismatch { .. }), "{err}");
    }
}
