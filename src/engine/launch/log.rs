//! A process's output: read line by line (whatever its bytes), kept as a bounded tail in memory
//! and mirrored to a log file of bounded size — or, for a launch under the supervisor (see
//! [`super::supervisor`]), which writes the output into the file itself, the file followed:
//! the gateway's own notes are appended to it and the tail is read back from it, so the file
//! is the one record of the launch's output, in order, also across a restart of the gateway.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest log line kept, in bytes; longer text is cut (output lines of a process are split
/// at this size instead, see [`read_lines`]).
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, the cut marked with `…`.
pub fn clip_text(text: &str, max: usize) -> String {
    const MARK: &str = "…";
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// Most bytes of lines a [`LogBuffer`] keeps in memory, whatever its line cap (1000 lines of
/// 64 KiB would be 64 MiB).
pub const MAX_LOG_TAIL_BYTES: usize = 4 * 1024 * 1024;

/// A bounded tail of a process's output, mirrored to a log file of bounded size.
#[derive(Debug)]
pub struct LogBuffer {
    inner: Mutex<LogInner>,
    /// The file it follows, if it does.
    followed: Option<std::path::PathBuf>,
}

#[derive(Debug)]
struct LogInner {
    lines: VecDeque<String>,
    /// Bytes of `lines`.
    bytes: usize,
    cap: usize,
    file: Option<std::fs::File>,
    /// Bytes written to `file`, and how many it may take.
    file_bytes: u64,
    max_file_bytes: u64,
    /// Set when the file is followed: the tail is what is read back from it.
    follow: Option<Follow>,
}

/// Reading a followed log file back.
#[derive(Debug)]
struct Follow {
    reader: std::fs::File,
    /// Where the next line starts.
    offset: u64,
    /// Lines read back that [`LogBuffer::take_fresh`] has not handed out yet (bounded).
    fresh: VecDeque<String>,
}

/// Most lines read back and not yet taken by [`LogBuffer::take_fresh`] (the oldest go).
const MAX_FRESH_LINES: usize = 10_000;

/// Most bytes read back from a followed file at once.
const MAX_READ_BACK_BYTES: u64 = 8 * 1024 * 1024;

impl LogInner {
    fn new(cap: usize, file: Option<std::fs::File>, max_file_bytes: u64) -> Self {
        Self { lines: VecDeque::new(), bytes: 0, cap: cap.max(1), file, file_bytes: 0, max_file_bytes, follow: None }
    }

    /// Adds a line to the in-memory tail, the oldest going beyond the caps.
    fn keep(&mut self, piece: String) {
        self.bytes += piece.len();
        self.lines.push_back(piece);
        while self.lines.len() > self.cap || (self.bytes > MAX_LOG_TAIL_BYTES && self.lines.len() > 1) {
            let Some(gone) = self.lines.pop_front() else { break };
            self.bytes -= gone.len();
        }
    }

    /// A followed file: reads what was appended since the last time (whole lines only; a line
    /// longer than [`MAX_LOG_LINE_BYTES`] without an end is taken as it is).
    fn catch_up(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        loop {
            let Some(follow) = self.follow.as_mut() else { return };
            let mut buf = Vec::new();
            let read = follow
                .reader
                .seek(SeekFrom::Start(follow.offset))
                .and_then(|_| (&mut follow.reader).take(MAX_READ_BACK_BYTES).read_to_end(&mut buf));
            if read.is_err() || buf.is_empty() {
                return;
            }
            let end = match buf.iter().rposition(|b| *b == b'\n') {
                Some(last) => last + 1,
                None if buf.len() > MAX_LOG_LINE_BYTES => buf.len(),
                None => return,
            };
            follow.offset += end as u64;
            let more = buf.len() as u64 == MAX_READ_BACK_BYTES;
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            for line in text.lines() {
                let piece = clip_text(line, MAX_LOG_LINE_BYTES);
                if let Some(follow) = self.follow.as_mut() {
                    if follow.fresh.len() >= MAX_FRESH_LINES {
                        follow.fresh.pop_front();
                    }
                    follow.fresh.push_back(piece.clone());
                }
                self.keep(piece);
            }
            if !more {
                return;
            }
        }
    }

    /// Writes a line to the file while it has room; the line that fills it says so, and the
    /// file takes nothing more (the in-memory tail goes on).
    fn write(&mut self, line: &str) {
        let Some(file) = self.file.as_mut() else { return };
        if self.follow.is_some() {
            // Another writer (the supervisor) appends to it too.
            self.file_bytes = file.metadata().map_or(self.file_bytes, |m| m.len());
        }
        let size = line.len() as u64 + 1;
        if self.file_bytes.saturating_add(size) <= self.max_file_bytes {
            self.file_bytes += size;
            let _ = writeln!(file, "{line}");
            return;
        }
        let _ = writeln!(
            file,
            "sparkgate: this log reached its size limit ({} bytes, sessions.max_log_file_bytes); later output is not kept",
            self.max_file_bytes
        );
        self.file = None;
    }
}

impl LogBuffer {
    /// A buffer keeping `cap` lines, mirrored to `file` up to `max_file_bytes`; the file must
    /// not exist yet: a new session or batch never appends to a log an earlier one left behind.
    pub fn create(cap: usize, file: &Path, max_file_bytes: u64) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file)?;
        Ok(Arc::new(Self { inner: Mutex::new(LogInner::new(cap, Some(file), max_file_bytes)), followed: None }))
    }

    /// A buffer that follows `file`, which another process (the supervisor) writes a launch's
    /// output into, keeping its last `cap` lines; [`LogBuffer::push`] appends to the file too,
    /// up to `max_file_bytes`. With `create`, the file must not exist yet (a new launch never
    /// appends to a log an earlier one left behind) and is made 0600; without, it is an
    /// existing launch's log (after a restart) and its tail is read back first.
    pub fn follow(cap: usize, file: &Path, max_file_bytes: u64, create: bool) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let writer = std::fs::OpenOptions::new()
            .append(true)
            .create_new(create)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(file)?;
        let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(file)?;
        let len = reader.metadata()?.len();
        // After a restart: the last lines, from the start of a line.
        let offset = match len.checked_sub(MAX_LOG_TAIL_BYTES as u64) {
            Some(start) if start > 0 => {
                use std::io::{BufRead, Seek, SeekFrom};
                reader.seek(SeekFrom::Start(start))?;
                let skipped = std::io::BufReader::new(&reader).skip_until(b'\n')?;
                start + skipped as u64
            }
            _ => 0,
        };
        let mut inner = LogInner::new(cap, Some(writer), max_file_bytes);
        inner.follow = Some(Follow { reader, offset, fresh: VecDeque::new() });
        inner.catch_up();
        if let Some(follow) = inner.follow.as_mut() {
            follow.fresh.clear(); // what an earlier run already saw
        }
        Ok(Arc::new(Self { inner: Mutex::new(inner), followed: Some(file.to_path_buf()) }))
    }

    /// The file the buffer follows, if it does (see [`LogBuffer::follow`]).
    pub fn followed_file(&self) -> Option<&Path> {
        self.followed.as_deref()
    }

    /// A followed file's lines read back since the last call (the process's output, and the
    /// notes pushed meanwhile), for whoever watches the output.
    pub fn take_fresh(&self) -> Vec<String> {
        let Ok(mut inner) = self.inner.lock() else { return Vec::new() };
        inner.catch_up();
        inner.follow.as_mut().map(|f| f.fresh.drain(..).collect()).unwrap_or_default()
    }

    /// A buffer keeping `cap` lines, appending to `file` if given (without a size limit).
    pub fn new(cap: usize, file: Option<&Path>) -> Arc<Self> {
        let file = file.and_then(|p| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(p).ok()
        });
        Arc::new(Self { inner: Mutex::new(LogInner::new(cap, file, u64::MAX)), followed: None })
    }

    /// Appends a line — or several, if the text holds line breaks: one entry never spans
    /// lines, so no text can forge a line of its own in the log file. Each is cut at
    /// [`MAX_LOG_LINE_BYTES`]; the tail keeps at most its line cap and [`MAX_LOG_TAIL_BYTES`].
    pub fn push(&self, line: impl Into<String>) {
        let line = line.into();
        let Ok(mut inner) = self.inner.lock() else { return };
        for piece in line.split('\n') {
            let piece = clip_text(piece.trim_end_matches('\r'), MAX_LOG_LINE_BYTES);
            inner.write(&piece);
            // Followed, a line the file took comes back with it; one it no longer takes
            // (full) is kept here still.
            if inner.follow.is_none() || inner.file.is_none() {
                inner.keep(piece);
            }
        }
        // Followed: the line comes back with the file, in its place among the output.
        inner.catch_up();
    }

    /// The size its file may reach.
    pub fn max_file_bytes(&self) -> u64 {
        self.inner.lock().map_or(0, |inner| inner.max_file_bytes)
    }

    /// A copy of the retained lines.
    pub fn snapshot(&self) -> Vec<String> {
        self.window(|total| 0..total).2
    }

    /// The retained lines `pick(total)` (`total` being how many are retained), copied under
    /// the lock: only the lines asked for. Returns where the window starts, `total` and the lines.
    pub fn window(&self, pick: impl Fn(usize) -> std::ops::Range<usize>) -> (usize, usize, Vec<String>) {
        let Ok(mut inner) = self.inner.lock() else { return (0, 0, Vec::new()) };
        inner.catch_up();
        let total = inner.lines.len();
        let range = pick(total);
        let start = range.start.min(total);
        let end = range.end.clamp(start, total);
        (start, total, inner.lines.range(start..end).cloned().collect())
    }

    /// The last `n` retained lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.window(|total| total.saturating_sub(n)..total).2
    }
}

