//! The three ways a batch of reassembled images reaches GPU memory:
//! - per-packet: one `cuMemcpyHtoDAsync` per packet, from the registered pool;
//! - CPU-Copy: the CPU gathers payloads into a pinned contiguous buffer, then one copy;
//! - GPU gather: a kernel (NVRTC-compiled) reads the payloads over UVA straight from the
//!   registered pool into the batch buffer; the CPU only writes a small per-packet descriptor.
//!
//! Completion is learned by polling a CUDA event (`cuEventQuery`), not by stream callbacks.

use super::packet::{Envelope, HEADER, PacketHeader};
use super::pool::{PacketPool, SLOT_BYTES};
use super::reassembly::CompleteImage;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg, sys};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a batch is moved to the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferMode {
    /// One host-to-device copy per packet.
    PerPacket,
    /// Packets gathered on the CPU into one buffer, then one copy.
    CpuCopy,
    /// One kernel gathers the packets from pinned host memory (zero copy).
    GpuGather,
}

impl TransferMode {
    /// Every mode, in the order they are benchmarked.
    pub const ALL: [TransferMode; 3] = [TransferMode::PerPacket, TransferMode::CpuCopy, TransferMode::GpuGather];

    /// Its name in tables and flags.
    pub fn name(self) -> &'static str {
        match self {
            TransferMode::PerPacket => "per-packet",
            TransferMode::CpuCopy => "cpu-copy",
            TransferMode::GpuGather => "gpu-gather",
        }
    }
}

/// A CUDA step of the transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// There is no CUDA driver.
    #[error("no CUDA driver on this machine (libcuda not found)")]
    NoDriver,
    /// A CUDA driver call failed.
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// The gather kernel did not compile.
    #[error("NVRTC: {0}")]
    Compile(String),
    /// A raw CUDA call failed.
    #[error("CUDA call {call} failed: {result:?}")]
    Call {
        /// Which call.
        call: &'static str,
        /// Its result code.
        result: sys::CUresult,
    },
    /// A batch larger than the transfer buffer.
    #[error("batch of {got} bytes is larger than the {capacity}-byte transfer buffer")]
    TooLarge {
        /// The batch, bytes.
        got: usize,
        /// The buffer, bytes.
        capacity: usize,
    },
}

fn check(call: &'static str, result: sys::CUresult) -> Result<(), GpuError> {
    if result == sys::CUresult::CUDA_SUCCESS { Ok(()) } else { Err(GpuError::Call { call, result }) }
}

const GATHER_KERNEL: &str = r#"
extern "C" __global__ void gather(const unsigned char* pool, const unsigned int* desc, unsigned int n,
                                  unsigned char* out) {
    // desc: n source slots, then n destination offsets, then n lengths.
    unsigned int p = blockIdx.x;
    if (p >= n) return;
    const unsigned char* src = pool + (size_t)desc[p] * SLOT_BYTES + HEADER_BYTES;
    unsigned char* dst = out + desc[n + p];
    unsigned int len = desc[2 * n + p];
    if (((size_t)src & 3) == 0 && ((size_t)dst & 3) == 0) {
        const unsigned int* s = (const unsigned int*)src;
        unsigned int* d = (unsigned int*)dst;
        for (unsigned int i = threadIdx.x; i < len / 4; i += blockDim.x) d[i] = s[i];
        for (unsigned int i = (len / 4) * 4 + threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
    } else {
        for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
    }
}
"#;

/// What one transfer cost.
#[derive(Debug, Clone, Copy)]
pub struct TransferCost {
    /// CPU time of the calling thread spent issuing the transfer (gathers, descriptors, calls).
    pub cpu: Duration,
    /// Wall time from the start until the completion event was seen.
    pub latency: Duration,
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from).unwrap_or_default()
}

/// Pinned host memory from `cuMemHostAlloc`.
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc and freed once.
        unsafe { sys::cuMemFreeHost(self.ptr.cast()) };
    }
}

/// Device memory from `cuMemAlloc` (not a stream-ordered pool), so it can be shared with another
/// process through CUDA IPC.
struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAlloc and freed once.
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// A CUDA context, stream, gather kernel and device buffer for moving batches to the GPU.
pub struct GpuTransfer {
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    gather: CudaFunction,
    pool_host: *const u8,
    pool_device: sys::CUdeviceptr,
    staging: Pinned,
    descriptors: Pinned,
    descriptors_device: CudaSlice<u32>,
    /// The batch's bytes on the GPU, back to back.
    output: DeviceBuffer,
}

