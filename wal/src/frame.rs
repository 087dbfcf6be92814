//! On-disk framing. Pure functions over byte slices: no I/O, no clocks.
//!
//! A segment file is a header followed by batches. A batch is what one group commit wrote with
//! one write and one fdatasync: a batch header, then its record frames. Recovery uses the batch
//! as the unit of durability: a batch is either wholly valid or it is not, and damage that is
//! followed by a valid batch cannot be a torn write (the later batch was fsynced after it).
//!
//! ```text
//! segment header (40 bytes, little endian)
//!   0  magic       "KAPSLSEG"
//!   8  version     u32 (1)
//!   12 crc32c      u32 over bytes 0..12 and 16..40
//!   16 segment_id  u64
//!   24 first_lsn   u64
//!   32 nonce       u64 (random per segment)
//! batch header (32 bytes)
//!   0  magic       "KBAT"
//!   4  crc32c      u32 over the segment's nonce and bytes 8..32
//!   8  body_bytes  u32 (record frames that follow)
//!   12 records     u32
//!   16 first_lsn   u64
//!   24 reserved    u64 (zero)
//! record frame (20 bytes + body)
//!   0  body_bytes  u32
//!   4  crc32c      u32 over bytes 8..20 and the body
//!   8  kind        u8
//!   9  reserved    3 bytes (zero)
//!   12 lsn         u64
//!   20 body
//! ```
//!
//! The nonce seeds every batch header checksum of its segment. Recovery decides "torn tail or
//! lost data" by looking for a valid batch after damage; without the nonce, a sender could
//! embed a well-formed batch inside a webhook payload and turn a harmless torn write into a
//! refusal to start.

/// Size of the segment file header.
pub const SEGMENT_HEADER_BYTES: usize = 40;
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 32;
/// Size of a record frame's header, before its body.
pub const RECORD_HEADER_BYTES: usize = 20;

const SEGMENT_MAGIC: [u8; 8] = *b"KAPSLSEG";
const SEGMENT_VERSION: u32 = 1;
const BATCH_MAGIC: [u8; 4] = *b"KBAT";

/// Record kind the log uses for a segment's seal. User kinds are at most
/// [`crate::limits::USER_KIND_MAX`].
pub const KIND_SEAL: u8 = 0xFF;

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment in its directory, from 1.
    pub segment_id: u64,
    /// LSN of the first record written to the segment.
    pub first_lsn: u64,
    /// Random value that seeds the segment's batch header checksums.
    pub nonce: u64,
}

/// A record frame found inside a valid batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// Offset of the frame (its header) in the segment.
    pub offset: usize,
    /// Whole frame length, header included.
    pub length: usize,
    /// Record kind.
    pub kind: u8,
    /// Log sequence number.
    pub lsn: u64,
}

impl FrameRef {
    /// The record body inside `segment`.
    pub fn body<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset + RECORD_HEADER_BYTES..self.offset + self.length]
    }

    /// The whole frame (header and body): the bytes a Merkle leaf hashes.
    pub fn bytes<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset..self.offset + self.length]
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Encodes a segment header.
pub fn encode_segment_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
    bytes[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    bytes[16..24].copy_from_slice(&header.segment_id.to_le_bytes());
    bytes[24..32].copy_from_slice(&header.first_lsn.to_le_bytes());
    bytes[32..40].copy_from_slice(&header.nonce.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..40]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes and checks a segment header; `Err` says what is wrong.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, &'static str> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err("segment header is cut short");
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..40]);
    if crc != read_u32(bytes, 12) {
        return Err("segment header checksum mismatch");
    }
    if read_u32(bytes, 8) != SEGMENT_VERSION {
        return Err("unsupported segment version");
    }
    Ok(SegmentHeader { segment_id: read_u64(bytes, 16), first_lsn: read_u64(bytes, 24), nonce: read_u64(bytes, 32) })
}

