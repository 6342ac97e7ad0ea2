//! Loop devices: attach an image file to a free `/dev/loopN` in one
//! `LOOP_CONFIGURE` call (kernel ≥ 5.8), with autoclear so the device goes
//! away by itself once the file system on it is unmounted, and direct I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. With `autoclear` (always set here) the kernel
/// detaches it when the last user goes: keep this open until the file system
/// on it is mounted, then drop it.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    file: File,
}

impl LoopDevice {
    /// The open device, for callers that need its fd.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Attaches `image` to a free loop device, read-only if asked.
pub fn attach(image: &Path, read_only: bool) -> io::Result<LoopDevice> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the device between GET_FREE and CONFIGURE;
    // then CONFIGURE fails with EBUSY and we ask for another.
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device
        // number or -1; `ctl` is an open fd for the duration of the call.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new().read(true).write(!read_only).open(&path) {
            Ok(d) => d,
            // udev-less hosts: the node may not exist yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                nix::sys::stat::mknod(
                    &path,
                    nix::sys::stat::SFlag::S_IFBLK,
                    nix::sys::stat::Mode::from_bits_truncate(0o660),
                    nix::sys::stat::makedev(7, n as u64),
                )?;
                OpenOptions::new()
                    .read(true)
                    .write(!read_only)
                    .open(&path)?
            }
            Err(e) => return Err(e),
        };
        // Direct I/O to the image: one page cache (the file system's on
        // the device) instead of two, so writes are faster and steadier.
        // The kernel falls back to buffered I/O where the image's file
        // system cannot do direct I/O.
        let mut flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        if read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `cfg` is a fully initialised `struct loop_config` that lives
        // across the call; the kernel only reads it. Both fds are open.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok(LoopDevice { path, file: dev });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::other("no free loop device after 64 tries"))
}
