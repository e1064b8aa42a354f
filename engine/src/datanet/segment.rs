//! Parquet segments: one immutable file per accepted batch, written so that a crash leaves
//! either no file or a whole one (temporary file, fsync, rename, fsync of the directory).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::schema::COL_RECORD_ID;

/// Rows per row group: bounds the writer's buffered memory on large batches.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// How much of a segment is written before the kernel is asked to start writing it back.
const WRITEBACK_BYTES: u64 = 4 << 20;
const READ_BATCH_ROWS: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("segment file {path}: {message}")]
    Format { path: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn format_error(path: &Path, e: impl std::fmt::Display) -> SegmentError {
    SegmentError::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// How segments and exports are written; `text_field` is the Datanet's training text.
pub fn writer_properties(text_field: &str) -> WriterProperties {
    let text = ColumnPath::from(text_field);
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // Record ids are unique by construction and random: a dictionary would only be built
        // and dropped, compression finds nothing, and min/max statistics never prune.
        .set_column_dictionary_enabled(ColumnPath::from(COL_RECORD_ID), false)
        .set_column_compression(ColumnPath::from(COL_RECORD_ID), Compression::UNCOMPRESSED)
        .set_column_statistics_enabled(ColumnPath::from(COL_RECORD_ID), EnabledStatistics::None)
        // The training text is long and nearly always unique: its dictionary overflows and is
        // dropped, and the min/max of its values (two comparisons of every value) prune no
        // query anyone makes of it.
        .set_column_dictionary_enabled(text.clone(), false)
        .set_column_statistics_enabled(text, EnabledStatistics::None)
        .set_max_row_group_size(ROW_GROUP_ROWS)
        .set_created_by(format!("tributary {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A file that starts the write-back of what it has been given every few megabytes, without
/// waiting for it. A batch is acknowledged only after its segment is synced; left to the
/// kernel, all of a large segment would be written back in that final sync, after the
/// upload has been read, while the disk sat idle during the read.
struct EagerWriteback {
    file: File,
    written: u64,
    started: u64,
}

impl EagerWriteback {
    fn new(file: File) -> Self {
        Self {
            file,
            written: 0,
            started: 0,
        }
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let (from, len) = (self.started, self.written - self.started);
        // SAFETY: a plain system call on a file descriptor this value owns; it reads no
        // memory of ours. Failure only means the final sync does the work, so it is ignored.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = self.written;
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) {}
}

impl Write for EagerWriteback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_BYTES {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes a Parquet file under a temporary name; [`SegmentWriter::finish`] hands back the
/// file to sync, and [`persist_file`] moves it into place.
pub struct SegmentWriter {
    tmp_path: PathBuf,
    writer: ArrowWriter<BufWriter<EagerWriteback>>,
    rows: u64,
}

impl SegmentWriter {
    pub fn create(
        tmp_path: PathBuf,
        schema: SchemaRef,
        text_field: &str,
    ) -> Result<Self, SegmentError> {
        let file = File::create(&tmp_path).map_err(io_error(&tmp_path))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, EagerWriteback::new(file)),
            schema,
            Some(writer_properties(text_field)),
        )
        .map_err(|e| format_error(&tmp_path, e))?;
        Ok(Self {
            tmp_path,
            writer,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SegmentError> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|e| format_error(&self.tmp_path, e))
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Writes the footer and returns the file, not yet synced; the caller syncs it and then
    /// moves it into place with [`persist_file`].
    pub fn finish(self) -> Result<File, SegmentError> {
        let tmp = self.tmp_path.clone();
        let buffered = self
            .writer
            .into_inner()
            .map_err(|e| format_error(&tmp, e))?;
        buffered
            .into_inner()
            .map(|eager| eager.file)
            .map_err(|e| io_error(&tmp)(e.into_error()))
    }
}

/// Renames a synced file into place and syncs the directory that now holds it.
pub fn persist_file(tmp: &Path, final_path: &Path) -> Result<(), SegmentError> {
    let dir = final_path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    fs::rename(tmp, final_path).map_err(io_error(final_path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Writes bytes durably to `final_path` through a temporary file in `tmp_dir`.
pub fn write_durably(tmp_dir: &Path, final_path: &Path, bytes: &[u8]) -> Result<(), SegmentError> {
    let tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_error(tmp_dir))?;
    let (mut file, tmp_path) = tmp.keep().map_err(|e| io_error(tmp_dir)(e.error))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io_error(&tmp_path))?;
    drop(file);
    persist_file(&tmp_path, final_path)
}

/// Reads a segment in batches, optionally only some columns.
pub fn read(
    path: &Path,
    columns: Option<&[&str]>,
) -> Result<impl Iterator<Item = Result<RecordBatch, SegmentError>>, SegmentError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format_error(path, e))?
        .with_batch_size(READ_BATCH_ROWS);
    if let Some(names) = columns {
        let schema = builder.parquet_schema();
        let indices: Vec<usize> = (0..schema.num_columns())
            .filter(|&i| names.contains(&schema.column(i).name()))
            .collect();
        let mask = ProjectionMask::leaves(schema, indices);
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(|e| format_error(path, e))?;
    let owned = path.to_path_buf();
    Ok(reader.map(move |b| b.map_err(|e| format_error(&owned, e))))
}
