//! The packet pool: fixed-size receive buffers in one mapping (2 MiB hugepages where the machine
//! has them reserved, ordinary pages otherwise), so the whole pool can be registered once with
//! the CUDA driver and a GPU kernel can read payloads where they landed.

use super::packet::MAX_PACKET;
use super::reassembly::Slot;
use memmap2::{MmapMut, MmapOptions};

/// Bytes per slot: one datagram, rounded up to a cache-friendly size.
pub const SLOT_BYTES: usize = 2048;
const _: () = assert!(SLOT_BYTES >= MAX_PACKET);
const HUGEPAGE: usize = 2 << 20;

/// Fixed-size receive buffers in one mapping (pinned on the GPU machine), handed out by slot.
pub struct PacketPool {
    map: MmapMut,
    slots: usize,
    free: Vec<Slot>,
    hugepages: bool,
}

impl PacketPool {
    /// A pool of `slots` buffers.
    pub fn new(slots: usize) -> std::io::Result<PacketPool> {
        let len = (slots.max(1) * SLOT_BYTES).div_ceil(HUGEPAGE) * HUGEPAGE;
        let (map, hugepages) = match MmapOptions::new().len(len).huge(Some(21)).map_anon() {
            Ok(map) => (map, true),
            Err(_) => (MmapOptions::new().len(len).map_anon()?, false),
        };
        let free = (0..slots as Slot).rev().collect();
        Ok(PacketPool { map, slots, free, hugepages })
    }

    /// Whether the pool sits on 2 MiB hugepages.
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }

    /// The whole mapping (for registering it with the CUDA driver).
    pub fn memory(&self) -> &[u8] {
        &self.map
    }

    /// Slots not holding a packet.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Slots in all.
    pub fn capacity(&self) -> usize {
        self.slots
    }

    /// A free slot, if any.
    pub fn take(&mut self) -> Option<Slot> {
        self.free.pop()
    }

    /// Returns a slot to the pool.
    pub fn give(&mut self, slot: Slot) {
        debug_assert!((slot as usize) < self.slots && !self.free.contains(&slot));
        self.free.push(slot);
    }

    /// The bytes of a slot.
    pub fn slot(&self, slot: Slot) -> &[u8] {
        let start = slot as usize * SLOT_BYTES;
        &self.map[start..start + SLOT_BYTES]
    }

    /// Mutable buffers of distinct slots, in the order given.
    pub fn buffers_mut(&mut self, slots: &[Slot]) -> Vec<&mut [u8]> {
        let mut seen = vec![false; self.slots];
        for &s in slots {
            assert!(!std::mem::replace(&mut seen[s as usize], true), "slot {s} asked for twice");
        }
        let base = self.map.as_mut_ptr();
        slots
            .iter()
            .map(|&s| {
                // SAFETY: each slot is a distinct, in-bounds SLOT_BYTES range of the mapping (checked
                // above), so the slices do not overlap, and they borrow `self` mutably for their life.
                unsafe { std::slice::from_raw_parts_mut(base.add(s as usize * SLOT_BYTES), SLOT_BYTES) }
            })
            .collect()
    }
}
