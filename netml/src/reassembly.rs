//! Per-message reassembly of packets that arrive lost, reordered or duplicated. Packets stay where
//! they were received (a slot of the packet pool); reassembly only tracks which slot holds which
//! part, so a complete image is a list of slots in order, ready for a gather. A message is known
//! by its sender's address and its id (two senders may pick the same ids).

use super::packet::{Envelope, PacketHeader};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

/// Completed image ids remembered, so late duplicates of them are recognised.
const REMEMBERED_COMPLETE: usize = 4096;

/// Index of a packet's buffer in the pool.
pub type Slot = u32;

/// A message's key: where it came from, and its id.
type Key = (SocketAddr, u64);

/// An image (a message) whose every packet has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteImage {
    /// What it is: kind, id, model, top-k.
    pub envelope: Envelope,
    /// Who sent it (where its reply goes).
    pub source: SocketAddr,
    /// Its length in bytes.
    pub total_len: u32,
    /// The slot of packet i at index i.
    pub slots: Vec<Slot>,
    /// When its first packet arrived (the receiver's clock)...
    pub first_seen_ns: u64,
    /// ...and its last.
    pub last_seen_ns: u64,
}

/// What became of one packet. Slots in `Discard` go back to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; the image is not complete yet.
    Pending,
    /// Kept, and it completed this image.
    Complete(CompleteImage),
    /// Not kept: a duplicate, or its header disagrees with the message's first packet.
    Discard(Slot),
}

/// Counters of what reassembly saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Images completed.
    pub completed: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets whose total length, model, kind or top-k disagreed with their message's first
    /// packet.
    pub conflicts: u64,
    /// Images dropped incomplete (timed out, or evicted when too many were open).
    pub expired_images: u64,
    /// Packets freed with images that expired incomplete.
    pub expired_packets: u64,
}

struct Partial {
    envelope: Envelope,
    total_len: u32,
    first_seen_ns: u64,
    slots: Vec<Option<Slot>>,
    received: u32,
}

/// Collects packets into images, keeping each packet in its pool slot.
pub struct Reassembler {
    open: HashMap<Key, Partial>,
    recently_complete: HashSet<Key>,
    complete_order: VecDeque<Key>,
    timeout_ns: u64,
    max_open: usize,
    /// What it has seen.
    pub stats: ReassemblyStats,
}

impl Reassembler {
    /// Images not complete `timeout_ns` after their first packet are dropped; at most `max_open`
    /// images are held at once (the oldest is dropped to make room).
    pub fn new(timeout_ns: u64, max_open: usize) -> Reassembler {
        Reassembler {
            open: HashMap::new(),
            recently_complete: HashSet::new(),
            complete_order: VecDeque::new(),
            timeout_ns,
            max_open: max_open.max(1),
            stats: ReassemblyStats::default(),
        }
    }

    /// Images still incomplete.
    pub fn open_images(&self) -> usize {
        self.open.len()
    }

    /// Takes one parsed packet from `source` held in `slot`, received at `now_ns`. Slots of
    /// images dropped to make room are appended to `released`.
    pub fn on_packet(
        &mut self,
        header: PacketHeader,
        source: SocketAddr,
        slot: Slot,
        now_ns: u64,
        released: &mut Vec<Slot>,
    ) -> Outcome {
        let key = (source, header.envelope.image_id);
        if self.recently_complete.contains(&key) {
            self.stats.duplicates += 1;
            return Outcome::Discard(slot);
        }
        if !self.open.contains_key(&key) && self.open.len() >= self.max_open {
            self.evict_oldest(released);
        }
        let partial = self.open.entry(key).or_insert_with(|| Partial {
            envelope: header.envelope,
            total_len: header.total_len,
            first_seen_ns: now_ns,
            slots: vec![None; PacketHeader::packet_count(header.total_len) as usize],
            received: 0,
        });
        if partial.total_len != header.total_len || partial.envelope != header.envelope {
            self.stats.conflicts += 1;
            return Outcome::Discard(slot);
        }
        let entry = &mut partial.slots[header.index() as usize];
        if entry.is_some() {
            self.stats.duplicates += 1;
            return Outcome::Discard(slot);
        }
        *entry = Some(slot);
        partial.received += 1;
        if partial.received as usize != partial.slots.len() {
            return Outcome::Pending;
        }
        let done = self.open.remove(&key).expect("present");
        self.stats.completed += 1;
        if self.complete_order.len() == REMEMBERED_COMPLETE {
            let forgotten = self.complete_order.pop_front().expect("full");
            self.recently_complete.remove(&forgotten);
        }
        self.complete_order.push_back(key);
        self.recently_complete.insert(key);
        Outcome::Complete(CompleteImage {
            envelope: done.envelope,
            source,
            total_len: done.total_len,
            slots: done.slots.into_iter().map(|s| s.expect("all received")).collect(),
            first_seen_ns: done.first_seen_ns,
            last_seen_ns: now_ns,
        })
    }

