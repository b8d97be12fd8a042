//! The wire format of an image carried as UDP packets: a 20-byte header, then up to 1 KiB of
//! payload. A 224x224x3 fp32 image (602,112 bytes) travels as 588 packets.

/// Payload bytes per packet (the last packet of an image may carry fewer).
pub const PAYLOAD: usize = 1024;
/// Header bytes at the start of every packet.
pub const HEADER: usize = 20;
/// Largest datagram: header and a full payload.
pub const MAX_PACKET: usize = HEADER + PAYLOAD;
const MAGIC: u16 = 0x4e4d; // "NM"
const VERSION: u8 = 1;
/// Largest image accepted, in bytes (64 MiB): bounds what a forged header can make us hold.
pub const MAX_IMAGE: u32 = 64 << 20;

/// Header fields, little-endian on the wire:
/// magic u16 | version u8 | reserved u8 | image_id u64 | offset u32 | total_len u32.
/// The packet count is implied by `total_len`; the payload length by the datagram length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// The image (request) this packet belongs to.
    pub image_id: u64,
    /// Byte offset of this payload in the image (a multiple of `PAYLOAD`).
    pub offset: u32,
    /// The image's length in bytes.
    pub total_len: u32,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than a header (its length).
    #[error("datagram of {0} bytes is shorter than the {HEADER}-byte header")]
    Short(usize),
    /// Not a NetML packet (its magic).
    #[error("bad magic {0:#06x}")]
    Magic(u16),
    /// A protocol version this build does not speak.
    #[error("unsupported version {0}")]
    Version(u8),
    /// An image length of 0 or above the limit.
    #[error("total_len {0} is 0 or above the {MAX_IMAGE}-byte limit")]
    TotalLen(u32),
    /// An offset that is not a packet boundary of the image.
    #[error("offset {offset} is not a packet boundary inside an image of {total_len} bytes")]
    Offset {
        /// The packet's offset.
        offset: u32,
        /// The image's length.
        total_len: u32,
    },
    /// A payload of the wrong length for its offset.
    #[error("payload of {got} bytes where the packet at offset {offset} carries {expected}")]
    PayloadLen {
        /// The packet's offset.
        offset: u32,
        /// Its payload, bytes.
        got: usize,
        /// What that offset carries, bytes.
        expected: usize,
    },
}

impl PacketHeader {
    /// Packets in an image of `total_len` bytes.
    pub fn packet_count(total_len: u32) -> u32 {
        total_len.div_ceil(PAYLOAD as u32)
    }

    /// This packet's index in its image.
    pub fn index(&self) -> u32 {
        self.offset / PAYLOAD as u32
    }

    /// Payload bytes a packet at `offset` carries.
    fn payload_len(offset: u32, total_len: u32) -> usize {
        (total_len - offset).min(PAYLOAD as u32) as usize
    }

    /// Reads and checks a datagram; returns the header and the payload.
    pub fn parse(datagram: &[u8]) -> Result<(PacketHeader, &[u8]), PacketError> {
        if datagram.len() < HEADER {
            return Err(PacketError::Short(datagram.len()));
        }
        let magic = u16::from_le_bytes([datagram[0], datagram[1]]);
        if magic != MAGIC {
            return Err(PacketError::Magic(magic));
        }
        if datagram[2] != VERSION {
            return Err(PacketError::Version(datagram[2]));
        }
        let header = Self::parse_header_only(datagram);
        if header.total_len == 0 || header.total_len > MAX_IMAGE {
            return Err(PacketError::TotalLen(header.total_len));
        }
        if !header.offset.is_multiple_of(PAYLOAD as u32) || header.offset >= header.total_len {
            return Err(PacketError::Offset { offset: header.offset, total_len: header.total_len });
        }
        let payload = &datagram[HEADER..];
        let expected = Self::payload_len(header.offset, header.total_len);
        if payload.len() != expected {
            return Err(PacketError::PayloadLen { offset: header.offset, got: payload.len(), expected });
        }
        Ok((header, payload))
    }

    /// The header of a datagram already checked by `parse` (e.g. one kept in the pool).
    pub fn parse_header_only(datagram: &[u8]) -> PacketHeader {
        let u32_at = |i: usize| u32::from_le_bytes(datagram[i..i + 4].try_into().expect("4 bytes"));
        PacketHeader {
            image_id: u64::from_le_bytes(datagram[4..12].try_into().expect("8 bytes")),
            offset: u32_at(12),
            total_len: u32_at(16),
        }
    }

    /// Writes the header into the first `HEADER` bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        out[2] = VERSION;
        out[3] = 0;
        out[4..12].copy_from_slice(&self.image_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.total_len.to_le_bytes());
    }
}

/// Splits `image` into datagrams, in order.
pub fn packetize(image_id: u64, image: &[u8]) -> Vec<Vec<u8>> {
    let total_len = u32::try_from(image.len()).expect("image under 4 GiB");
    image
        .chunks(PAYLOAD)
        .enumerate()
        .map(|(i, chunk)| {
            let mut datagram = vec![0u8; HEADER + chunk.len()];
            PacketHeader { image_id, offset: (i * PAYLOAD) as u32, total_len }.write(&mut datagram);
            datagram[HEADER..].copy_from_slice(chunk);
            datagram
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_224x224x3_fp32_image_is_588_packets() {
        let image = vec![7u8; 224 * 224 * 3 * 4];
        let packets = packetize(9, &image);
        assert_eq!(packets.len(), 588);
        let (last, payload) = PacketHeader::parse(packets.last().unwrap()).unwrap();
        assert_eq!((last.index(), payload.len()), (587, 602_112 - 587 * 1024));
    }

    #[test]
    fn malformed_datagrams_say_what_is_wrong() {
        let good = packetize(1, &[1u8; 3000]);
        assert_eq!(PacketHeader::parse(&good[0][..5]), Err(PacketError::Short(5)));
        let mut bad = good[1].clone();
        bad[12] = 1; // offset 1025
        assert!(matches!(PacketHeader::parse(&bad), Err(PacketError::Offset { .. })));
        assert!(matches!(PacketHeader::parse(&good[2][..good[2].len() - 1]), Err(PacketError::PayloadLen { .. })));
        let mut magic = good[0].clone();
        magic[0] = 0;
        assert!(matches!(PacketHeader::parse(&magic), Err(PacketError::Magic(_))));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..2100)) {
            let _ = PacketHeader::parse(&bytes);
        }

        #[test]
        fn headers_round_trip(image_id in any::<u64>(), len in 1usize..20_000) {
            let image: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut rebuilt = vec![0u8; len];
            for datagram in packetize(image_id, &image) {
                let (h, payload) = PacketHeader::parse(&datagram).unwrap();
                prop_assert_eq!(h.image_id, image_id);
                prop_assert_eq!(h.total_len as usize, len);
                rebuilt[h.offset as usize..h.offset as usize + payload.len()].copy_from_slice(payload);
            }
            prop_assert_eq!(rebuilt, image);
        }
    }
}
