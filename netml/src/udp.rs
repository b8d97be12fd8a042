//! Receiving packets with `recvmmsg` straight into pool slots, reassembling them, and the
//! CPU-Copy transfer mode; sending messages as packets (replies, and the loopback traffic
//! generators).

use super::packet::{Envelope, HEADER, PacketError, PacketHeader, packetize};
use super::pool::PacketPool;
use super::reassembly::{CompleteImage, Outcome, Reassembler, ReassemblyStats, Slot};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage, recvmmsg};
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// Datagrams taken per `recvmmsg` call.
pub const RECV_BATCH: usize = 64;

/// What a receiver has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Datagrams received.
    pub datagrams: u64,
    /// Datagrams whose header did not parse (dropped), a version other than this build's among
    /// them...
    pub malformed: u64,
    /// ...counted here too.
    pub wrong_version: u64,
    /// Polls that found no free slot (every slot held by complete images not yet released).
    pub pool_exhausted: u64,
}

/// The socket receive buffer asked for.
const RECEIVE_BUFFER_BYTES: usize = 64 << 20;

/// A UDP socket receiving packets into a pool and reassembling them.
pub struct Receiver {
    socket: UdpSocket,
    /// Where packets are kept.
    pub pool: PacketPool,
    reassembler: Reassembler,
    headers: MultiHeaders<SockaddrStorage>,
    /// What it has seen.
    pub stats: ReceiveStats,
}

impl Receiver {
    /// Binds `address` (non-blocking) with a pool of `slots` buffers; incomplete images are
    /// dropped `timeout_ns` after their first packet.
    pub fn bind(address: SocketAddr, slots: usize, timeout_ns: u64) -> std::io::Result<Receiver> {
        Receiver::on(UdpSocket::bind(address)?, PacketPool::new(slots)?, timeout_ns)
    }

    /// As `bind`, with SO_REUSEPORT: several receivers (threads) bound to one address share its
    /// datagrams, the kernel sending each sender's (by its address and port) to one of them,
    /// so every packet of a message reaches the same receiver.
    pub fn bind_shared(address: SocketAddr, slots: usize, timeout_ns: u64) -> std::io::Result<Receiver> {
        Receiver::bind_shared_into(address, PacketPool::new(slots)?, timeout_ns)
    }

    /// As `bind_shared`, receiving into `pool` (one of `SharedPools`, say).
    pub fn bind_shared_into(address: SocketAddr, pool: PacketPool, timeout_ns: u64) -> std::io::Result<Receiver> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, bind, setsockopt, socket, sockopt};
        let family = if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&fd, sockopt::ReusePort, &true)?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(address))?;
        Receiver::on(UdpSocket::from(fd), pool, timeout_ns)
    }

    fn on(socket: UdpSocket, pool: PacketPool, timeout_ns: u64) -> std::io::Result<Receiver> {
        socket.set_nonblocking(true)?;
        // A deep socket buffer rides out the moments the receiving thread is not scheduled (a
        // full one drops whole images). The kernel caps SO_RCVBUF at net.core.rmem_max; a
        // privileged process may go past it (SO_RCVBUFFORCE). Best effort: `receive_buffer`
        // says what was granted.
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER_BYTES).is_err() {
            let _ = setsockopt(&socket, sockopt::RcvBuf, &RECEIVE_BUFFER_BYTES);
        }
        Ok(Receiver {
            socket,
            reassembler: Reassembler::new(timeout_ns, (pool.capacity() / 64).max(16)),
            pool,
            headers: MultiHeaders::preallocate(RECV_BATCH, None),
            stats: ReceiveStats::default(),
        })
    }

    /// The socket's receive buffer, bytes (as the kernel reports it).
    pub fn receive_buffer(&self) -> usize {
        nix::sys::socket::getsockopt(&self.socket, nix::sys::socket::sockopt::RcvBuf).unwrap_or(0)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The reassembler's figures.
    pub fn reassembly(&self) -> ReassemblyStats {
        self.reassembler.stats
    }

    /// Waits until a datagram is waiting or `timeout` has passed.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<()> {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        poll(&mut [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)], timeout)?;
        Ok(())
    }

    /// Receives what is waiting (one batch), appends completed images to `complete`, and drops
    /// images past their timeout. Returns the datagrams received.
    pub fn poll(&mut self, now_ns: u64, complete: &mut Vec<CompleteImage>) -> std::io::Result<usize> {
        self.pool.reclaim();
        let mut released = Vec::new();
        self.reassembler.expire(now_ns, &mut released);
        // Images that lost a packet hold their slots until they expire; under load they would
        // fill the pool and stop the receive (and then every image is lost). The oldest open
        // image goes first instead: it is the likeliest to be broken.
        while self.pool.free_slots() + released.len() < RECV_BATCH && self.reassembler.evict_oldest(&mut released) {}
        for slot in released.drain(..) {
            self.pool.give(slot);
        }
        let slots: Vec<Slot> = std::iter::from_fn(|| self.pool.take()).take(RECV_BATCH).collect();
        if slots.is_empty() {
            self.stats.pool_exhausted += 1;
            return Ok(0);
        }
        let received: Result<Vec<(usize, Option<SocketAddr>)>, nix::errno::Errno> = {
            let mut iovs: Vec<[IoSliceMut; 1]> =
                self.pool.buffers_mut(&slots).into_iter().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(self.socket.as_raw_fd(), &mut self.headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
                Ok(messages) => Ok(messages.map(|m| (m.bytes, m.address.and_then(socket_addr))).collect()),
                Err(nix::errno::Errno::EAGAIN) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        };
        let lengths = match received {
            Ok(lengths) => lengths,
            Err(e) => {
                slots.iter().for_each(|&s| self.pool.give(s));
                return Err(e.into());
            }
        };
        for (i, &slot) in slots.iter().enumerate() {
            let Some(&(len, source)) = lengths.get(i) else {
                self.pool.give(slot);
                continue;
            };
            self.stats.datagrams += 1;
            let outcome = match (PacketHeader::parse(&self.pool.slot(slot)[..len]), source) {
                (Ok((header, _)), Some(source)) => {
                    self.reassembler.on_packet(header, source, slot, now_ns, &mut released)
                }
                (parsed, _) => {
                    self.stats.malformed += 1;
                    self.stats.wrong_version += u64::from(matches!(parsed, Err(PacketError::Version(_))));
                    Outcome::Discard(slot)
                }
            };
            match outcome {
                Outcome::Complete(image) => complete.push(image),
                Outcome::Discard(slot) => self.pool.give(slot),
                Outcome::Pending => {}
            }
        }
        for slot in released {
            self.pool.give(slot);
        }
        Ok(lengths.len())
    }

    /// CPU-Copy: gathers an image's payloads into `out`, in order.
    pub fn gather_cpu(&self, image: &CompleteImage, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(image.total_len as usize);
        for (slot, _, len) in PacketHeader::payload_pieces(&image.slots, image.total_len) {
            out.extend_from_slice(&self.pool.slot(slot)[HEADER..HEADER + len]);
        }
    }

    /// Sends ready-made datagrams from this socket to `to`, in order (a client that patches
    /// prepared packets; its replies come back to this socket). Returns the datagrams sent.
    pub fn send_datagrams_to<D: AsRef<[u8]>>(
        &self,
        to: SocketAddr,
        datagrams: impl Iterator<Item = D>,
    ) -> std::io::Result<usize> {
        send_datagrams(&self.socket, to, datagrams)
    }

    /// This socket, for sending from another thread (a server's replies come from the address
    /// its requests went to).
    pub fn try_clone_socket(&self) -> std::io::Result<UdpSocket> {
        self.socket.try_clone()
    }

    /// Returns a gathered image's slots to the pool.
    pub fn release(&mut self, image: CompleteImage) {
        for slot in image.slots {
            self.pool.give(slot);
        }
    }
}

