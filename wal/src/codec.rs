//! rkyv encoding of record bodies. Bodies read back from disk are validated (bytecheck) before
//! any field is used: a checksum proves the bytes are the ones written, not that a newer or
//! buggy writer wrote a well-formed archive.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::Error as RancorError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::WalError;

/// Serialises a value into bytes for [`crate::Wal::append`].
pub fn encode<T>(value: &T) -> Result<AlignedVec, WalError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, RancorError>>,
{
    rkyv::to_bytes::<RancorError>(value).map_err(|error| WalError::Decode(error.to_string()))
}

/// Validates and deserialises a record body. The body is copied into an aligned buffer first:
/// records sit at arbitrary offsets in a segment, and rkyv reads fields in place.
pub fn decode<T>(body: &[u8]) -> Result<T, WalError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, RancorError>> + Deserialize<T, HighDeserializer<RancorError>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, RancorError>(&aligned).map_err(|error| WalError::Decode(error.to_string()))
}