/// Appends a record frame to `out`. The caller has checked the kind and size limits.
pub fn encode_record(out: &mut Vec<u8>, kind: u8, lsn: u64, body: &[u8]) {
    debug_assert!(body.len() <= u32::MAX as usize);
    let start = out.len();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reserves room for a batch header at the start of an empty batch buffer.
pub fn begin_batch(out: &mut Vec<u8>) {
    debug_assert!(out.is_empty());
    out.extend_from_slice(&[0u8; BATCH_HEADER_BYTES]);
}

/// Fills in the batch header reserved by [`begin_batch`] once the batch is complete.
pub fn finish_batch(batch: &mut [u8], nonce: u64, records: u32, first_lsn: u64) {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "batch buffer lacks its header");
    let body_bytes = (batch.len() - BATCH_HEADER_BYTES) as u32;
    batch[0..4].copy_from_slice(&BATCH_MAGIC);
    batch[8..12].copy_from_slice(&body_bytes.to_le_bytes());
    batch[12..16].copy_from_slice(&records.to_le_bytes());
    batch[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    batch[24..32].copy_from_slice(&0u64.to_le_bytes());
    let crc = batch_header_crc(nonce, &batch[8..BATCH_HEADER_BYTES]);
    batch[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn batch_header_crc(nonce: u64, fields: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&nonce.to_le_bytes()), fields)
}

/// Why a batch did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchDamage {
    /// The segment ends inside the batch.
    CutShort,
    /// A header or record failed its checks; the message says which.
    Invalid(&'static str),
}

impl BatchDamage {
    /// Human-readable description.
    pub fn describe(self) -> &'static str {
        match self {
            Self::CutShort => "batch cut short by the end of the segment",
            Self::Invalid(reason) => reason,
        }
    }
}

/// A batch that decoded: its frames and the offset just past it.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    /// Record frames in order.
    pub frames: Vec<FrameRef>,
    /// Offset of the byte following the batch.
    pub end: usize,
}

/// Decodes the batch starting at `offset` of `segment`, checking every frame's checksum, the
/// record count, the body length and that LSNs run consecutively from the header's first LSN
/// (a seal frame repeats the previous LSN and is exempt).
pub fn decode_batch(segment: &[u8], nonce: u64, offset: usize) -> Result<Batch, BatchDamage> {
    let Some(header) = segment.get(offset..offset + BATCH_HEADER_BYTES) else {
        return Err(BatchDamage::CutShort);
    };
    if header[0..4] != BATCH_MAGIC {
        return Err(BatchDamage::Invalid("bad batch magic"));
    }
    if batch_header_crc(nonce, &header[8..]) != read_u32(header, 4) {
        return Err(BatchDamage::Invalid("batch header checksum mismatch"));
    }
    let body_bytes = read_u32(header, 8) as usize;
    let records = read_u32(header, 12) as usize;
    let first_lsn = read_u64(header, 16);
    let body_start = offset + BATCH_HEADER_BYTES;
    let end = body_start.checked_add(body_bytes).ok_or(BatchDamage::Invalid("batch length overflows"))?;
    if end > segment.len() {
        return Err(BatchDamage::CutShort);
    }
    if records == 0 || records > body_bytes / RECORD_HEADER_BYTES {
        return Err(BatchDamage::Invalid("batch record count is impossible"));
    }
    let frames = decode_frames(&segment[..end], body_start, records, first_lsn)?;
    Ok(Batch { frames, end })
}

fn decode_frames(
    segment: &[u8],
    mut offset: usize,
    records: usize,
    first_lsn: u64,
) -> Result<Vec<FrameRef>, BatchDamage> {
    let mut frames = Vec::with_capacity(records);
    let mut expected_lsn = first_lsn;
    while offset < segment.len() {
        let frame = decode_frame(segment, offset)?;
        if frame.kind != KIND_SEAL {
            if frame.lsn != expected_lsn {
                return Err(BatchDamage::Invalid("record LSN out of sequence"));
            }
            expected_lsn = expected_lsn.wrapping_add(1);
        }
        offset += frame.length;
        frames.push(frame);
        if frames.len() > records {
            return Err(BatchDamage::Invalid("batch holds more records than its header says"));
        }
    }
    if frames.len() != records {
        return Err(BatchDamage::Invalid("batch holds fewer records than its header says"));
    }
    Ok(frames)
}

/// Decodes one record frame at `offset`; `segment` ends where the frame's batch ends.
pub fn decode_frame(segment: &[u8], offset: usize) -> Result<FrameRef, BatchDamage> {
    let Some(header) = segment.get(offset..offset + RECORD_HEADER_BYTES) else {
        return Err(BatchDamage::Invalid("record header crosses the batch end"));
    };
    let body_bytes = read_u32(header, 0) as usize;
    let length = RECORD_HEADER_BYTES + body_bytes;
    let Some(frame) = segment.get(offset..offset + length) else {
        return Err(BatchDamage::Invalid("record body crosses the batch end"));
    };
    if crc32c::crc32c(&frame[8..]) != read_u32(header, 4) {
        return Err(BatchDamage::Invalid("record checksum mismatch"));
    }
    if header[9..12] != [0, 0, 0] {
        return Err(BatchDamage::Invalid("record reserved bytes are not zero"));
    }
    Ok(FrameRef { offset, length, kind: header[8], lsn: read_u64(header, 12) })
}

