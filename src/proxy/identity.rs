//! Who is calling: the peer's uid, gid and pid from the unix socket (SO_PEERCRED), read once per
//! connection, and the executable from /proc. Every request of the connection carries it in its
//! extensions, for the logs, the audit trail, the listeners' allowed callers, limits and
//! policies.

use std::fmt;
use std::sync::Arc;

use tokio::net::UnixStream;

/// The process at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// `None` when the kernel did not say (a peer in another pid namespace can show as 0).
    pub pid: Option<i32>,
    /// `/proc/PID/exe`, when it can be read.
    pub exe: Option<Arc<str>>,
}

impl Caller {
    /// Reads the credentials of the peer of `stream`; `None` if the kernel gives none.
    pub fn of(stream: &UnixStream) -> Option<Arc<Caller>> {
        let cred = stream.peer_cred().ok()?;
        let pid = cred.pid().filter(|&p| p > 0);
        let exe = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok());
        Some(Arc::new(Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            exe: exe.map(|e| e.display().to_string().into()),
        }))
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid={pid}")?;
        }
        if let Some(exe) = &self.exe {
            write!(f, " exe={exe}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peer_is_this_very_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let caller = Caller::of(&a).unwrap();
        assert_eq!(caller.pid, Some(std::process::id() as i32));
        assert_eq!(
            caller.uid,
            std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap()
        );
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            caller.exe.as_deref(),
            Some(exe.display().to_string().as_str())
        );
    }
}
