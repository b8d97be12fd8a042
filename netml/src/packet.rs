//! The wire format of a message carried as UDP packets: an 88-byte header, then up to 1 KiB of
//! payload. A request is an image for a model (a 224x224x3 fp32 image, 602,112 bytes, travels
//! as 588 packets); a reply carries its output, top-k classes or error message back the same
//! way, to the address the request came from.

/// Payload bytes per packet (the last packet of a message may carry fewer).
pub const PAYLOAD: usize = 1024;
/// The model name field: a model name is at most 64 bytes (`model_name_problem`), zero-padded.
pub const MODEL_FIELD: usize = 64;
/// Header bytes at the start of every packet. Fixed, so a payload always starts at the same
/// offset of its pool slot (the GPU gather reads it there).
pub const HEADER: usize = 24 + MODEL_FIELD;
/// Largest datagram: header and a full payload.
pub const MAX_PACKET: usize = HEADER + PAYLOAD;
const MAGIC: u16 = 0x4e4d; // "NM"
/// The wire format's version. 2 added the kind, the top-k and the model; 1 (image id, offset
/// and length only) is refused.
pub const VERSION: u8 = 2;
/// Largest message accepted, in bytes (64 MiB): bounds what a forged header can make us hold.
pub const MAX_IMAGE: u32 = 64 << 20;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An input for a model, from a sender.
    Request,
    /// A request's answer: its output tensor, or its top-k as (class u32, score f32) pairs.
    Reply,
    /// A request refused or failed: the payload is the reason, UTF-8.
    Error,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Reply => 1,
            Kind::Error => 2,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        [Kind::Request, Kind::Reply, Kind::Error].into_iter().find(|k| k.code() == code)
    }
}

/// A model's name as carried in the header (1-64 bytes of UTF-8).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ModelName {
    bytes: [u8; MODEL_FIELD],
    len: u8,
}

impl ModelName {
    /// `name`, if it is 1-64 bytes long.
    pub fn new(name: &str) -> Option<ModelName> {
        if name.is_empty() || name.len() > MODEL_FIELD {
            return None;
        }
        let mut bytes = [0u8; MODEL_FIELD];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(ModelName { bytes, len: name.len() as u8 })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("checked UTF-8")
    }
}

impl std::fmt::Debug for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What every packet of one message repeats: its kind, its id, the model, and the top-k asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// Request, reply or error.
    pub kind: Kind,
    /// The request's id, chosen by its sender (a reply carries its request's).
    pub image_id: u64,
    /// A request: 0 for the whole output tensor, else the k best classes of a classifier's
    /// output. A reply repeats it.
    pub top_k: u16,
    /// The model.
    pub model: ModelName,
}

impl Envelope {
    /// A request for the whole output of `model`.
    pub fn request(image_id: u64, model: ModelName) -> Envelope {
        Envelope { kind: Kind::Request, image_id, top_k: 0, model }
    }
}

/// Header fields, little-endian on the wire:
/// magic u16 | version u8 | kind u8 | image_id u64 | offset u32 | total_len u32 | top_k u16 |
/// model_len u8 | reserved u8 | model [u8; 64] (zero-padded).
/// The packet count is implied by `total_len`; the payload length by the datagram length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// The message this packet belongs to.
    pub envelope: Envelope,
    /// Byte offset of this payload in the message (a multiple of `PAYLOAD`).
    pub offset: u32,
    /// The message's length in bytes.
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
    #[error("unsupported version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// A kind code that is none of request, reply, error.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// A model name that is empty, longer than its field, or not UTF-8.
    #[error("model name field is empty, longer than {MODEL_FIELD} bytes or not UTF-8")]
    Model,
    /// A message length of 0 or above the limit.
    #[error("total_len {0} is 0 or above the {MAX_IMAGE}-byte limit")]
    TotalLen(u32),
    /// An offset that is not a packet boundary of the message.
    #[error("offset {offset} is not a packet boundary inside a message of {total_len} bytes")]
    Offset {
        /// The packet's offset.
        offset: u32,
        /// The message's length.
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
    /// Packets in a message of `total_len` bytes.
    pub fn packet_count(total_len: u32) -> u32 {
        total_len.div_ceil(PAYLOAD as u32)
    }

    /// This packet's index in its message.
    pub fn index(&self) -> u32 {
        self.offset / PAYLOAD as u32
    }

    /// Payload bytes a packet at `offset` carries.
    pub fn payload_len(offset: u32, total_len: u32) -> usize {
        (total_len - offset).min(PAYLOAD as u32) as usize
    }

    /// Where the payload of each packet of a message of `total_len` bytes goes, its packets'
    /// `slots` in payload order: (slot, offset in the message, payload bytes).
    pub fn payload_pieces(slots: &[u32], total_len: u32) -> impl Iterator<Item = (u32, usize, usize)> + '_ {
        slots.iter().enumerate().map(move |(i, &slot)| {
            let offset = i * PAYLOAD;
            (slot, offset, PacketHeader::payload_len(offset as u32, total_len))
        })
    }

    /// Reads and checks a datagram; returns the header and the payload.
    pub fn parse(datagram: &[u8]) -> Result<(PacketHeader, &[u8]), PacketError> {
        if datagram.len() < 4 {
            return Err(PacketError::Short(datagram.len()));
        }
        let magic = u16::from_le_bytes([datagram[0], datagram[1]]);
        if magic != MAGIC {
            return Err(PacketError::Magic(magic));
        }
        if datagram[2] != VERSION {
            return Err(PacketError::Version(datagram[2]));
        }
        if datagram.len() < HEADER {
            return Err(PacketError::Short(datagram.len()));
        }
        let kind = Kind::from_code(datagram[3]).ok_or(PacketError::Kind(datagram[3]))?;
        let len = datagram[22] as usize;
        let model = std::str::from_utf8(&datagram[24..24 + len.min(MODEL_FIELD)])
            .ok()
            .and_then(ModelName::new)
            .filter(|_| len <= MODEL_FIELD)
            .ok_or(PacketError::Model)?;
        let u32_at = |i: usize| u32::from_le_bytes(datagram[i..i + 4].try_into().expect("4 bytes"));
        let header = PacketHeader {
            envelope: Envelope {
                kind,
                image_id: u64::from_le_bytes(datagram[4..12].try_into().expect("8 bytes")),
                top_k: u16::from_le_bytes([datagram[20], datagram[21]]),
                model,
            },
            offset: u32_at(12),
            total_len: u32_at(16),
        };
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

    /// Sets the message id of a datagram already written (a sender reusing prepared packets).
    pub fn set_image_id(datagram: &mut [u8], image_id: u64) {
        datagram[4..12].copy_from_slice(&image_id.to_le_bytes());
    }

    /// Writes the header into the first `HEADER` bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        let e = &self.envelope;
        out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        out[2] = VERSION;
        out[3] = e.kind.code();
        Self::set_image_id(out, e.image_id);
        out[12..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.total_len.to_le_bytes());
        out[20..22].copy_from_slice(&e.top_k.to_le_bytes());
        out[22] = e.model.len;
        out[23] = 0;
        out[24..HEADER].copy_from_slice(&e.model.bytes);
    }
}

