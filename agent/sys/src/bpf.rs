//! The `bpf(2)` commands aya 0.14 does not expose for cgroup links: open and pin an object by
//! fd, read a cgroup link's target and program, swap the program behind a link in place, and
//! list the programs attached to a cgroup (or running on it); and the probes of what the
//! kernel supports.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// Most program ids [`prog_query`] reads for one attach type.
const QUERY_MAX: usize = 64;
/// `BPF_PROG_QUERY` flag: the programs that run on the cgroup, inherited ones included.
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// `bpf_link_info.type` of a cgroup link.
pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// `union bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_PROG_QUERY` (the fields up to `prog_cnt`).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `union bpf_attr` for `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (the fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` (the fields every link type shares).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// The head of `struct bpf_link_info` with its `cgroup` union member; the kernel fills at most
/// the length it is given.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupLinkInfo {
    /// `BPF_LINK_TYPE_*`.
    pub link_type: u32,
    /// Link id.
    pub id: u32,
    /// Id of the program behind the link.
    pub prog_id: u32,
    _pad: u32,
    /// Target cgroup id; 0 once the cgroup is gone.
    pub cgroup_id: u64,
    /// `BPF_CGROUP_*` attach type.
    pub attach_type: u32,
    _pad2: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly sized `#[repr(C)]` prefix of `union bpf_attr` for
    // `cmd`; the kernel reads (and for info, writes through the pointer inside) only that many
    // bytes, and every pointer inside it refers to memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<T>(attr).cast::<libc::c_void>(),
            attr_size::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the object pinned at `path` (here: a link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("BPF_OBJ_GET returned a bad fd"))?;
    // SAFETY: a successful BPF_OBJ_GET returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the object `fd` (here: a link) at `path`, which must not exist.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd().cast_unsigned(),
        ..ObjGetAttr::default()
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Ids of the programs attached directly to the cgroup `cgroup` for `attach_type` (not the
/// ones inherited from its ancestors).
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    query(cgroup, attach_type, 0)
}

/// Ids of the programs that run for `attach_type` on the cgroup `cgroup`, in the order they
/// run: its own, then those inherited from each ancestor up to the root
/// (`BPF_F_QUERY_EFFECTIVE`).
pub fn prog_query_effective(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    query(cgroup, attach_type, BPF_F_QUERY_EFFECTIVE)
}

fn query(cgroup: BorrowedFd<'_>, attach_type: u32, query_flags: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; QUERY_MAX];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd().cast_unsigned(),
        attach_type,
        query_flags,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: attr_size::<[u32; QUERY_MAX]>() / 4,
        ..QueryAttr::default()
    };
    sys_bpf(BPF_PROG_QUERY, &mut attr)?;
    let n = (attr.prog_cnt as usize).min(QUERY_MAX);
    Ok(ids[..n].to_vec())
}

/// What the kernel says about the cgroup link `link`.
pub fn cgroup_link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    let mut info = CgroupLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd().cast_unsigned(),
        info_len: attr_size::<CgroupLinkInfo>(),
        info: &raw mut info as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Atomically replaces the program behind `link` with `prog`: no connect ever sees neither.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd().cast_unsigned(),
        new_prog_fd: prog.as_raw_fd().cast_unsigned(),
        ..LinkUpdateAttr::default()
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Loads the smallest program of `prog_type` for `expected_attach_type` (`r0 = 1; exit`): a
/// kernel without that program or attach type refuses it with `EINVAL`.
pub fn probe_prog_load(prog_type: u32, expected_attach_type: u32) -> io::Result<OwnedFd> {
    // mov64 r0, 1 (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT).
    let insns: [u64; 2] = [0xb7 | (1 << 32), 0x95];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("BPF_PROG_LOAD returned a bad fd"))?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Asks for a cgroup link of `prog` with no cgroup (target fd -1). A kernel with cgroup links
/// (Linux 5.7) gets as far as the target and answers `EBADF`; one without answers `EINVAL`.
/// Nothing is attached either way.
pub fn probe_cgroup_link(prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd().cast_unsigned(),
        target_fd: u32::MAX,
        attach_type,
        flags: 0,
    };
    match sys_bpf(BPF_LINK_CREATE, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => Err(e),
        Ok(fd) => {
            // Not expected for fd -1; close whatever came back.
            if let Ok(fd) = i32::try_from(fd) {
                // SAFETY: a successful BPF_LINK_CREATE returns a new fd that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            Ok(())
        }
    }
}

/// Size of a `bpf(2)` argument struct, in the kernel's `u32`.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the structs passed to bpf(2) are a few hundred bytes at most"
)]
const fn attr_size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}
