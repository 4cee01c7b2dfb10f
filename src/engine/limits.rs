//! Resource limits for containers on rootful Podman.
//!
//! Docker gives containers its daemon's limits. Rootful Podman asks runc for
//! 1048576 open files and 4194304 processes, and runc can only grant what the
//! Podman process itself may have: where its hard limits are lower (containers,
//! CI sandboxes, systemd defaults) every container fails to start with
//! "error setting rlimit type 7" (open files) or "type 6" (processes). So on
//! Podman infralab asks for the service's own hard limits, read from
//! /proc for the process listening on the engine's unix socket, or this
//! process's limits when that process cannot be found.

use bollard::models::ResourcesUlimits;

/// `nofile` and `nproc` ulimits for containers of the local Podman service
/// listening on `socket` (a path, `unix://` stripped).
pub fn for_podman(socket: &str) -> Vec<ResourcesUlimits> {
    let service = listener_pid(socket)
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/limits")).ok());
    let own = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let limits = service.unwrap_or(own);
    [
        ("nofile", "Max open files", 1u64 << 20),
        ("nproc", "Max processes", 1u64 << 22),
    ]
    .into_iter()
    .filter_map(|(name, row, podman_default)| {
        let n = hard_limit(&limits, row)?.min(podman_default);
        let n = i64::try_from(n).ok()?;
        Some(ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(n),
            hard: Some(n),
        })
    })
    .collect()
}

/// The hard limit in a `/proc/PID/limits` row ("unlimited" is no cap).
fn hard_limit(limits: &str, row: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    let hard = line[row.len()..].split_whitespace().nth(1)?;
    match hard {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The process holding the listening unix socket at `path`: its inode from
/// /proc/net/unix, then the process with a descriptor on that inode.
fn listener_pid(path: &str) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path; St 01 = listening.
        (f.len() >= 8 && f[7] == path && f[5] == "01").then(|| f[6].to_string())
    })?;
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(p.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == wanted))
            .then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max processes             32768                32768                processes \n\
        Max open files            1024                 20000                files     \n\
        Max locked memory         unlimited            unlimited            bytes     \n";

    #[test]
    fn hard_limits_are_read_from_proc() {
        assert_eq!(hard_limit(LIMITS, "Max open files"), Some(20000));
        assert_eq!(hard_limit(LIMITS, "Max processes"), Some(32768));
        assert_eq!(hard_limit(LIMITS, "Max locked memory"), Some(u64::MAX));
        assert_eq!(hard_limit(LIMITS, "Max nothing"), None);
    }

    #[test]
    fn the_listener_of_a_socket_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(
            listener_pid(path.to_str().unwrap()),
            Some(std::process::id())
        );
        assert_eq!(listener_pid("/nonexistent.sock"), None);
    }
}
