//! What a contributor signs, computed from a JSONL file in line-aligned parts side by side.
//!
//! The CLI reads the whole file to sign its root before it sends a byte, so this pass is time
//! the contributor waits for on top of the upload. A file's lines are independent records
//! and the root does not depend on their order, so each part is parsed and hashed on its own
//! thread and the results are put together: ids in file order, bad rows numbered as in the
//! whole file. The outcome is exactly [`Datanets::commitment`]'s, which a test checks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::contribute::BatchCommitment;
use super::ingest::{self, ErrorReport, Input, InputFormat};
use super::record::{record_ids, RecordId};
use super::service::{DatanetError, Datanets};
use super::Datanet;
use crate::merkle::LeafBuckets;

/// Below this size a file is read as one part: threads would cost more than they save.
const MIN_PART_BYTES: u64 = 4 << 20;

/// One part's outcome: its valid rows' ids, their leaves, its bad rows (numbered from its own
/// first line) and its newlines, which for every part but the last, ending as it does with a
/// newline, is how many lines it had: the count the next part's row numbers start after.
struct Part {
    ids: Vec<RecordId>,
    leaves: LeafBuckets,
    errors: ErrorReport,
    lines: u64,
}

/// Told of every chunk of bytes read, from any part's thread.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Counts the newlines that pass through into `newlines`, and tells `progress` of each read.
struct Counting<R> {
    inner: R,
    newlines: Arc<AtomicU64>,
    progress: Progress,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let newlines = memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        self.newlines.fetch_add(newlines, Ordering::Relaxed);
        (self.progress)(n as u64);
        Ok(n)
    }
}

impl Datanets {
    /// [`Datanets::commitment`] of the JSONL file at `path`, read in up to `parts` parts at
    /// once; `progress` is told of every chunk of bytes read.
    pub fn commitment_of_jsonl_file(
        datanet: &Datanet,
        path: &Path,
        parts: usize,
        progress: Progress,
    ) -> Result<BatchCommitment, DatanetError> {
        commitment_in_parts(datanet, path, parts, MIN_PART_BYTES, progress)
    }
}

fn commitment_in_parts(
    datanet: &Datanet,
    path: &Path,
    parts: usize,
    min_part_bytes: u64,
    progress: Progress,
) -> Result<BatchCommitment, DatanetError> {
    let length = std::fs::metadata(path)?.len();
    let parts = (length / min_part_bytes.max(1)).clamp(1, parts.max(1) as u64) as usize;
    let bounds = split_at_lines(path, length, parts)?;
    let outcomes: Vec<Result<Part, DatanetError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = bounds
            .windows(2)
            .map(|range| {
                let (start, end, progress) = (range[0], range[1], progress.clone());
                scope.spawn(move || read_part(datanet, path, start, end, progress))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(DatanetError::Io(std::io::Error::other(
                        "a part of the file's reader panicked",
                    )))
                })
            })
            .collect()
    });
    let mut ids = Vec::new();
    let mut leaves = LeafBuckets::default();
    let mut errors = ErrorReport::default();
    let mut lines_before = 0;
    for outcome in outcomes {
        let part = outcome?;
        ids.extend(part.ids);
        leaves.merge(part.leaves);
        let mut shifted = part.errors;
        for e in &mut shifted.errors {
            e.row += lines_before;
        }
        errors.merge(shifted);
        lines_before += part.lines;
    }
    let root = leaves.into_tree().root();
    Ok(BatchCommitment { ids, root, errors })
}

/// Where the parts start: `parts + 1` offsets from 0 to `length`, each part starting at the
/// beginning of a line (one past a newline). A part boundary never falls before a line that
/// starts with a byte-order mark, which only the file's first line may carry.
fn split_at_lines(path: &Path, length: u64, parts: usize) -> Result<Vec<u64>, DatanetError> {
    let mut file = File::open(path)?;
    let mut bounds = vec![0u64];
    let mut buf = vec![0u8; 64 << 10];
    for k in 1..parts {
        let mut at = (length * k as u64 / parts as u64).max(*bounds.last().unwrap_or(&0));
        // Forward to the byte after the next newline that does not precede a mark.
        loop {
            file.seek(SeekFrom::Start(at))?;
            let n = file.read(&mut buf)?;
            if n == 0 {
                at = length;
                break;
            }
            match memchr::memchr(b'\n', &buf[..n]) {
                Some(i) => {
                    at += i as u64 + 1;
                    let mut head = [0u8; 3];
                    file.seek(SeekFrom::Start(at))?;
                    let got = file.read(&mut head)?;
                    if head[..got] != *"\u{feff}".as_bytes() {
                        break;
                    }
                }
                None => at += n as u64,
            }
        }
        bounds.push(at.min(length));
    }
    bounds.push(length);
    bounds.dedup();
    if bounds.len() == 1 {
        bounds.push(length);
    }
    Ok(bounds)
}

