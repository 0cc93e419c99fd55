//! `tessera-parity`: the Tessera parity engine on CPU.
//!
//! - [`gf`]: GF(2^8) over 0x11d and the ISA-L generator matrices;
//! - [`codec`]: [`Xor`], [`Pq`] (Linux RAID6) and [`ReedSolomon`] with encode / verify / reconstruct;
//! - [`kernels`]: run-time selected backends (scalar, AVX2, AVX-512BW, GFNI on ymm/zmm, NEON);
//! - [`isal`]: ISA-L loaded with `dlopen`, the byte and speed peer for tests and `bench`;
//! - [`md`]: Linux MD superblocks and RAID5/6 layouts, offline verify / read / rebuild of members;
//! - [`bench`]: the Tessera vs ISA-L benchmark behind `tessera-raid bench`;
//! - [`gpu`]: the CUDA backend (feature `cuda`, NVRTC kernels) and the CPU/GPU dispatcher [`gpu::Engine`].

pub mod bench;
pub mod codec;
pub mod error;
pub mod gf;
pub mod gpu;
pub mod isal;
pub mod kernels;
pub mod md;
mod sys;
pub mod util;

pub use codec::{BadStripe, Decoder, Matrix, Member, Pq, ReedSolomon, Xor};
pub use error::ParityError;
pub use kernels::Backend;
