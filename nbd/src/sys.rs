//! Raw socket options the standard library and tokio do not expose.

use std::os::fd::AsRawFd;

/// Ask for a larger send buffer so that a whole read reply (up to a few MiB) fits in the socket
/// in one write; the kernel caps it at net.core.wmem_max. Failure is harmless (default size).
pub fn set_send_buffer(sock: &impl AsRawFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a file descriptor owned by `sock`, with a correctly sized c_int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_SNDBUF not raised");
    }
}
