//! The supervisor: `sparkgate supervise`, a small parent the gateway puts between itself and
//! each spark-submit, so that a launch outlives the gateway and what happens meanwhile is not
//! lost.
//!
//! - It makes a session (and process group) of its own without a terminal, and spark-submit
//!   (with a sandbox, bwrap) runs in that group: the gateway stops a launch by its group, and
//!   a gateway that dies (even by SIGKILL) takes none of it along.
//! - spark-submit's output goes through it into the launch's log file (appended, each line cut
//!   at [`MAX_LOG_LINE_BYTES`], the file bounded as the gateway bounds it): no pipe leads to
//!   the gateway, so a dead reader cannot kill a driver with SIGPIPE or block it on a full pipe.
//!   The gateway follows the file (see [`super::LogBuffer`]).
//! - When spark-submit ends, it writes the exit status (or 128 + signal) to [`EXIT_STATUS_FILE`]
//!   beside the log, durably, and exits with it: a batch that ends while the gateway is down
//!   ends `success` or `dead` after the restart as it would have with the gateway up.
//!
//! The log and the status file are in the launch's own directory, which a sandboxed driver
//! sees read-only: user code can write to neither. SIGTERM, SIGINT and SIGHUP are caught and
//! ignored, so a stop (SIGTERM to the group) lets the supervisor see spark-submit's own end; the
//! SIGKILL a stop ends with stops it too.

use super::log::{clip_text, MAX_LOG_LINE_BYTES};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// The file beside a launch's log that holds spark-submit's exit status once it ended.
pub const EXIT_STATUS_FILE: &str = "exit-status";

/// What `sparkgate supervise` is told (on its command line: paths and a number, never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervise {
    /// The log file (exists; appended to).
    pub log: PathBuf,
    /// The size the log file may reach.
    pub max_log_bytes: u64,
    /// The program to run (spark-submit, or bwrap).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl Supervise {
    /// The supervisor's own arguments (after the program's path) for this launch.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "supervise".into(),
            "--log".into(),
            self.log.clone().into_os_string(),
            "--max-log-bytes".into(),
            self.max_log_bytes.to_string().into(),
            "--".into(),
            self.program.clone(),
        ];
        args.extend(self.args.iter().cloned());
        args
    }

    /// Where the exit status is written.
    pub fn status_file(&self) -> PathBuf {
        status_file_beside(&self.log)
    }
}

/// The exit-status file of the launch whose log is `log`.
pub fn status_file_beside(log: &Path) -> PathBuf {
    log.with_file_name(EXIT_STATUS_FILE)
}

/// The exit status a supervisor recorded beside `log`, if it did.
pub fn recorded_status(log: &Path) -> Option<i32> {
    std::fs::read_to_string(status_file_beside(log)).ok()?.trim().parse().ok()
}

/// The log file as the supervisor writes it: appended, bounded.
struct LogFile {
    file: Option<std::fs::File>,
    bytes: u64,
    max: u64,
}

impl LogFile {
    fn line(&mut self, line: &str) {
        let Some(file) = self.file.as_mut() else { return };
        let size = line.len() as u64 + 1;
        if self.bytes.saturating_add(size) <= self.max {
            self.bytes += size;
            let _ = file.write_all(format!("{line}\n").as_bytes());
            return;
        }
        let _ = writeln!(
            file,
            "sparkgate: this log reached its size limit ({} bytes, sessions.max_log_file_bytes); later output is not kept",
            self.max
        );
        self.file = None;
    }
}

/// The whole `sparkgate supervise` process: a session of its own (no terminal, and a process
/// group the gateway stops as one; the gateway starts it outside any group of its own, so this
/// cannot fail for being a leader already), then [`run`].
pub fn main(task: &Supervise) -> i32 {
    let _ = nix::unistd::setsid();
    run(task)
}

/// Runs spark-submit as the supervisor does and returns the exit code to end with: spark-submit's.
pub fn run(task: &Supervise) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sparkgate supervise: {e}");
            return 70;
        }
    };
    runtime.block_on(supervise(task))
}