impl GpuTransfer {
    /// Registers `pool` with the CUDA driver (once), compiles the gather kernel, and allocates a
    /// batch buffer of `capacity` bytes for up to `max_packets` packets.
    pub fn new(pool: &PacketPool, capacity: usize, max_packets: usize) -> Result<GpuTransfer, GpuError> {
        // SAFETY: only probes for the library; without it cudarc would panic on first use.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        let ctx = CudaContext::new(0)?;
        let stream = ctx.default_stream();
        let memory = pool.memory();
        let mut pool_device: sys::CUdeviceptr = 0;
        // SAFETY: the pool's mapping outlives this struct's use of it (the caller keeps the pool);
        // registering makes it pinned and mapped into the device's address space.
        unsafe {
            check(
                "cuMemHostRegister",
                sys::cuMemHostRegister_v2(memory.as_ptr() as *mut _, memory.len(), sys::CU_MEMHOSTREGISTER_DEVICEMAP),
            )?;
            check(
                "cuMemHostGetDevicePointer",
                sys::cuMemHostGetDevicePointer_v2(&mut pool_device, memory.as_ptr() as *mut _, 0),
            )?;
        }
        let source = format!("#define SLOT_BYTES {SLOT_BYTES}\n#define HEADER_BYTES {HEADER}\n{GATHER_KERNEL}");
        let ptx = cudarc::nvrtc::compile_ptx(source).map_err(|e| GpuError::Compile(e.to_string()))?;
        let gather = ctx.load_module(ptx)?.load_function("gather")?;
        let pinned = |len: usize| -> Result<Pinned, GpuError> {
            let mut ptr: *mut std::ffi::c_void = std::ptr::null_mut();
            // SAFETY: a plain pinned allocation, freed by Pinned::drop.
            check("cuMemHostAlloc", unsafe { sys::cuMemHostAlloc(&mut ptr, len.max(1), 0) })?;
            Ok(Pinned { ptr: ptr.cast(), len })
        };
        let mut output = DeviceBuffer { ptr: 0, len: capacity.max(1) };
        // SAFETY: a plain device allocation, freed by DeviceBuffer::drop.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut output.ptr, output.len) })?;
        Ok(GpuTransfer {
            output,
            staging: pinned(capacity)?,
            descriptors: pinned(3 * max_packets * 4)?,
            descriptors_device: stream.alloc_zeros(3 * max_packets)?,
            pool_host: memory.as_ptr(),
            pool_device,
            gather,
            stream,
            _ctx: ctx,
        })
    }

