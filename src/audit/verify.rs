//! [`verify_files`]: checks that audit files form one unbroken hash chain and names the first
//! place where they do not.
//!
//! What a chain can and cannot prove: without a key, someone who can write the files can
//! rewrite every record from the edit onwards with fresh hashes, and can cut off the newest
//! records. Both show only against a copy of a later hash kept elsewhere, which is why the
//! report prints the last hash.

use super::{sha256_hex, AuditError, GENESIS_PREV};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// What is wrong at the first bad place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The line is not a record at all (not JSON, truncated, fields missing or malformed).
    Broken,
    /// The record's content does not match its hash: it was edited.
    Altered,
    /// Records are missing: a gap in `seq`, or `prev` is not the previous record's hash.
    Missing,
    /// A record appears before one that should precede it (swapped lines, files in the wrong
    /// order).
    Reordered,
    /// A sequence number appears a second time.
    Duplicated,
}

impl ProblemKind {
    /// A one-word name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Broken => "broken",
            Self::Altered => "altered",
            Self::Missing => "missing",
            Self::Reordered => "reordered",
            Self::Duplicated => "duplicated",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first place where the chain is not intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: usize,
    /// The record's sequence number, when the line is readable enough to have one.
    pub seq: Option<u64>,
    /// A human explanation.
    pub detail: String,
}

/// The outcome of [`verify_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many files were checked.
    pub files: usize,
    /// Records found intact (before the problem, if there is one).
    pub records: u64,
    /// Seq of the first record.
    pub first_seq: Option<u64>,
    /// Seq of the last intact record.
    pub last_seq: Option<u64>,
    /// Hash of the last intact record (compare it with a copy kept elsewhere to prove that
    /// no newer records were cut off).
    pub last_hash: Option<String>,
    /// The first record is not seq 0: the chain's beginning is not in these files (older
    /// rotated files were deleted), so it was checked from that record on.
    pub starts_mid_chain: bool,
    /// The highest "every record before this seq was retired" found in an intact
    /// `audit_files_retired` record, and that record's own seq. When it covers
    /// [`VerifyReport::first_seq`], the missing beginning is explained by the gateway's
    /// retention ([`VerifyReport::prefix_retired`]).
    pub retired_before: Option<(u64, u64)>,
    /// The first problem, or `None` when the chain is intact.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// Whether the files form one unbroken chain.
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }

    /// Whether the chain starts mid-way because the gateway retired the older files itself
    /// (and said so in a record of the chain): a retired prefix, not a removed one.
    pub fn prefix_retired(&self) -> bool {
        match (self.starts_mid_chain, self.first_seq, self.retired_before) {
            (true, Some(first), Some((before, _))) => first <= before,
            _ => false,
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => match (self.first_seq, self.last_seq, &self.last_hash) {
                (Some(first), Some(last), Some(hash)) => {
                    write!(
                        f,
                        "OK: audit chain intact: {} record(s), seq {first} to {last}, in {} file(s); last hash {hash}",
                        self.records, self.files
                    )?;
                    if self.prefix_retired() {
                        let at = self.retired_before.map_or(0, |(_, at)| at);
                        write!(
                            f,
                            "\nnote: the chain starts at seq {first}: the records before it were retired by the \
                             gateway's retention (audit.max_files / audit.max_age), as record seq {at} says"
                        )?;
                    } else if self.starts_mid_chain {
                        write!(
                            f,
                            "\nnote: the chain starts mid-way, at seq {first}: the records before it are not in \
                             these files and were not checked; no retirement record in these files explains \
                             their absence (older files given separately, moved away, or removed)"
                        )?;
                    }
                    Ok(())
                }
                _ => write!(f, "OK: no audit records in {} file(s)", self.files),
            },
            Some(problem) => {
                write!(f, "FAILED: {} at {} line {}", problem.kind, problem.file.display(), problem.line)?;
                if let Some(seq) = problem.seq {
                    write!(f, " (seq {seq})")?;
                }
                write!(f, ": {}\n{} record(s) before it are intact", problem.detail, self.records)?;
                if let Some(last) = self.last_seq {
                    write!(f, ", the last being seq {last}")?;
                }
                Ok(())
            }
        }
    }
}

/// What a single line proves about itself.
#[derive(Debug, Clone)]
pub(super) struct LineRecord {
    pub(super) seq: u64,
    pub(super) prev: String,
    pub(super) hash: String,
    /// `retired_before` of an `audit_files_retired` record.
    pub(super) retired_before: Option<u64>,
}

/// Why a single line is not a good record.
#[derive(Debug, Clone)]
pub(super) struct LineProblem {
    pub(super) kind: ProblemKind,
    pub(super) seq: Option<u64>,
    pub(super) detail: String,
}

/// The fields the chain needs; every other field is covered by the hash.
#[derive(Deserialize)]
struct Head {
    seq: u64,
    prev: String,
    hash: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    retired_before: Option<u64>,
}

