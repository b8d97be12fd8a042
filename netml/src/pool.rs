//! The packet pool: fixed-size receive buffers in one mapping (2 MiB hugepages where the machine
//! has them reserved, ordinary pages otherwise), so the whole pool can be registered once with
//! the CUDA driver and a GPU kernel can read payloads where they landed. `SharedPools` puts the
//! pools of several receive threads in one file that model workers map too, so that a worker
//! gathers a request's payloads onto the GPU from where they landed (serve's NetML ingress).

use super::packet::{HEADER, MAX_PACKET, PacketHeader};
use super::reassembly::Slot;
use memmap2::{Mmap, MmapMut, MmapOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// Slots handed out with a request and given back from another thread (see `SharedPools`).
    returned: Option<Arc<Mutex<Vec<Slot>>>>,
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
        Ok(PacketPool { map, slots, free, hugepages, returned: None })
    }

    /// Takes back the slots given back from other threads since the last call.
    pub fn reclaim(&mut self) {
        if let Some(returned) = &self.returned {
            self.free.append(&mut returned.lock().expect("returned slots"));
        }
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

/// The packet pools of several receive threads in one file (each thread's a range of it), which
/// model workers map too: a complete image's packets can stay where they landed until the worker
/// that serves the request has gathered them (on the GPU, from the page-locked mapping), instead
/// of being copied out on the CPU. Slots are numbered across the file (receiver k's slot s is
/// `k * slots_each + s`); a slot handed out with a request comes back through `release`, from
/// whichever thread answers it, to its receiver's pool.
pub struct SharedPools {
    path: PathBuf,
    file: std::fs::File,
    slots_each: usize,
    /// The whole file, for CPU-Copy of a request whose worker does not gather.
    view: Mmap,
    returned: Vec<Arc<Mutex<Vec<Slot>>>>,
}

impl SharedPools {
    /// Creates `path` (a new file, this user's only) holding `receivers` pools of `slots_each`
    /// slots. The file is removed when this is dropped.
    pub fn create(path: &Path, receivers: usize, slots_each: usize) -> std::io::Result<SharedPools> {
        use std::os::unix::fs::OpenOptionsExt;
        let (receivers, slots_each) = (receivers.max(1), slots_each.max(1));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)?;
        let pools = SharedPools::on(path, file, receivers, slots_each);
        if pools.is_err() {
            let _ = std::fs::remove_file(path);
        }
        pools
    }

    fn on(path: &Path, file: std::fs::File, receivers: usize, slots_each: usize) -> std::io::Result<SharedPools> {
        file.set_len((receivers * slots_each * SLOT_BYTES) as u64)?;
        // SAFETY: the file is this process's own (created above, mode 0600) and never truncated
        // while mapped; workers only read it.
        let view = unsafe { Mmap::map(&file)? };
        let returned = (0..receivers).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        Ok(SharedPools { path: path.to_path_buf(), file, slots_each, view, returned })
    }

    /// The file's path (what workers map).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receiver `k`'s pool: its range of the file, every slot free.
    pub fn pool(&self, k: usize) -> std::io::Result<PacketPool> {
        let returned = self.returned.get(k).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no receiver {k} in the shared pools"))
        })?;
        let len = self.slots_each * SLOT_BYTES;
        // SAFETY: as in `on`; each receiver maps its own range, which no other mapping writes.
        let map = unsafe { MmapOptions::new().offset((k * len) as u64).len(len).map_mut(&self.file)? };
        let free = (0..self.slots_each as Slot).rev().collect();
        Ok(PacketPool { map, slots: self.slots_each, free, hugepages: false, returned: Some(returned.clone()) })
    }

    /// Receiver `k`'s slot `slot`, numbered across the file.
    pub fn global(&self, k: usize, slot: Slot) -> u32 {
        (k * self.slots_each) as u32 + slot
    }

    /// Slots in the file.
    pub fn capacity(&self) -> usize {
        self.returned.len() * self.slots_each
    }

    /// CPU-Copy: the payloads of `slots` (numbered across the file, in payload order) into
    /// `out`, a message of `out.len()` bytes.
    pub fn gather(&self, slots: &[u32], out: &mut [u8]) {
        for (slot, offset, len) in PacketHeader::payload_pieces(slots, out.len() as u32) {
            let start = slot as usize * SLOT_BYTES + HEADER;
            out[offset..offset + len].copy_from_slice(&self.view[start..start + len]);
        }
    }

    /// Gives slots (numbered across the file) back to their receivers' pools.
    pub fn release(&self, slots: &[u32]) {
        for &slot in slots {
            let (k, local) = (slot as usize / self.slots_each, slot as usize % self.slots_each);
            if let Some(returned) = self.returned.get(k) {
                returned.lock().expect("returned slots").push(local as Slot);
            }
        }
    }
}

impl Drop for SharedPools {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