    /// Moves `images` (their bytes back to back) into `output` by `mode`, and waits for it by
    /// polling an event.
    pub fn transfer(
        &mut self,
        pool: &PacketPool,
        images: &[CompleteImage],
        mode: TransferMode,
    ) -> Result<TransferCost, GpuError> {
        let started = Instant::now();
        let cpu_started = thread_cpu();
        let total: usize = images.iter().map(|i| i.total_len as usize).sum();
        if total > self.staging.len {
            return Err(GpuError::TooLarge { got: total, capacity: self.staging.len });
        }
        let packets = images.iter().map(|i| i.slots.len()).sum::<usize>();
        if 3 * packets * 4 > self.descriptors.len {
            return Err(GpuError::TooLarge { got: packets, capacity: self.descriptors.len / 12 });
        }
        let out = self.output.ptr;
        let cu_stream = self.stream.cu_stream();
        // Each packet: (slot, destination offset, length).
        let pieces = images.iter().scan(0usize, |base, image| {
            let start = *base;
            *base += image.total_len as usize;
            Some(
                PacketHeader::payload_pieces(&image.slots, image.total_len)
                    .map(move |(slot, offset, len)| (slot, start + offset, len)),
            )
        });
        match mode {
            TransferMode::PerPacket => {
                for (slot, dst, len) in pieces.flatten() {
                    // SAFETY: the source lies in the registered pool, the destination in `output`
                    // (total checked above); the stream orders the copies.
                    let src = unsafe { self.pool_host.add(slot as usize * SLOT_BYTES + HEADER) };
                    check("cuMemcpyHtoDAsync", unsafe {
                        sys::cuMemcpyHtoDAsync_v2(out + dst as u64, src.cast(), len, cu_stream)
                    })?;
                }
            }
            TransferMode::CpuCopy => {
                // SAFETY: `staging` holds `capacity` >= total bytes, written before the copy is issued.
                let staging = unsafe { std::slice::from_raw_parts_mut(self.staging.ptr, total) };
                for (slot, dst, len) in pieces.flatten() {
                    staging[dst..dst + len].copy_from_slice(&pool.slot(slot)[HEADER..HEADER + len]);
                }
                check("cuMemcpyHtoDAsync", unsafe {
                    sys::cuMemcpyHtoDAsync_v2(out, self.staging.ptr.cast(), total, cu_stream)
                })?;
            }
            TransferMode::GpuGather => {
                // SAFETY: `descriptors` holds 3 * max_packets u32 (checked above).
                let desc = unsafe { std::slice::from_raw_parts_mut(self.descriptors.ptr.cast::<u32>(), 3 * packets) };
                for (k, (slot, dst, len)) in pieces.flatten().enumerate() {
                    (desc[k], desc[packets + k], desc[2 * packets + k]) = (slot, dst as u32, len as u32);
                }
                let (desc_device, _desc_sync) = self.descriptors_device.device_ptr(&self.stream);
                check("cuMemcpyHtoDAsync", unsafe {
                    sys::cuMemcpyHtoDAsync_v2(desc_device, self.descriptors.ptr.cast(), 3 * packets * 4, cu_stream)
                })?;
                let config =
                    LaunchConfig { grid_dim: (packets as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
                let n = packets as u32;
                let mut launch = self.stream.launch_builder(&self.gather);
                launch.arg(&self.pool_device).arg(&desc_device).arg(&n).arg(&out);
                // SAFETY: the kernel reads `packets` descriptors and the registered pool, and writes
                // inside `output` (total checked above).
                unsafe { launch.launch(config) }?;
            }
        }
        let cpu = thread_cpu().saturating_sub(cpu_started);
        let event = self.stream.context().new_event(None)?;
        event.record(&self.stream)?;
        // SAFETY: a valid event of this context.
        while unsafe { sys::cuEventQuery(event.cu_event()) } == sys::CUresult::CUDA_ERROR_NOT_READY {
            std::hint::spin_loop();
        }
        Ok(TransferCost { cpu, latency: started.elapsed() })
    }

    /// The first `len` bytes of the batch buffer, copied back (to check a transfer).
    pub fn read_back(&self, len: usize) -> Result<Vec<u8>, GpuError> {
        let mut bytes = vec![0u8; len.min(self.output.len)];
        // SAFETY: `bytes` holds at most the buffer's length; the copy is synchronous.
        check("cuMemcpyDtoH", unsafe {
            sys::cuMemcpyDtoH_v2(bytes.as_mut_ptr().cast(), self.output.ptr, bytes.len())
        })?;
        Ok(bytes)
    }

    /// A CUDA IPC handle of the batch buffer, hex-encoded: a worker process opens it
    /// (`cudaIpcOpenMemHandle`) and reads each batch where the transfer put it, with no copy
    /// through the host.
    pub fn ipc_handle_hex(&self) -> Result<String, GpuError> {
        let mut handle = sys::CUipcMemHandle { reserved: [0; 64] };
        // SAFETY: `output` is a cuMemAlloc allocation of this context.
        check("cuIpcGetMemHandle", unsafe { sys::cuIpcGetMemHandle(&mut handle, self.output.ptr) })?;
        Ok(handle.reserved.iter().map(|b| format!("{:02x}", *b as u8)).collect())
    }
}

/// Writes `image`'s packets into free pool slots, as if they had been received from nowhere, and
/// returns the reassembled image (for benchmarks and tests of the transfer alone).
pub fn stage_image(pool: &mut PacketPool, envelope: &Envelope, image: &[u8]) -> Option<CompleteImage> {
    let datagrams = super::packet::packetize(envelope, image);
    let slots: Vec<_> = std::iter::from_fn(|| pool.take()).take(datagrams.len()).collect();
    if slots.len() < datagrams.len() {
        slots.into_iter().for_each(|s| pool.give(s));
        return None;
    }
    for (buffer, datagram) in pool.buffers_mut(&slots).into_iter().zip(&datagrams) {
        buffer[..datagram.len()].copy_from_slice(datagram);
    }
    let total_len = PacketHeader::parse(&datagrams[0]).ok()?.0.total_len;
    let source = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    Some(CompleteImage { envelope: *envelope, source, total_len, slots, first_seen_ns: 0, last_seen_ns: 0 })
}