fn read_part(
    datanet: &Datanet,
    path: &Path,
    start: u64,
    end: u64,
    progress: Progress,
) -> Result<Part, DatanetError> {
    let schema = &datanet.spec.schema;
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let newlines = Arc::new(AtomicU64::new(0));
    let input = Input::Stream(Box::new(Counting {
        inner: file.take(end - start),
        newlines: newlines.clone(),
        progress,
    }));
    let mut reader = ingest::open(InputFormat::Jsonl, input, schema)?;
    let mut part = Part {
        ids: Vec::new(),
        leaves: LeafBuckets::default(),
        errors: ErrorReport::default(),
        lines: 0,
    };
    while let Some(chunk) = reader.next_chunk(&mut part.errors)? {
        let ids = record_ids(schema, &chunk.batch);
        part.leaves.push_values(&ids);
        part.ids.extend(ids);
    }
    drop(reader);
    part.lines = newlines.load(Ordering::Relaxed);
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"id": "notes", "name": "Notes", "license": "CC0-1.0",
      "schema": {"fields": [{"name": "text", "type": "string", "required": true},
                            {"name": "n", "type": "int64"}], "text_field": "text"}}"#;

    /// Every way a line can go wrong or be odd, spread over the file, read in up to seven
    /// parts: the same ids in the same order, the same root and the same report, row numbers
    /// included, as reading it whole.
    #[test]
    fn a_file_read_in_parts_commits_to_what_it_commits_to_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let datanets = Datanets::open(&dir.path().join("data")).expect("open");
        let datanet = datanets
            .create(serde_json::from_str(SPEC).expect("spec"), "carol")
            .expect("create");
        let mut text = String::from("\u{feff}");
        for i in 0..400 {
            text.push_str(&match i % 11 {
                0 => "\n".to_string(),
                1 => format!("{{\"n\": {i}}}\n"),
                2 => format!("{{\"text\": \"broken {i}\"\n"),
                3 => format!("\u{feff}{{\"text\": \"marked {i}\"}}\n"),
                4 => format!("{{\"text\": \"crlf {i}\"}}\r\n"),
                5 => "{\"text\": \"the same every time\"}\n".to_string(),
                _ => format!("{{\"text\": \"note {i}\", \"n\": {i}}}\n"),
            });
        }
        text.push_str("{\"text\": \"no newline at the end\"}");
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, &text).expect("write");
        let whole = Datanets::commitment(
            &datanet,
            InputFormat::Jsonl,
            Input::File(File::open(&path).expect("open")),
        )
        .expect("whole");
        assert!(whole.errors.total > 30 && !whole.ids.is_empty());
        for parts in [1, 2, 3, 7] {
            let read = Arc::new(AtomicU64::new(0));
            let counter = read.clone();
            let progress: Progress = Arc::new(move |n| {
                counter.fetch_add(n, Ordering::Relaxed);
            });
            let split = commitment_in_parts(&datanet, &path, parts, 1, progress).expect("parts");
            assert_eq!(split.ids, whole.ids, "{parts} parts");
            assert_eq!(split.root, whole.root, "{parts} parts");
            assert_eq!(split.errors.total, whole.errors.total, "{parts} parts");
            let rows = |r: &ErrorReport| -> Vec<(u64, Option<String>, String)> {
                r.errors
                    .iter()
                    .map(|e| (e.row, e.field.clone(), e.message.clone()))
                    .collect()
            };
            assert_eq!(rows(&split.errors), rows(&whole.errors), "{parts} parts");
            assert_eq!(
                read.load(Ordering::Relaxed),
                text.len() as u64,
                "every byte read once"
            );
        }
    }

    #[test]
    fn no_part_starts_at_a_line_with_a_byte_order_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rows.jsonl");
        // The middle falls in the first line; the line after it starts with a mark.
        let text = "0123456789abcdef\n\u{feff}x\ny\n";
        std::fs::write(&path, text).expect("write");
        let bounds = split_at_lines(&path, text.len() as u64, 2).expect("split");
        let y = text.find("y\n").expect("y") as u64;
        assert_eq!(bounds, vec![0, y, text.len() as u64]);
    }
}