/// Longest line kept whole; a longer one (a program printing megabytes without a newline) is
/// cut into pieces of this size instead of growing one buffer without bound.
const MAX_LINE_BYTES: u64 = MAX_LOG_LINE_BYTES as u64;

/// Reads a process's output line by line into `log`. Bytes that are not UTF-8 are replaced
/// (one bad byte must not end the capture, and with it app-id and state detection).
pub(super) async fn read_lines(
    stream: impl AsyncRead + Unpin,
    log: Arc<LogBuffer>,
    on_line: Arc<dyn Fn(&str) + Send + Sync>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                on_line(line);
                log.push(line.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_capture_survives_bad_bytes_and_endless_lines() {
        let log = LogBuffer::new(100, None);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let on_line: Arc<dyn Fn(&str) + Send + Sync> = {
            let seen = seen.clone();
            Arc::new(move |l: &str| seen.lock().unwrap().push(l.len()))
        };
        let mut input: Vec<u8> = b"before \xff\xfe bad bytes\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 150 * 1024));
        input.extend(b"\nINFO Submitted application: after\n");
        read_lines(&input[..], log.clone(), on_line).await;
        let lines = log.snapshot();
        assert_eq!(lines[0], "before \u{fffd}\u{fffd} bad bytes");
        assert!(lines.iter().all(|l| l.len() <= 64 * 1024), "no line grows past the cap");
        assert_eq!(lines.iter().filter(|l| l.starts_with('x')).map(String::len).sum::<usize>(), 150 * 1024);
        assert_eq!(lines.last().unwrap(), "INFO Submitted application: after", "capture goes on after both");
        assert_eq!(seen.lock().unwrap().len(), lines.len());
    }

    #[test]
    fn log_lines_are_bounded_and_never_span_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogBuffer::new(10, Some(&path));
        log.push(format!("sparkgate: driver error: {}", "é".repeat(100_000)));
        log.push("first\nINFO forged line\r\nthird");
        let lines = log.snapshot();
        assert!(lines[0].len() <= MAX_LOG_LINE_BYTES && lines[0].ends_with('…'), "{}", lines[0].len());
        assert_eq!(&lines[1..], ["first", "INFO forged line", "third"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4, "the file holds the same entries, one per line");
        assert_eq!(clip_text("abc", 3), "abc");
        assert_eq!(clip_text("abcdef", 5), "ab…");
    }

    #[test]
    fn a_log_is_bounded_in_bytes_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch.log");
        let log = LogBuffer::create(1000, &path, 1 << 20).unwrap();
        let line = "x".repeat(60_000);
        for _ in 0..200 {
            log.push(line.clone()); // 12 MB of output
        }
        let kept = log.snapshot();
        assert!(kept.iter().map(String::len).sum::<usize>() <= MAX_LOG_TAIL_BYTES, "{}", kept.len());
        assert_eq!(kept.len(), MAX_LOG_TAIL_BYTES / 60_000, "the newest lines are kept");
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= (1 << 20) + 200, "the file stops at its limit: {size}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().last().unwrap().contains("size limit"), "and says so");
        // A page is copied, not the whole tail.
        let (from, total, page) = log.window(|total| total - 2..total + 5);
        assert_eq!((from, total, page.len()), (kept.len() - 2, kept.len(), 2));
        assert!(LogBuffer::create(10, &path, 1 << 20).is_err(), "an existing log is never reopened");
    }

    #[test]
    fn a_followed_file_is_read_back_in_order_and_again_after_a_restart() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.log");
        let log = LogBuffer::follow(100, &path, 1 << 20, true).unwrap();
        assert!(LogBuffer::follow(100, &path, 1 << 20, true).is_err(), "a new launch never takes an old log");
        // The supervisor's writes, and the gateway's note between them.
        let mut other = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        other.write_all(b"first\nsecond\n").unwrap();
        log.push("sparkgate: a note");
        other.write_all(b"third\nunfini").unwrap();
        assert_eq!(log.take_fresh(), ["first", "second", "sparkgate: a note", "third"], "an unfinished line waits");
        other.write_all(b"shed\n").unwrap();
        let all = log.snapshot();
        assert_eq!(all, ["first", "second", "sparkgate: a note", "third", "unfinished"]);
        assert_eq!(log.take_fresh(), ["unfinished"]);
        assert!(log.take_fresh().is_empty());
        // A restart: the tail comes back, and nothing of it counts as new output.
        let again = LogBuffer::follow(100, &path, 1 << 20, false).unwrap();
        assert_eq!(again.snapshot(), all);
        assert!(again.take_fresh().is_empty());
        other.write_all(b"after\n").unwrap();
        assert_eq!(again.take_fresh(), ["after"]);
    }

    #[test]
    fn log_buffer_is_bounded_and_mirrored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogBuffer::new(3, Some(&path));
        for i in 0..5 {
            log.push(format!("line {i}"));
        }
        assert_eq!(log.snapshot(), vec!["line 2", "line 3", "line 4"]);
        assert_eq!(log.tail(2), vec!["line 3", "line 4"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
    }
}