    /// Drops images older than the timeout; their slots are appended to `released`.
    pub fn expire(&mut self, now_ns: u64, released: &mut Vec<Slot>) {
        let timeout = self.timeout_ns;
        let expired: Vec<Key> = self
            .open
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.first_seen_ns) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for key in expired {
            self.drop_image(key, released);
        }
    }

    /// Drops the image whose first packet came first (counted as expired); its slots are
    /// appended to `released`. False when no image is open.
    pub fn evict_oldest(&mut self, released: &mut Vec<Slot>) -> bool {
        let oldest = self.open.iter().min_by_key(|(_, p)| p.first_seen_ns).map(|(key, _)| *key);
        oldest.inspect(|key| self.drop_image(*key, released)).is_some()
    }

    fn drop_image(&mut self, key: Key, released: &mut Vec<Slot>) {
        if let Some(partial) = self.open.remove(&key) {
            self.stats.expired_images += 1;
            self.stats.expired_packets += u64::from(partial.received);
            released.extend(partial.slots.into_iter().flatten());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Kind, ModelName, packetize};
    use proptest::prelude::*;

    const FROM: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    fn request(image_id: u64) -> Envelope {
        Envelope { kind: Kind::Request, image_id, top_k: 0, model: ModelName::new("m").unwrap() }
    }

    /// Feeds `order` (indices into the packets, repeats allowed) and returns the outcomes.
    fn feed(packets: &[Vec<u8>], order: &[usize], r: &mut Reassembler) -> (Vec<CompleteImage>, usize) {
        let (mut complete, mut discarded, mut released) = (Vec::new(), 0, Vec::new());
        for (t, &i) in order.iter().enumerate() {
            let (header, _) = PacketHeader::parse(&packets[i]).unwrap();
            match r.on_packet(header, FROM, i as Slot, t as u64, &mut released) {
                Outcome::Complete(c) => complete.push(c),
                Outcome::Discard(_) => discarded += 1,
                Outcome::Pending => {}
            }
        }
        (complete, discarded)
    }

    proptest! {
        #[test]
        fn complete_exactly_when_every_packet_arrived_in_any_order_with_duplicates(
            len in 1usize..12_000,
            seed in any::<u64>(),
            loss in 0.0..0.3f64,
            dup in 0.0..0.5f64,
        ) {
            let image: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let packets = packetize(&request(42), &image);
            let n = packets.len();
            // Deterministic pseudo-random loss, duplication and order from the seed.
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % 10_000) as f64 / 10_000.0 };
            let mut order: Vec<usize> = (0..n).filter(|_| next() >= loss).collect();
            let kept: std::collections::HashSet<usize> = order.iter().copied().collect();
            let dups: Vec<usize> = order.iter().copied().filter(|_| next() < dup).collect();
            order.extend(dups);
            for i in (1..order.len()).rev() {
                let j = (next() * (i + 1) as f64) as usize % (i + 1);
                order.swap(i, j);
            }
            let mut r = Reassembler::new(u64::MAX, 16);
            let (complete, discarded) = feed(&packets, &order, &mut r);
            prop_assert_eq!(complete.len() == 1, kept.len() == n);
            prop_assert_eq!(discarded, order.len() - kept.len().min(order.len()));
            if let Some(c) = complete.first() {
                // The slots, in order, rebuild the image byte for byte.
                let rebuilt: Vec<u8> = c.slots.iter().flat_map(|&s| PacketHeader::parse(&packets[s as usize]).unwrap().1.to_vec()).collect();
                prop_assert_eq!(rebuilt, image);
            } else {
                prop_assert_eq!(r.open_images(), usize::from(!kept.is_empty()));
            }
        }
    }

    #[test]
    fn incomplete_images_expire_and_release_their_slots() {
        let packets = packetize(&request(1), &[0u8; 5000]);
        let mut r = Reassembler::new(1000, 16);
        let mut released = Vec::new();
        for i in [0usize, 2, 4] {
            let (h, _) = PacketHeader::parse(&packets[i]).unwrap();
            assert_eq!(r.on_packet(h, FROM, i as Slot, 10, &mut released), Outcome::Pending);
        }
        r.expire(500, &mut released);
        assert_eq!(r.open_images(), 1, "not yet");
        r.expire(1011, &mut released);
        assert_eq!(r.open_images(), 0);
        released.sort();
        assert_eq!(released, vec![0, 2, 4]);
        assert_eq!((r.stats.expired_images, r.stats.expired_packets), (1, 3));
    }

    #[test]
    fn too_many_open_images_evict_the_oldest_and_conflicts_are_refused() {
        let mut r = Reassembler::new(u64::MAX, 2);
        let mut released = Vec::new();
        for id in 0..3u64 {
            let (h, _) = PacketHeader::parse(&packetize(&request(id), &[0u8; 4000])[0]).unwrap();
            r.on_packet(h, FROM, id as Slot, id, &mut released);
        }
        assert_eq!((r.open_images(), released.clone()), (2, vec![0]));
        let (other, _) = PacketHeader::parse(&packetize(&request(2), &[0u8; 9000])[1]).unwrap();
        assert_eq!(r.on_packet(other, FROM, 9, 5, &mut released), Outcome::Discard(9));
        let mut renamed = request(2);
        renamed.model = ModelName::new("other").unwrap();
        let (other_model, _) = PacketHeader::parse(&packetize(&renamed, &[0u8; 4000])[1]).unwrap();
        assert_eq!(r.on_packet(other_model, FROM, 10, 6, &mut released), Outcome::Discard(10));
        assert_eq!(r.stats.conflicts, 2);
        // The same id from another sender is another message.
        let elsewhere = SocketAddr::new(FROM.ip(), 10);
        assert_eq!(r.on_packet(other_model, elsewhere, 11, 7, &mut released), Outcome::Pending);
    }
}
