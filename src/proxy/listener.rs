//! The listening sockets: created with the configured mode and group, replacing a stale socket
//! file but never a live one; or handed over by systemd socket activation (`LISTEN_FDS`, matched
//! to the configured listeners by path), so that the sockets outlive every restart of criguard.
//! Each carries its access: the role (methods callable through it) and the callers it admits,
//! which the server hands to every call and the access layer enforces.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use tokio::net::UnixListener;

use super::identity::Caller;
use super::rpc::MethodSet;

/// The methods a listener's callers may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub methods: MethodSet,
}

impl Role {
    /// `full`: everything, for the kubelet.
    pub fn full() -> Role {
        Role {
            name: "full".into(),
            methods: MethodSet::all(),
        }
    }

    /// `read-only`: calls that change nothing (the `read` class): no create, start, stop,
    /// remove, update, exec, attach, port-forward, pull.
    pub fn read_only() -> Role {
        Role {
            name: "read-only".into(),
            methods: MethodSet::parse(&["read"]).expect("valid class"),
        }
    }
}

/// One listening socket as configured: its role and who may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerAccess {
    pub path: PathBuf,
    pub role: Role,
    /// Uids admitted; with `allow_gids`, a caller matching either is admitted. Both `None`:
    /// anyone who can open the socket.
    pub allow_uids: Option<Vec<u32>>,
    pub allow_gids: Option<Vec<u32>>,
}

impl ListenerAccess {
    /// Whether `caller` may use this listener at all.
    pub fn admits(&self, caller: Option<&Caller>) -> bool {
        if self.allow_uids.is_none() && self.allow_gids.is_none() {
            return true;
        }
        let Some(caller) = caller else { return false };
        self.allow_uids
            .as_ref()
            .is_some_and(|uids| uids.contains(&caller.uid))
            || self
                .allow_gids
                .as_ref()
                .is_some_and(|gids| gids.contains(&caller.gid))
    }
}

/// Where the listening socket comes from.
#[derive(Debug)]
pub struct BoundListener {
    pub listener: UnixListener,
    /// The socket file criguard created itself, removed on exit unless another process has
    /// replaced it meanwhile. `None` for a socket passed by systemd, which systemd keeps.
    pub owned: Option<OwnedSocket>,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another process is already serving {0}; refusing to replace a live socket")]
    InUse(PathBuf),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("socket group {0:?} does not exist on this node")]
    UnknownGroup(String),
    #[error("systemd passed a listening socket that is not a unix stream socket: {0}")]
    Activation(io::Error),
}

/// Socket settings from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    pub path: PathBuf,
    /// Permission bits, 0o660 by default.
    pub mode: u32,
    /// Group owning the socket: a name or a numeric gid.
    pub group: Option<String>,
}

/// Binds each configured socket, or takes it from the sockets systemd passed: by path, or the
/// only one passed when one socket is configured. Passed sockets matching none are ignored.
pub async fn listen_all(sockets: &[&SocketOptions]) -> Result<Vec<BoundListener>, ListenError> {
    let mut inherited = from_systemd()?;
    let only_one = inherited.len() == 1 && sockets.len() == 1;
    let mut bound = Vec::with_capacity(sockets.len());
    for options in sockets {
        let position = if only_one {
            Some(0)
        } else {
            inherited
                .iter()
                .position(|(path, _)| path.as_deref() == Some(options.path.as_path()))
        };
        if let Some(position) = position {
            let (_, listener) = inherited.remove(position);
            bound.push(BoundListener {
                listener,
                owned: None,
                description: format!("{} (from systemd)", options.path.display()),
            });
            continue;
        }
        let listener = bind(options).await?;
        let inode = std::fs::metadata(&options.path)
            .map(|m| m.ino())
            .unwrap_or(0);
        bound.push(BoundListener {
            listener,
            owned: Some(OwnedSocket {
                path: options.path.clone(),
                inode,
            }),
            description: options.path.display().to_string(),
        });
    }
    for (path, _) in inherited {
        tracing::warn!(path = ?path, "systemd passed a socket that no listener is configured for; ignoring it");
    }
    Ok(bound)
}

/// The unix sockets systemd passed (`LISTEN_FDS`), with the path each is bound to.
fn from_systemd() -> Result<Vec<(Option<PathBuf>, UnixListener)>, ListenError> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for index in 0..fds.len() {
        let Some(std_listener) = fds
            .take_unix_listener(index)
            .map_err(ListenError::Activation)?
        else {
            continue;
        };
        std_listener
            .set_nonblocking(true)
            .map_err(ListenError::Activation)?;
        let path = std_listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
        let listener = UnixListener::from_std(std_listener).map_err(ListenError::Activation)?;
        listeners.push((path, listener));
    }
    Ok(listeners)
}

async fn bind(options: &SocketOptions) -> Result<UnixListener, ListenError> {
    let path = &options.path;
    let io_err = |action: &'static str| {
        move |source| ListenError::Io {
            path: path.clone(),
            action,
            source,
        }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating the socket directory"))?;
    }
    if path.exists() {
        // A socket someone still answers on is live: leave it alone.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ListenError::InUse(path.clone()));
        }
        tracing::info!(path = %path.display(), "replacing stale socket file");
        std::fs::remove_file(path).map_err(io_err("removing the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(options.mode))
        .map_err(io_err("setting the socket mode"))?;
    if let Some(group) = &options.group {
        let gid = resolve_group(group)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(io_err("setting the socket group"))?;
    }
    Ok(listener)
}

/// A numeric gid, or a group name looked up as the C library does (`getgrnam_r`: /etc/group,
/// and LDAP or sssd groups where the node's NSS has them).
pub fn resolve_group(group: &str) -> Result<u32, ListenError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        _ => Err(ListenError::UnknownGroup(group.to_string())),
    }
}

/// A socket file criguard created.
#[derive(Debug)]
pub struct OwnedSocket {
    pub path: PathBuf,
    inode: u64,
}

impl OwnedSocket {
    /// Removes the socket file on a clean exit, unless a newer criguard has already replaced it
    /// with its own.
    pub fn remove(&self) {
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if !ours {
            return;
        }
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %err, "could not remove the socket file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: PathBuf) -> SocketOptions {
        SocketOptions {
            path,
            mode: 0o660,
            group: None,
        }
    }

    #[tokio::test]
    async fn creates_the_socket_with_its_mode_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/criguard.sock");
        let _listener = bind(&options(path.clone())).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("criguard.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // stale file left behind
        let live = bind(&options(path.clone())).await.unwrap();
        let err = bind(&options(path.clone())).await.unwrap_err();
        assert!(matches!(err, ListenError::InUse(_)), "{err}");
        assert!(err.to_string().contains("already serving"));
        drop(live);
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group("1234").unwrap(), 1234);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(
            resolve_group("no-such-group-criguard"),
            Err(ListenError::UnknownGroup(_))
        ));
    }
}
