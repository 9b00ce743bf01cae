//! One safetensors file, memory-mapped. Opening parses and validates the header (every offset
//! in bounds, sizes matching dtype × shape, the data ending exactly at the end of the file), so
//! the tensor bytes handed out afterwards are always in range. Decoding them is `decode`'s job.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};

/// Bytes before the JSON header: its length, a little-endian u64.
const LEN_BYTES: usize = 8;

/// A validated, memory-mapped safetensors file.
pub(crate) struct MappedFile {
    mmap: Mmap,
    /// Offset of the data section: the header length prefix plus the header.
    data_start: usize,
    metadata: Metadata,
}

/// One tensor's header entry and its raw little-endian bytes.
pub(crate) struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// Why a file could not be opened as safetensors.
#[derive(Debug)]
pub(crate) enum OpenError {
    Io(io::Error),
    /// The bytes are not a valid safetensors file; the reason, for a message.
    Corrupt(String),
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<MappedFile, OpenError> {
        let file = File::open(path).map_err(OpenError::Io)?;
        // SAFETY: `Mmap::map` is unsafe because the mapping is undefined behaviour to read if
        // another process truncates or rewrites the file while it is mapped. moec maps weight
        // and tensor files read-only and never writes them itself (`write_tensors` writes a new
        // file and renames it over the old one, leaving existing maps intact); a concurrent
        // truncation by someone else is the caveat every mmap-based safetensors loader shares.
        let mmap = unsafe { Mmap::map(&file) }.map_err(OpenError::Io)?;
        let (data_start, metadata) = parse_header(&mmap).map_err(OpenError::Corrupt)?;
        Ok(MappedFile {
            mmap,
            data_start,
            metadata,
        })
    }

    /// Every tensor name in the header, in file order.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    pub fn tensor(&self, name: &str) -> Option<RawTensor<'_>> {
        let info = self.metadata.info(name)?;
        let (start, end) = info.data_offsets;
        Some(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            // In range: `parse_header` checked that the data section covers every offset.
            bytes: &self.mmap[self.data_start + start..self.data_start + end],
        })
    }
}

/// Parses and validates the header; returns the data section's start and the metadata.
/// Mirrors `SafeTensors::read_metadata`, with checked arithmetic throughout so a hostile
/// header is an error rather than an overflow.
fn parse_header(bytes: &[u8]) -> Result<(usize, Metadata), String> {
    let Some(len_bytes) = bytes.first_chunk::<LEN_BYTES>() else {
        return Err(format!(
            "the file has {} bytes, too short for the 8-byte header length",
            bytes.len()
        ));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    let available = bytes.len() - LEN_BYTES;
    let header_end = usize::try_from(header_len)
        .ok()
        .filter(|&n| n <= available)
        .map(|n| n + LEN_BYTES)
        .ok_or_else(|| {
            format!("header length {header_len} runs past the end of the file ({available} bytes follow it)")
        })?;
    // `Metadata`'s deserializer checks that offsets are contiguous and match dtype × shape.
    let metadata: Metadata = serde_json::from_slice(&bytes[LEN_BYTES..header_end])
        .map_err(|e| format!("invalid header: {e}"))?;
    let data_len = bytes.len() - header_end;
    if metadata.data_len() != data_len {
        return Err(format!(
            "the header describes {} bytes of tensor data, but the file holds {data_len}",
            metadata.data_len()
        ));
    }
    Ok((header_end, metadata))
}