/// Splits a message (`envelope`, then `payload`, at least one byte) into datagrams, in order.
pub fn packetize(envelope: &Envelope, payload: &[u8]) -> Vec<Vec<u8>> {
    let total_len = u32::try_from(payload.len()).expect("message under 4 GiB");
    payload
        .chunks(PAYLOAD)
        .enumerate()
        .map(|(i, chunk)| {
            let mut datagram = vec![0u8; HEADER + chunk.len()];
            PacketHeader { envelope: *envelope, offset: (i * PAYLOAD) as u32, total_len }.write(&mut datagram);
            datagram[HEADER..].copy_from_slice(chunk);
            datagram
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(image_id: u64) -> Envelope {
        Envelope { kind: Kind::Request, image_id, top_k: 0, model: ModelName::new("resnet50").unwrap() }
    }

    #[test]
    fn a_224x224x3_fp32_image_is_588_packets() {
        let image = vec![7u8; 224 * 224 * 3 * 4];
        let packets = packetize(&request(9), &image);
        assert_eq!(packets.len(), 588);
        let (last, payload) = PacketHeader::parse(packets.last().unwrap()).unwrap();
        assert_eq!((last.index(), payload.len()), (587, 602_112 - 587 * 1024));
    }

    #[test]
    fn malformed_datagrams_say_what_is_wrong() {
        let good = packetize(&request(1), &[1u8; 3000]);
        assert_eq!(PacketHeader::parse(&good[0][..50]), Err(PacketError::Short(50)));
        let mut bad = good[1].clone();
        bad[12] = 1; // offset 1025
        assert!(matches!(PacketHeader::parse(&bad), Err(PacketError::Offset { .. })));
        assert!(matches!(PacketHeader::parse(&good[2][..good[2].len() - 1]), Err(PacketError::PayloadLen { .. })));
        let mut magic = good[0].clone();
        magic[0] = 0;
        assert!(matches!(PacketHeader::parse(&magic), Err(PacketError::Magic(_))));
        let mut old = good[0].clone();
        old[2] = 1;
        assert_eq!(PacketHeader::parse(&old), Err(PacketError::Version(1)));
        let mut kind = good[0].clone();
        kind[3] = 7;
        assert_eq!(PacketHeader::parse(&kind), Err(PacketError::Kind(7)));
        for len in [0u8, 65] {
            let mut model = good[0].clone();
            model[22] = len;
            assert_eq!(PacketHeader::parse(&model), Err(PacketError::Model), "model length {len}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..2100)) {
            let _ = PacketHeader::parse(&bytes);
        }

        #[test]
        fn headers_round_trip(image_id in any::<u64>(), len in 1usize..20_000, top_k in any::<u16>(), name in "[a-z0-9_.-]{1,64}") {
            let image: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut rebuilt = vec![0u8; len];
            let envelope = Envelope { kind: Kind::Reply, image_id, top_k, model: ModelName::new(&name).unwrap() };
            for datagram in packetize(&envelope, &image) {
                let (h, payload) = PacketHeader::parse(&datagram).unwrap();
                prop_assert_eq!(h.envelope, envelope);
                prop_assert_eq!(h.envelope.model.as_str(), name.as_str());
                prop_assert_eq!(h.total_len as usize, len);
                rebuilt[h.offset as usize..h.offset as usize + payload.len()].copy_from_slice(payload);
            }
            prop_assert_eq!(rebuilt, image);
        }
    }
}