/// Looks for any valid batch that starts after `offset`. Recovery calls this on damage: if one
/// exists, the damage is not a torn tail but loss of acknowledged data.
pub fn find_valid_batch_after(segment: &[u8], nonce: u64, offset: usize) -> Option<usize> {
    let mut at = offset + 1;
    while at + BATCH_HEADER_BYTES <= segment.len() {
        let rest = &segment[at..];
        let found = rest.windows(BATCH_MAGIC.len()).position(|window| window == BATCH_MAGIC)?;
        let candidate = at + found;
        if decode_batch(segment, nonce, candidate).is_ok() {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const NONCE: u64 = 0x5EED;

    fn batch_of(records: &[(u8, u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        begin_batch(&mut out);
        for (kind, lsn, body) in records {
            encode_record(&mut out, *kind, *lsn, body);
        }
        finish_batch(&mut out, NONCE, records.len() as u32, records[0].1);
        out
    }

    // A header that round-trips is what lets recovery place a segment in the log.
    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let header = SegmentHeader { segment_id: 7, first_lsn: 1234, nonce: 99 };
        let mut bytes = encode_segment_header(header);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        bytes[20] ^= 1;
        assert!(decode_segment_header(&bytes).is_err());
        assert!(decode_segment_header(&bytes[..10]).is_err());
    }

    // Every record written in a batch must come back with its kind, LSN and body.
    #[test]
    fn batch_round_trips() {
        let batch = batch_of(&[(1, 10, b"alpha"), (2, 11, b""), (3, 12, b"gamma")]);
        let decoded = decode_batch(&batch, NONCE, 0).unwrap();
        assert_eq!(decoded.end, batch.len());
        let bodies: Vec<&[u8]> = decoded.frames.iter().map(|f| f.body(&batch)).collect();
        assert_eq!(bodies, vec![&b"alpha"[..], b"", b"gamma"]);
        assert_eq!(decoded.frames.iter().map(|f| f.lsn).collect::<Vec<_>>(), vec![10, 11, 12]);
    }

    // A single flipped bit anywhere in a batch must be detected, never decoded as valid data.
    #[test]
    fn any_flipped_bit_is_detected() {
        let batch = batch_of(&[(1, 1, b"hello world"), (1, 2, b"second record")]);
        for byte in 0..batch.len() {
            for bit in 0..8 {
                let mut damaged = batch.clone();
                damaged[byte] ^= 1 << bit;
                assert!(decode_batch(&damaged, NONCE, 0).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    // A batch cut anywhere is reported, so recovery can treat it as a torn write.
    #[test]
    fn every_cut_is_detected() {
        let batch = batch_of(&[(1, 1, b"hello world"), (1, 2, b"second record")]);
        for cut in 0..batch.len() {
            assert!(decode_batch(&batch[..cut], NONCE, 0).is_err(), "cut at {cut} went unnoticed");
        }
    }

    // Recovery's torn-tail rule depends on finding a later valid batch behind damage.
    #[test]
    fn finds_valid_batch_behind_damage() {
        let mut log = batch_of(&[(1, 1, b"first")]);
        let second_at = log.len();
        log.extend_from_slice(&batch_of(&[(1, 2, b"second")]));
        log[10] ^= 0xFF;
        assert_eq!(find_valid_batch_after(&log, NONCE, 0), Some(second_at));
        assert_eq!(find_valid_batch_after(&log, NONCE, second_at), None);
    }

    // A batch embedded in a payload must not pass for a real one: it lacks the segment's nonce.
    #[test]
    fn batch_from_another_nonce_is_not_valid() {
        let mut foreign = Vec::new();
        begin_batch(&mut foreign);
        encode_record(&mut foreign, 1, 1, b"crafted");
        finish_batch(&mut foreign, NONCE + 1, 1, 1);
        assert!(decode_batch(&foreign, NONCE, 0).is_err());
    }
}
