//! Which sockets may be called as a target (DESIGN section 9): `<dir>/<service>/rpc.sock`
//! where `<service>` is a valid, unreserved name other than ours, the service directory is
//! a real directory and the socket a real socket (neither is a symbolic link), and the
//! socket is none of the executor's own. After connecting, the listener on the other end
//! must be bound at that very path (a Unix socket reports where its listener was bound,
//! whatever name the client used), so a second name for a socket (a hard link to ours or
//! to another service's) is refused too: a guard written for one name cannot be dodged
//! through another, and the executor never calls itself. The checks are a few `lstat`s,
//! made when a connection is opened (connections are pooled), not per call.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::SERVICE_NAME;
use crate::access;
use crate::intent::is_service_name;

/// The sockets a target must not be: the executor's own.
#[derive(Debug, Clone, Default)]
pub struct OwnSockets {
    pub paths: Vec<PathBuf>,
}

/// A file's identity: device and inode.
pub type FileId = (u64, u64);

/// Whether `name` may be a target's name: a valid service name, not ours, not reserved.
pub fn is_target_name(name: &str) -> bool {
    is_service_name(name) && name != SERVICE_NAME && !access::is_reserved(name)
}

impl OwnSockets {
    /// Whether `id` is one of the executor's own sockets.
    fn contains(&self, id: FileId) -> bool {
        self.paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .any(|m| (m.dev(), m.ino()) == id)
    }

    /// The socket of `service` under `dir` and its identity, if it may be called (see the
    /// module docs); else why not.
    pub fn target(&self, dir: &Path, service: &str) -> Result<(PathBuf, FileId), String> {
        if !is_target_name(service) {
            return Err(format!("{service:?} is not a name a target may have"));
        }
        let service_dir = dir.join(service);
        let meta = std::fs::symlink_metadata(&service_dir).map_err(|e| format!("{}: {e}", service_dir.display()))?;
        if !meta.file_type().is_dir() {
            return Err(format!(
                "{} is not a directory (a link is not a second name for a service)",
                service_dir.display()
            ));
        }
        let socket = service_dir.join("rpc.sock");
        let meta = std::fs::symlink_metadata(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        if !meta.file_type().is_socket() {
            return Err(format!("{} is not a socket", socket.display()));
        }
        let id = (meta.dev(), meta.ino());
        if self.contains(id) {
            return Err(format!("{} is one of the executor's own sockets", socket.display()));
        }
        Ok((socket, id))
    }
}

/// Checks, once connected, that the listener is bound at `socket` itself (the file `id`
/// that was checked), not at another name for it.
pub fn check_peer(stream: &tokio::net::UnixStream, socket: &Path, id: FileId) -> Result<(), String> {
    let peer = stream.peer_addr().map_err(|e| format!("{}: {e}", socket.display()))?;
    let bound = peer
        .as_pathname()
        .ok_or_else(|| format!("{}: the listener has no path", socket.display()))?;
    // A hard link has the same inode under another path: both must agree.
    let same_file = std::fs::metadata(bound).is_ok_and(|m| (m.dev(), m.ino()) == id);
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let same_path = canonical(bound).is_some_and(|b| Some(b) == canonical(socket));
    if !(same_file && same_path) {
        return Err(format!(
            "{} is another name for the socket bound at {}",
            socket.display(),
            bound.display()
        ));
    }
    Ok(())
}
