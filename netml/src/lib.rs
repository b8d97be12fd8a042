//! The NetML data path: requests arrive as many small UDP packets; the packets stay in a pool of
//! receive buffers (pinned and registered with the CUDA driver on the GPU machine), and complete
//! images are gathered from there into the batch's input. Replies go back the same way; `client`
//! is the load generator that sends requests and checks replies.

pub mod client;
pub mod gpu;
pub mod packet;
pub mod pool;
pub mod reassembly;
pub mod udp;
