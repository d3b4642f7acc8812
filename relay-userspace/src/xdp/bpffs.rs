//! Making sure bpffs is mounted where pinned maps live.

use std::{ffi::CString, io};

/// Where bpffs is mounted by convention.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

/// Mounts bpffs at /sys/fs/bpf unless it is mounted there already.
pub fn ensure_bpffs() -> io::Result<()> {
    let path = CString::new(BPFFS).expect("no NUL in a constant");
    // SAFETY: statfs into a zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid out pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0 && stat.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS)?;
    let kind = CString::new("bpf").expect("no NUL in a constant");
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            path.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!("mounted bpffs at {BPFFS}");
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
