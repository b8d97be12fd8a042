//! A request's input row as an ingress hands it to a backend: bytes already in memory (gRPC, the
//! inference protocol), or the packets it arrived in, still in a packet pool that the model's
//! worker maps too (NetML), for the worker to gather on the GPU.

use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;

/// A pool of fixed-size packet buffers shared with the workers (a file they map): where a
/// `PacketRow`'s payloads are.
pub trait PacketStore: Send + Sync {
    /// How a worker finds the payloads: the pool's file and its layout.
    fn layout(&self) -> &PacketLayout;
    /// CPU-Copy: the payloads of `slots`, in order, into `out` (a row's `len` bytes), for a
    /// worker that does not gather.
    fn gather(&self, slots: &[u32], out: &mut [u8]);
    /// Gives the slots back to the pool (the request is answered, or dropped).
    fn release(&self, slots: &[u32]);
}

/// Where a packet pool is and how its packets are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketLayout {
    /// The file that holds the pool (workers map it).
    pub path: PathBuf,
    /// Bytes per slot (one packet each), the pool's size being a multiple of it.
    pub slot_bytes: usize,
    /// Where a packet's payload starts in its slot (after its header).
    pub header_bytes: usize,
    /// Payload bytes of every packet of a message but the last.
    pub payload_bytes: usize,
}

impl PacketLayout {
    /// Packets a message (a row) of `row_bytes` arrives in.
    pub fn packets(&self, row_bytes: usize) -> usize {
        row_bytes.div_ceil(self.payload_bytes.max(1))
    }

    /// Whether a worker can gather rows of `row_bytes`: the row's area holds its packets' slots
    /// (u32 each) and keeps them 4-byte aligned.
    pub fn gathers(&self, row_bytes: usize) -> bool {
        row_bytes.is_multiple_of(4) && 4 * self.packets(row_bytes) <= row_bytes
    }
}

/// An input row that is still in the packets it arrived in: the slots of its packets in
/// payload order. The slots go back to the pool when the row is dropped (the request answered
/// or dropped), so a worker may read them until then.
pub struct PacketRow {
    store: Arc<dyn PacketStore>,
    slots: Vec<u32>,
    len: usize,
}

impl PacketRow {
    /// A row of `len` bytes in `slots` of `store` (in payload order), which it owns from now on.
    pub fn new(store: Arc<dyn PacketStore>, slots: Vec<u32>, len: usize) -> PacketRow {
        PacketRow { store, slots, len }
    }

    /// The pool the packets are in.
    pub fn store(&self) -> &Arc<dyn PacketStore> {
        &self.store
    }

    /// The packets' slots, in payload order.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }
}

impl Drop for PacketRow {
    fn drop(&mut self) {
        self.store.release(&self.slots);
    }
}

impl std::fmt::Debug for PacketRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketRow").field("packets", &self.slots.len()).field("len", &self.len).finish()
    }
}

/// A request's input row.
#[derive(Debug)]
pub enum RequestInput {
    /// Its bytes.
    Bytes(Bytes),
    /// Its packets, in a pool the worker maps.
    Packets(PacketRow),
}

impl RequestInput {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            RequestInput::Bytes(bytes) => bytes.len(),
            RequestInput::Packets(row) => row.len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the row into `out` (its `len` bytes): a copy, or a CPU gather of its packets.
    pub fn copy_to(&self, out: &mut [u8]) {
        match self {
            RequestInput::Bytes(bytes) => out.copy_from_slice(bytes),
            RequestInput::Packets(row) => row.store.gather(&row.slots, out),
        }
    }
}

impl From<Bytes> for RequestInput {
    fn from(bytes: Bytes) -> RequestInput {
        RequestInput::Bytes(bytes)
    }
}
