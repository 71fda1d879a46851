//! How values are laid out on disk and on the wire inside seedkv's own frames.
//!
//! Every stored value is `crc32c(payload) ‖ payload` with a bincode payload of fixed-width
//! integers. The checksum turns a torn or flipped byte into an error instead of a silently
//! wrong value, and the decode size limit keeps a corrupt length from allocating gigabytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest payload `decode` accepts: a little over the largest request plus a snapshot frame.
pub const MAX_FRAME_BYTES: u64 = 1 << 30;

/// A stored or received frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame is {0} bytes, too short for its checksum")]
    Truncated(usize),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed payload: {0}")]
    Payload(String),
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
}

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Encodes `value` as a checksummed frame. Nothing bounds the size here: what is encoded is
/// bounded where it is built (requests by `Limits`, log entries by the proposer's
/// `MAX_ENTRY_BYTES`, snapshot chunks by `SNAPSHOT_CHUNK_BYTES`), and a frame over
/// [`MAX_FRAME_BYTES`] is refused by [`decode`] with an error, never a panic.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    use bincode::Options;
    let payload = match options().serialize(value) {
        Ok(payload) => payload,
        // Without a size limit, serializing seedkv's plain data types (no maps with
        // non-scalar keys, no unsized sequences) into a Vec has no failing case.
        Err(err) => unreachable!("encoding an in-memory value failed: {err}"),
    };
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Decodes a frame written by [`encode`], verifying its checksum.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    use bincode::Options;
    let (crc, payload) = frame
        .split_first_chunk::<4>()
        .ok_or(DecodeError::Truncated(frame.len()))?;
    let stored = u32::from_le_bytes(*crc);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    if payload.len() as u64 > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    options()
        .with_limit(MAX_FRAME_BYTES)
        .deserialize(payload)
        .map_err(|err| DecodeError::Payload(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let value = (7u64, b"hello".to_vec(), Some("x".to_string()));
        let frame = encode(&value);
        assert_eq!(decode::<(u64, Vec<u8>, Option<String>)>(&frame), Ok(value));
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x40;
            assert!(decode::<(u64, Vec<u8>, Option<String>)>(&bad).is_err());
        }
        assert_eq!(decode::<u64>(&[1, 2]), Err(DecodeError::Truncated(2)));
    }
}
