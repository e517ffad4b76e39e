//! Whether a TCP port on this host is an application's own listening socket, from /proc.
//!
//! The proxy connects to `127.0.0.1:<port>`. A port a driver names (or its output prints) is
//! the user's word; were it taken as is, anyone able to run code in a session could make the
//! gateway send signed requests to any service on loopback. So a port counts only if every
//! listening socket a connection to `127.0.0.1:<port>` could reach belongs to a process of the
//! application's own process group or one of their descendants (the JVM, the Python driver).

use crate::engine::launch::processes_of_group_tree;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP state `LISTEN` in /proc/net/tcp.
const LISTEN: &str = "0A";

/// Whether `port` is listened on, for connections to 127.0.0.1, only by sockets that processes
/// of group `pgid` (or their descendants) hold — and by at least one.
pub fn tree_listens_on(pgid: i32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(table) = std::fs::read_to_string(file) {
            inodes.extend(listening_inodes(&table, v6, port));
        }
    }
    if inodes.is_empty() || pgid <= 0 {
        return false;
    }
    let mut owned = HashSet::new();
    for pid in processes_of_group_tree(pgid) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let inode =
                target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                owned.insert(inode);
            }
        }
    }
    owned == inodes
}

/// The inodes of the listening sockets in a /proc/net/tcp{,6} table on `port` that a
/// connection to 127.0.0.1 may reach: bound to 127.0.0.1, to the wildcard address, or (tcp6)
/// to their IPv4-mapped forms.
fn listening_inodes(table: &str, v6: bool, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let (addr, hex_port) = local.split_once(':')?;
            if *state != LISTEN || u16::from_str_radix(hex_port, 16).ok()? != port {
                return None;
            }
            reaches_loopback_v4(parse_address(addr, v6)?).then(|| inode.parse().ok()).flatten()
        })
        .collect()
}

/// An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in host byte order.
fn parse_address(hex: &str, v6: bool) -> Option<IpAddr> {
    let words = if v6 { 4 } else { 1 };
    if hex.len() != words * 8 {
        return None;
    }
    let mut bytes = Vec::with_capacity(words * 4);
    for i in 0..words {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes.extend(word.to_ne_bytes());
    }
    Some(if v6 {
        IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?)
    } else {
        IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?)
    })
}

/// Whether a socket listening on `addr` may accept a connection to 127.0.0.1.
fn reaches_loopback_v4(addr: IpAddr) -> bool {
    let v4 = |a: Ipv4Addr| a == Ipv4Addr::LOCALHOST || a.is_unspecified();
    match addr {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => a == Ipv6Addr::UNSPECIFIED || a.to_ipv4_mapped().is_some_and(v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::Duration;

    #[test]
    fn proc_tables_are_read_as_the_kernel_writes_them() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 0100007F:0FC8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0\n\
                  1: 00000000:0FC8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 112 1 0\n\
                  2: 0200000A:0FC8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 113 1 0\n\
                  3: 0100007F:0FC8 0100007F:B0A7 01 00000000:00000000 00:00000000 00000000     0        0 114 1 0\n\
                  4: 0100007F:0FC9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 115 1 0\n";
        // On this (little-endian) host 0100007F is 127.0.0.1; 0200000A (10.0.0.2) is not loopback.
        assert_eq!(listening_inodes(v4, false, 4040), vec![111, 112]);
        let v6 = "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode\n\
                  0: 0000000000000000FFFF00000100007F:0FC8 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 201 1\n\
                  1: 00000000000000000000000000000000:0FC8 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 202 1\n\
                  2: 00000000000000000000000001000000:0FC8 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 203 1\n";
        // ::1 does not take connections to 127.0.0.1.
        assert_eq!(listening_inodes(v6, true, 4040), vec![201, 202]);
        assert_eq!(listening_inodes("header only\n", false, 4040), Vec::<u64>::new());
    }

    /// A real process (in its own process group, like spark-submit) that listens on a port of
    /// its own and prints it.
    fn listening_child() -> (std::process::Child, i32, u16) {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket, subprocess, sys, time\n\
                 s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
                 # A grandchild keeps the group busy, as the Python driver does under the JVM.\n\
                 subprocess.Popen(['sleep', '60'])\n\
                 print(s.getsockname()[1], flush=True)\n\
                 time.sleep(60)\n",
            ])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let pgid = child.id() as i32;
        (child, pgid, line.trim().parse().unwrap())
    }

    #[test]
    fn only_the_applications_own_listening_socket_counts() {
        let (mut child, pgid, port) = listening_child();
        assert!(tree_listens_on(pgid, port), "the child's own socket");
        // A socket of another process (this test) on loopback is not the child's.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other_port = other.local_addr().unwrap().port();
        assert!(!tree_listens_on(pgid, other_port), "someone else's port");
        // A connected (not listening) socket, a closed port, and no process group at all.
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(other);
        assert!(!tree_listens_on(pgid, other_port), "nobody listens there now");
        assert!(!tree_listens_on(0, port));
        assert!(!tree_listens_on(i32::MAX, port), "another group does not own it");
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tree_listens_on(pgid, port) && tokio::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!tree_listens_on(pgid, port), "gone with its process");
    }
}