async fn supervise(task: &Supervise) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    // Caught, never acted on: the stop's SIGKILL ends the supervisor, spark-submit's end is
    // still seen and recorded after a SIGTERM. (Handlers, unlike an ignored signal, do not
    // pass to spark-submit.)
    let _held: Vec<_> = [SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup()]
        .into_iter()
        .filter_map(|kind| signal(kind).ok())
        .collect();
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&task.log)
        .and_then(|file| Ok((file.metadata()?.len(), file)));
    let (bytes, file) = match opened {
        Ok((bytes, file)) => (bytes, Some(file)),
        Err(e) => {
            eprintln!("sparkgate supervise: opening {}: {e}", task.log.display());
            (0, None)
        }
    };
    let log = Arc::new(Mutex::new(LogFile { file, bytes, max: task.max_log_bytes }));
    let mut cmd = tokio::process::Command::new(&task.program);
    cmd.args(&task.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let code = match cmd.spawn() {
        Ok(mut child) => {
            let readers: Vec<_> = [
                child.stdout.take().map(|out| tokio::spawn(copy_lines(out, log.clone()))),
                child.stderr.take().map(|err| tokio::spawn(copy_lines(err, log.clone()))),
            ]
            .into_iter()
            .flatten()
            .collect();
            let code = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
                }
                Err(_) => -1,
            };
            // What it printed last; a process it left behind may hold the pipes open for ever,
            // so this is not waited for long.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), futures_util::future::join_all(readers)).await;
            code
        }
        Err(e) => {
            let line = format!("sparkgate: could not start {}: {e}", Path::new(&task.program).display());
            log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).line(&line);
            127
        }
    };
    if let Err(e) = crate::fs::write_file(&task.status_file(), format!("{code}\n").as_bytes(), 0o600) {
        eprintln!("sparkgate supervise: recording the exit status: {e}");
    }
    code
}

/// Copies a stream into the log line by line (whatever its bytes: not UTF-8 is replaced), a
/// line longer than [`MAX_LOG_LINE_BYTES`] cut into pieces.
async fn copy_lines(stream: impl AsyncRead + Unpin, log: Arc<Mutex<LogFile>>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LOG_LINE_BYTES as u64).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line = clip_text(text.trim_end_matches(['\n', '\r']), MAX_LOG_LINE_BYTES);
                log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).line(&line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_name_paths_and_the_program_only() {
        let task = Supervise {
            log: "/d/sessions/3/session.log".into(),
            max_log_bytes: 1024,
            program: "/spark/bin/spark-submit".into(),
            args: vec!["--master".into(), "local[2]".into()],
        };
        let args: Vec<String> = task.to_args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "supervise",
                "--log",
                "/d/sessions/3/session.log",
                "--max-log-bytes",
                "1024",
                "--",
                "/spark/bin/spark-submit",
                "--master",
                "local[2]"
            ]
        );
        assert_eq!(task.status_file(), Path::new("/d/sessions/3/exit-status"));
    }

    #[test]
    fn output_goes_to_the_bounded_log_and_the_exit_status_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("batch.log");
        std::fs::write(&log, "").unwrap();
        let task = Supervise {
            log: log.clone(),
            max_log_bytes: 300,
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo out; echo err >&2; sleep 0.3; printf 'bad \\377\\n'; i=0; while [ $i -lt 50 ]; do echo line-$i; i=$((i+1)); done; exit 3".into(),
            ],
        };
        // In a thread: `run` makes a runtime of its own.
        let code = std::thread::spawn(move || run(&task)).join().unwrap();
        assert_eq!(code, 3);
        assert_eq!(recorded_status(&log), Some(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out\n") && text.contains("err\n") && text.contains("bad \u{fffd}\n"), "{text}");
        assert!(text.len() <= 300 + 200, "bounded: {}", text.len());
        assert!(text.lines().last().unwrap().contains("size limit"), "{text}");
        assert!(!text.contains("line-49"), "{text}");
    }
}
