//! Attaching to an interface: native first where asked, generic as the
//! fallback, and never over a program someone else attached.

use aya::programs::{ProgramError, Xdp, XdpMode as AyaMode, xdp::XdpLinkId};

use super::{
    XdpError,
    netlink::{self, AttachMode},
};
use crate::config::XdpMode;

/// Attaches `program` to `interface` in `mode`, returning the link and the
/// mode it runs in.
pub(super) fn attach(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> Result<(XdpLinkId, AttachMode), XdpError> {
    let ifindex = if_index(interface)?;
    // Checked up front so the error names the owner; the kernel refuses a
    // second program anyway (EBUSY), which `attach_in` reports the same way.
    refuse_if_occupied(interface, ifindex)?;
    match mode {
        XdpMode::Native => attach_in(program, interface, ifindex, AttachMode::Native),
        XdpMode::Generic => attach_in(program, interface, ifindex, AttachMode::Generic),
        XdpMode::Auto => match attach_in(program, interface, ifindex, AttachMode::Native) {
            Err(XdpError::Attach { reason, .. }) => {
                tracing::warn!(
                    "native XDP refused on {interface} ({reason}); attaching in generic mode, \
                     which works everywhere but costs more per packet"
                );
                attach_in(program, interface, ifindex, AttachMode::Generic)
            }
            other => other,
        },
    }
}

fn attach_in(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(XdpLinkId, AttachMode), XdpError> {
    let aya_mode = match mode {
        AttachMode::Native => AyaMode::Driver,
        AttachMode::Generic => AyaMode::Skb,
        AttachMode::Hardware => AyaMode::Hardware,
    };
    match program.attach_to_if_index(ifindex, aya_mode) {
        Ok(link) => Ok((link, mode)),
        Err(source) => {
            if matches!(os_error(&source), Some(libc::EBUSY | libc::EEXIST)) {
                refuse_if_occupied(interface, ifindex)?;
            }
            Err(XdpError::Attach {
                interface: interface.to_owned(),
                mode,
                reason: error_chain(&source),
            })
        }
    }
}

/// An error and its sources, joined with ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Fails with [`XdpError::Occupied`] when any XDP program is attached to the
/// interface, naming it.
pub(super) fn refuse_if_occupied(interface: &str, ifindex: u32) -> Result<(), XdpError> {
    let attached =
        netlink::attached_programs(ifindex).map_err(|source| XdpError::QueryInterface {
            interface: interface.to_owned(),
            source,
        })?;
    let Some(owner) = attached.first() else {
        return Ok(());
    };
    let name = program_name(owner.program_id).unwrap_or_else(|| "<unnamed>".to_owned());
    Err(XdpError::Occupied {
        interface: interface.to_owned(),
        owner: format!(
            "program {name:?} (id {}, {} mode)",
            owner.program_id, owner.mode
        ),
    })
}

/// What the kernel knows about the loaded program with this id.
pub(crate) fn program_info(id: u32) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == id)
}

/// The name the kernel knows a program by.
fn program_name(id: u32) -> Option<String> {
    program_info(id).and_then(|info| info.name_as_str().map(str::to_owned))
}

/// The interface index of `interface` in this network namespace.
pub fn if_index(interface: &str) -> Result<u32, XdpError> {
    let unknown = || XdpError::UnknownInterface(interface.to_owned());
    let name = std::ffi::CString::new(interface).map_err(|_| unknown())?;
    // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

/// The errno behind an aya program error, if it came from a syscall.
fn os_error(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(err) => err.io_error.raw_os_error(),
        _ => None,
    }
}