/// Checks one line (without its newline) on its own: it is a JSON object with `seq`, `prev`
/// and, last, `hash`, and `hash` is the SHA-256 of the text before `,"hash":`.
pub(super) fn check_line(line: &[u8]) -> Result<LineRecord, LineProblem> {
    let broken = |seq, detail: &str| LineProblem { kind: ProblemKind::Broken, seq, detail: detail.to_string() };
    let text = std::str::from_utf8(line).map_err(|_| broken(None, "not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(broken(None, "empty line"));
    }
    // serde_json's messages name a position and an expectation, never the line's content.
    let head: Head =
        serde_json::from_str(text).map_err(|e| broken(None, &format!("not a readable audit record ({e})")))?;
    let seq = Some(head.seq);
    if !is_hex_sha256(&head.prev) || !is_hex_sha256(&head.hash) {
        return Err(broken(seq, "prev and hash must be 64 lowercase hex digits"));
    }
    let suffix = format!(",\"hash\":\"{}\"}}", head.hash);
    let Some(body) = text.strip_suffix(suffix.as_str()) else {
        // It parses, so it was a record; only an edit (or reformatting) moves the hash.
        return Err(LineProblem {
            kind: ProblemKind::Altered,
            seq,
            detail: "the line is not byte for byte as written (`hash` must be its last field, without spaces)".into(),
        });
    };
    if sha256_hex(body) != head.hash {
        return Err(LineProblem {
            kind: ProblemKind::Altered,
            seq,
            detail: "the record's content does not match its hash (it was edited)".into(),
        });
    }
    let retired_before = head.retired_before.filter(|_| head.action.as_deref() == Some("audit_files_retired"));
    Ok(LineRecord { seq: head.seq, prev: head.prev, hash: head.hash, retired_before })
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

struct Entry {
    file: usize,
    line: usize,
    record: Result<LineRecord, LineProblem>,
}

/// Checks `paths`, in the order given (oldest rotated file first, the current file last), as
/// one chain: every line is a record whose hash recomputes, `seq` counts up by one and each
/// `prev` is the hash of the record before it. A chain that does not begin at seq 0 is
/// accepted and flagged [`VerifyReport::starts_mid_chain`]. Fails only when a file cannot be
/// read; everything wrong with the content is in the report.
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifyReport, AuditError> {
    let mut entries = Vec::new();
    for (file, path) in paths.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|source| AuditError::Io { path: path.clone(), source })?;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        // The newline that ends the last record leaves an empty piece behind.
        if lines.last().is_some_and(|last| last.is_empty()) {
            lines.pop();
        }
        for (index, line) in lines.into_iter().enumerate() {
            entries.push(Entry { file, line: index + 1, record: check_line(line) });
        }
    }
    Ok(walk(paths, &entries))
}

fn walk(paths: &[PathBuf], entries: &[Entry]) -> VerifyReport {
    let mut report = VerifyReport {
        files: paths.len(),
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        starts_mid_chain: false,
        retired_before: None,
        problem: None,
    };
    for (index, entry) in entries.iter().enumerate() {
        let file = paths.get(entry.file).cloned().unwrap_or_default();
        let problem = |kind, seq, detail: String| Problem { kind, file: file.clone(), line: entry.line, seq, detail };
        let record = match &entry.record {
            Ok(record) => record,
            Err(p) => {
                report.problem = Some(problem(p.kind, p.seq, p.detail.clone()));
                break;
            }
        };
        let found = record.seq;
        let wrong = match (report.last_seq, &report.last_hash) {
            (Some(last), Some(last_hash)) => {
                let expected = last.saturating_add(1);
                if found > expected {
                    let comes_later =
                        entries[index + 1..].iter().any(|later| later.record.as_ref().is_ok_and(|r| r.seq == expected));
                    Some(if comes_later {
                        (ProblemKind::Reordered, format!("expected seq {expected} here; it comes later"))
                    } else if found == expected.saturating_add(1) {
                        (ProblemKind::Missing, format!("record seq {expected} is missing"))
                    } else {
                        (ProblemKind::Missing, format!("records seq {expected} to {} are missing", found - 1))
                    })
                } else if found < expected {
                    Some(if report.first_seq.is_some_and(|first| found >= first) {
                        (ProblemKind::Duplicated, format!("seq {found} already appeared earlier"))
                    } else {
                        (
                            ProblemKind::Reordered,
                            format!("seq {found} comes after seq {last} (files given in the wrong order?)"),
                        )
                    })
                } else if record.prev != *last_hash {
                    Some((
                        ProblemKind::Missing,
                        format!(
                            "prev is not the hash of seq {last}: records between them were removed, or seq {last} \
                             was replaced"
                        ),
                    ))
                } else {
                    None
                }
            }
            _ => {
                if found == 0 && record.prev != GENESIS_PREV {
                    Some((ProblemKind::Altered, "seq 0 must have prev = 64 zeros".to_string()))
                } else {
                    report.first_seq = Some(found);
                    report.starts_mid_chain = found != 0;
                    None
                }
            }
        };
        if let Some((kind, detail)) = wrong {
            report.problem = Some(problem(kind, Some(found), detail));
            break;
        }
        report.records += 1;
        report.last_seq = Some(found);
        report.last_hash = Some(record.hash.clone());
        if let Some(before) = record.retired_before {
            if report.retired_before.is_none_or(|(highest, _)| before > highest) {
                report.retired_before = Some((before, found));
            }
        }
    }
    report
}
