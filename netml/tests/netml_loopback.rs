//! Images sent as UDP packets over loopback, received with recvmmsg into the packet pool,
//! reassembled and gathered on the CPU (CPU-Copy), with packets lost on some images.

use gpuslice_netml::packet::{Envelope, ModelName};
use gpuslice_netml::reassembly::CompleteImage;
use gpuslice_netml::udp::{Receiver, Sender};

fn request(id: u64) -> Envelope {
    Envelope::request(id, ModelName::new("resnet50").unwrap())
}

const IMAGE_BYTES: usize = 224 * 224 * 3 * 4;

#[test]
fn images_arrive_whole_or_expire_counted() {
    let mut receiver = Receiver::bind("127.0.0.1:0".parse().unwrap(), 4096, 50_000_000).unwrap();
    let sender = Sender::new(receiver.local_addr().unwrap()).unwrap();
    let started = std::time::Instant::now();
    let now = || started.elapsed().as_nanos() as u64;
    let (mut complete, mut ids, mut gathered): (Vec<CompleteImage>, Vec<u64>, Vec<u8>) = Default::default();
    let images: Vec<Vec<u8>> =
        (0..12u64).map(|id| (0..IMAGE_BYTES).map(|i| (i as u64 * 7 + id) as u8).collect()).collect();
    for (id, image) in images.iter().enumerate() {
        // Images 3 and 7 lose one packet each.
        let lost = [3usize, 7].contains(&id);
        let sent = sender
            .send(&request(id as u64), image, |i| {
                // Drain the socket as we go so the kernel's receive buffer never overflows.
                if i % 32 == 0 {
                    receiver.poll(now(), &mut complete).unwrap();
                }
                !(lost && i == 100)
            })
            .unwrap();
        assert_eq!(sent, if lost { 587 } else { 588 });
        while receiver.poll(now(), &mut complete).unwrap() > 0 {}
        // The consumer gathers each complete image and gives its slots back.
        for image in complete.drain(..) {
            receiver.gather_cpu(&image, &mut gathered);
            let id = image.envelope.image_id;
            assert_eq!(gathered, images[id as usize], "image {id} intact");
            ids.push(id);
            receiver.release(image);
        }
    }
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 4, 5, 6, 8, 9, 10, 11]);
    // The two incomplete images time out, are counted, and give their slots back.
    std::thread::sleep(std::time::Duration::from_millis(60));
    receiver.poll(now(), &mut Vec::new()).unwrap();
    let stats = receiver.reassembly();
    assert_eq!((stats.completed, stats.expired_images, stats.expired_packets), (10, 2, 2 * 587));
    assert_eq!(receiver.pool.free_slots(), receiver.pool.capacity(), "every slot back in the pool");
    assert_eq!(receiver.stats.malformed, 0);
}

#[test]
fn malformed_datagrams_are_counted_and_dropped() {
    let mut receiver = Receiver::bind("127.0.0.1:0".parse().unwrap(), 256, 1_000_000).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // The version-1 header of the first NetML release: refused, and counted as such.
    let mut version_1 = [0u8; 1044];
    version_1[..3].copy_from_slice(&[0x4d, 0x4e, 1]);
    for garbage in [&b"hello"[..], &[0u8; 40][..], &[0xff; 1044][..], &version_1[..]] {
        socket.send_to(garbage, receiver.local_addr().unwrap()).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut complete = Vec::new();
    while receiver.poll(0, &mut complete).unwrap() > 0 {}
    assert!(complete.is_empty());
    assert_eq!((receiver.stats.datagrams, receiver.stats.malformed, receiver.stats.wrong_version), (4, 4, 1));
    assert_eq!(receiver.pool.free_slots(), 256);
}

/// On a machine with an NVIDIA GPU, each transfer mode delivers a staged image intact; without
/// one, setting up says so (and the GPU part is skipped).
#[test]
fn gpu_transfer_modes_deliver_intact_or_say_why_not() {
    use gpuslice_netml::gpu::{GpuError, GpuTransfer, TransferMode, stage_image};
    use gpuslice_netml::pool::PacketPool;
    let mut pool = PacketPool::new(2 * 588).unwrap();
    let bytes: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
    let image = stage_image(&mut pool, &request(1), &bytes).unwrap();
    match GpuTransfer::new(&pool, IMAGE_BYTES, 588) {
        Err(GpuError::NoDriver) => {
            eprintln!("skipped: no CUDA driver on this machine; scripts run the GPU checks on the GPU machine")
        }
        Err(e) => panic!("GPU set-up failed: {e}"),
        Ok(mut gpu) => {
            for mode in TransferMode::ALL {
                gpu.transfer(&pool, std::slice::from_ref(&image), mode).unwrap();
                assert_eq!(gpu.read_back(IMAGE_BYTES).unwrap(), bytes, "{}", mode.name());
            }
        }
    }
}

/// Images that lost a packet would hold the pool until they expire, and the receive would stop:
/// the oldest are evicted instead (counted as expired), and whole images keep arriving.
#[test]
fn broken_images_are_evicted_before_they_fill_the_pool() {
    // Room for 96 packets; images of 10 packets; a 10 s timeout that never comes.
    let mut receiver = Receiver::bind("127.0.0.1:0".parse().unwrap(), 96, 10_000_000_000).unwrap();
    let sender = Sender::new(receiver.local_addr().unwrap()).unwrap();
    let image = vec![5u8; 10 * 1024];
    let mut complete = Vec::new();
    let drain = |receiver: &mut Receiver, complete: &mut Vec<CompleteImage>| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        while receiver.poll(0, complete).unwrap() > 0 {}
    };
    // 20 broken images (packet 9 lost): 180 packets, more than the pool holds.
    for id in 0..20u64 {
        sender.send(&request(id), &image, |i| i != 9).unwrap();
        drain(&mut receiver, &mut complete);
    }
    assert!(complete.is_empty());
    for id in 100..105u64 {
        sender.send(&request(id), &image, |_| true).unwrap();
        drain(&mut receiver, &mut complete);
    }
    let ids: Vec<u64> = complete.iter().map(|c| c.envelope.image_id).collect();
    assert_eq!(ids, vec![100, 101, 102, 103, 104], "whole images still arrive");
    assert!(receiver.reassembly().expired_images >= 11, "{:?}", receiver.reassembly());
    assert_eq!(receiver.stats.pool_exhausted, 0);
}