/// The address of a received datagram's sender (IPv4 or IPv6).
fn socket_addr(address: SockaddrStorage) -> Option<SocketAddr> {
    match address.family()? {
        nix::sys::socket::AddressFamily::Inet => address.as_sockaddr_in().map(|a| SocketAddr::from(*a)),
        nix::sys::socket::AddressFamily::Inet6 => address.as_sockaddr_in6().map(|a| SocketAddr::from(*a)),
        _ => None,
    }
}

/// Sends a message (`envelope`, `payload`) from `socket` to `to` as packets. Returns the
/// datagrams sent.
pub fn send_message(socket: &UdpSocket, to: SocketAddr, envelope: &Envelope, payload: &[u8]) -> std::io::Result<usize> {
    send_datagrams(socket, to, packetize(envelope, payload).iter())
}

/// Sends `datagrams` to `to`, in order; a full send buffer is waited out (up to 100 ms a
/// datagram) rather than dropped.
fn send_datagrams<D: AsRef<[u8]>>(
    socket: &UdpSocket,
    to: SocketAddr,
    datagrams: impl Iterator<Item = D>,
) -> std::io::Result<usize> {
    let mut sent = 0;
    for datagram in datagrams {
        loop {
            match socket.send_to(datagram.as_ref(), to) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let writable = poll(&mut [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)], 100u8)?;
                    if writable == 0 {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        sent += 1;
    }
    Ok(sent)
}

/// Sends images over UDP as packets: the loopback traffic generator.
pub struct Sender {
    socket: UdpSocket,
    destination: SocketAddr,
}

impl Sender {
    /// A sender to `destination`, from an ephemeral local port.
    pub fn new(destination: SocketAddr) -> std::io::Result<Sender> {
        let socket = UdpSocket::bind(SocketAddr::new(destination.ip(), 0))?;
        Ok(Sender { socket, destination })
    }

    /// Sends `image`'s packets whose index `keep` accepts (to simulate loss), in order.
    pub fn send(
        &self,
        envelope: &Envelope,
        image: &[u8],
        mut keep: impl FnMut(usize) -> bool,
    ) -> std::io::Result<usize> {
        let datagrams = packetize(envelope, image);
        let kept = datagrams.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, d)| d);
        send_datagrams(&self.socket, self.destination, kept)
    }
}
