//! Process groups: the handle of a launched spark-submit, stopping a group with everything it
//! started (also what left the group), and stopping what an earlier run of the gateway left.

use std::path::Path;
use std::time::Duration;

/// A launched spark-submit: its process group and a way to learn when it exits.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    /// The process group id (= the pid of the supervisor, or of spark-submit).
    pub pgid: i32,
    /// Who leads the group, as a record keeps it to find it again after a restart.
    pub identity: Option<ProcessIdentity>,
    pub(super) exited: tokio::sync::watch::Receiver<Option<i32>>,
}

/// A process as it can be recognised again later: its pid, when it started (clock ticks after
/// boot, from `/proc/<pid>/stat`) and the boot it started in. A pid the kernel gave to another
/// process since, or one from before a reboot, does not match.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: i32,
    /// Its start time, in clock ticks after boot.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was seen.
    pub boot_id: String,
}

/// This boot's id.
fn boot_id() -> Option<String> {
    Some(std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string())
}

/// `(state, start time)` of `pid`, from /proc.
fn state_and_start(pid: i32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields after the command: state (3rd of the line) ... starttime (22nd).
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

impl ProcessIdentity {
    /// The identity of live process `pid`.
    pub fn of(pid: i32) -> Option<Self> {
        let (_, start_time) = state_and_start(pid)?;
        Some(Self { pid, start_time, boot_id: boot_id()? })
    }

    /// Whether this very process still runs (not a zombie, not a later one with its pid).
    pub fn is_alive(&self) -> bool {
        boot_id().is_some_and(|b| b == self.boot_id)
            && state_and_start(self.pid)
                .is_some_and(|(state, start)| start == self.start_time && state != "Z" && state != "X")
    }
}

/// How spark-submit ended: its exit code, or 128+signal.
pub type ExitCode = i32;

impl ProcessHandle {
    /// Takes back a launch an earlier run of the gateway started under the supervisor: the
    /// group of `identity`, if it still runs; its end is noticed by watching it, and its exit
    /// status read from what the supervisor recorded beside `log` (-1 when it recorded none:
    /// it was killed). None when the process is gone already.
    pub fn adopt(identity: ProcessIdentity, log: &Path) -> Option<Self> {
        if !identity.is_alive() {
            return None;
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (watched, log) = (identity.clone(), log.to_path_buf());
        tokio::spawn(async move {
            while watched.is_alive() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = tx.send(Some(super::supervisor::recorded_status(&log).unwrap_or(-1)));
        });
        Some(Self { pgid: identity.pid, identity: Some(identity), exited: rx })
    }

    /// Waits until the process has exited (returns immediately if it has).
    pub async fn wait(&self) -> ExitCode {
        let mut rx = self.exited.clone();
        loop {
            if let Some(code) = *rx.borrow_and_update() {
                return code;
            }
            if rx.changed().await.is_err() {
                return -1;
            }
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Sends `signal` to the whole process group (the JVM, the Python driver, anything they
    /// started). Errors (e.g. the group is already gone) are ignored.
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), signal);
    }

    /// Whether any process of the group is still alive.
    pub fn group_alive(&self) -> bool {
        group_alive(self.pgid)
    }

    /// Stops the group and everything it started: SIGTERM, then SIGKILL after `grace`, then
    /// waits (bounded) until none of it is left. Descendants that left the group (PySpark's
    /// worker daemon calls setpgid) are found through their parents and stopped too.
    pub async fn kill_group(&self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        let escaped: Vec<i32> = descendants_of_group(self.pgid);
        let signal_all = |signal: Signal| {
            self.signal_group(signal);
            for pid in &escaped {
                let _ = kill(nix::unistd::Pid::from_raw(*pid), signal);
            }
        };
        let alive = || self.group_alive() || escaped.iter().any(|p| pid_alive(*p));
        signal_all(Signal::SIGTERM);
        // A stopped (paused) process only acts on its SIGTERM once it runs again.
        signal_all(Signal::SIGCONT);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && alive() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal_all(Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline && alive() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `(pid, state, ppid, pgrp)` of every process, from /proc.
fn process_table() -> Vec<(i32, String, i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((pid, f.first()?.to_string(), f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?))
        })
        .collect()
}

/// Every live process of process group `pgid` and every live descendant of one, whether or not
/// it is still in the group (PySpark's worker daemon leaves it).
pub fn processes_of_group_tree(pgid: i32) -> Vec<i32> {
    let mut all: Vec<i32> =
        process_table().iter().filter(|(_, state, _, g)| *g == pgid && state != "Z").map(|(p, ..)| *p).collect();
    all.extend(descendants_of_group(pgid));
    all
}

/// Stops every process left behind by sessions and batches of an earlier run of the gateway on
/// `data_dir` (found by their command lines, which name files in `<data_dir>/sessions/<id>/` or
/// `<data_dir>/batches/<id>/`), with their process groups and descendants, but those of the
/// sessions and batches `spare(kind, id)` names (`kind`: `sessions` or `batches`), which
/// recovery takes back. What nothing takes back could only go on using CPU, memory and ports —
/// a batch, which has no channel to lose, for ever — and a driver whose user code disabled its
/// own shutdown as well. Returns how many processes were found. Call it before anything is
/// launched.
pub fn stop_orphans(data_dir: &Path, spare: &dyn Fn(&str, u32) -> bool) -> usize {
    use nix::sys::signal::{kill, killpg, Signal};
    let Ok(root) = std::path::absolute(data_dir) else { return 0 };
    let prefixes = ["sessions", "batches"].map(|kind| (kind, format!("{}/", root.join(kind).display())));
    let own = std::process::id() as i32;
    let mut found: Vec<(i32, i32)> = Vec::new();
    for (pid, _, _, pgid) in process_table() {
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        // Only a launch's own processes: its supervisor, spark-submit (and bwrap) with the
        // launch's properties file, the session driver's program. (An operator's `tail -f` of
        // a log is none of them.) What they started goes with their group.
        let supervisor = args.get(1).is_some_and(|a| a == "supervise");
        let named = args.iter().any(|arg| {
            prefixes.iter().any(|(kind, p)| {
                let Some((id, file)) = arg.strip_prefix(p.as_str()).and_then(|rest| rest.split_once('/')) else {
                    return false;
                };
                let ours = supervisor || file == super::PROPERTIES_FILE || file == crate::driver::FILE_NAME;
                ours && id.parse::<u32>().is_ok_and(|id| !spare(kind, id))
            })
        });
        if named {
            found.push((pid, pgid));
        }
    }
    for (pid, pgid) in &found {
        let escaped = descendants_of_group(*pgid);
        if *pgid > 1 && *pgid != own {
            let _ = killpg(nix::unistd::Pid::from_raw(*pgid), Signal::SIGKILL);
        }
        for p in escaped.iter().chain(std::iter::once(pid)) {
            let _ = kill(nix::unistd::Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
    found.len()
}

/// Live processes descended from process group `pgid` that are no longer in it.
pub fn descendants_of_group(pgid: i32) -> Vec<i32> {
    let table = process_table();
    let mut family: std::collections::HashSet<i32> =
        table.iter().filter(|(_, state, _, g)| *g == pgid && state != "Z").map(|(p, ..)| *p).collect();
    let members = family.clone();
    loop {
        let before = family.len();
        for (pid, state, ppid, _) in &table {
            if state != "Z" && family.contains(ppid) {
                family.insert(*pid);
            }
        }
        if family.len() == before {
            break;
        }
    }
    family.into_iter().filter(|p| !members.contains(p)).collect()
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.split_whitespace().next().unwrap_or("Z").to_string()))
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Whether any non-zombie process is in process group `pgid` (read from /proc, because
/// `kill(-pgid, 0)` also succeeds for zombies nobody has reaped yet).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok();
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return false };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[0] != "X" && fields[2] == pgid.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::process::Command;

    #[tokio::test]
    async fn processes_an_earlier_run_left_behind_are_stopped_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let spawn = |arg: std::path::PathBuf, own_group: bool| {
            let mut cmd = std::process::Command::new("sh");
            // `$0` is the path: it shows in /proc/<pid>/cmdline as a driver's files would.
            cmd.args(["-c", "sleep 600 & wait"]).arg(arg);
            if own_group {
                use std::os::unix::process::CommandExt;
                cmd.process_group(0);
            }
            cmd.spawn().unwrap()
        };
        let mut orphan = spawn(data.join("sessions/3/spark-launch.properties"), true);
        let mut recovered = spawn(data.join("sessions/4/spark-launch.properties"), true);
        let mut batch = spawn(data.join("batches/12/spark-launch.properties"), true);
        let mut reader = spawn(data.join("sessions/5/session.log"), true);
        let mut bystander = spawn(dir.path().join("elsewhere/sessions/3/x"), true);
        let mut other_files = spawn(data.join("state/next-session-id"), true);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(stop_orphans(&data, &|kind, id| (kind, id) == ("sessions", 4)), 2);
        for child in [&mut orphan, &mut batch] {
            let status = child.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9));
        }
        // SIGKILL is delivered at once but a loaded machine may take a moment to schedule the
        // dying grandchildren; wait for them rather than read /proc in the same instant.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while (group_alive(orphan.id() as i32) || group_alive(batch.id() as i32))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!group_alive(orphan.id() as i32) && !group_alive(batch.id() as i32), "their children go too");
        for child in [&mut bystander, &mut other_files, &mut recovered, &mut reader] {
            assert!(child.try_wait().unwrap().is_none(), "unrelated processes live on");
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(bystander.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        for child in [&other_files, &recovered, &reader] {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    #[tokio::test]
    async fn process_group_is_killed_whole() {
        // A shell that starts a grandchild in the same group stands in for spark-submit's JVM
        // and its Python driver.
        // The second grandchild leaves the group, as PySpark's worker daemon does.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 300 & setsid sleep 301 & sleep 300"]).process_group(0).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let pgid = child.id().unwrap() as i32;
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = tx.send(Some(0));
        });
        let handle = ProcessHandle { pgid, identity: None, exited: rx };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(handle.group_alive());
        let escaped = descendants_of_group(pgid);
        assert_eq!(escaped.len(), 1, "the setsid child is found through its parent");
        handle.kill_group(Duration::from_secs(2)).await;
        assert!(!handle.group_alive());
        assert!(!pid_alive(escaped[0]), "the escaped descendant is stopped too");
        handle.wait().await;
        assert!(handle.has_exited());
    }
}
