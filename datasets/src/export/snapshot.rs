//! A Parquet file that is streamed row group by row group and yet is a complete, readable file at
//! its final path after every commit (see the [module docs](super) for the scheme and its cost).
//!
//! # How
//! One [`ArrowWriter`] encodes the whole file as a single logical byte *stream*
//! (`PAR1`, row group 1, row group 2, …, and at [`SnapshotFile::finish`] the page indexes and the
//! footer). It writes into a [`Spool`] that keeps only the bytes produced since the last commit.
//! Two inodes take turns holding the file:
//! - the *published* one, at the final path: the stream up to the last commit plus a footer;
//! - the *shadow* one, at the temp path (`.name.tmp`): the file as it was one commit earlier.
//!
//! A commit flushes the in-progress row group, then brings the shadow up to date in place: it
//! copies the bytes the shadow lacks from the published file (the previous commit's row groups),
//! appends the new bytes, writes a footer that lists every row group so far, and fsyncs. Because
//! both files hold byte-identical prefixes of the same stream, every offset recorded in the
//! footer is valid in either. The shadow then replaces the final path with one `rename`, after a
//! hard link has kept the old published inode alive under `.name.prev`; that inode becomes the
//! next shadow. Nothing at the final path is ever written in place, so a crash at any moment
//! leaves it complete. Where hard links are not supported the next shadow is a fresh file, filled
//! by copying the published one (correct, but O(file size) per commit).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    FileMetaData, ParquetMetaData, ParquetMetaDataWriter, RowGroupMetaData,
};
use parquet::file::properties::WriterProperties;

use crate::atomic::{sync_dir, temp_path};

/// Why a snapshot operation failed (turned into a `DatasetError` by the caller, who knows the
/// path).
#[derive(Debug)]
pub(crate) enum SnapshotError {
    Io(io::Error),
    Parquet(ParquetError),
    /// An earlier commit failed part-way; the writer no longer knows what the shadow holds.
    Poisoned,
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "{e}"),
            SnapshotError::Parquet(e) => write!(f, "{e}"),
            SnapshotError::Poisoned => f.write_str("an earlier write to this file failed"),
        }
    }
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        SnapshotError::Io(e)
    }
}

impl From<ParquetError> for SnapshotError {
    fn from(e: ParquetError) -> Self {
        SnapshotError::Parquet(e)
    }
}

/// The bytes the [`ArrowWriter`] produced since the last commit.
#[derive(Default)]
struct Spool {
    pending: Vec<u8>,
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A Parquet file at `path` that holds every committed row group, complete after each commit.
pub(crate) struct SnapshotFile {
    path: PathBuf,
    shadow_path: PathBuf,
    link_path: PathBuf,
    /// `None` once finished.
    writer: Option<ArrowWriter<Spool>>,
    /// Version, writer name, key-value metadata (the embedded Arrow schema), Parquet schema and
    /// column orders of the footer: taken from an empty file written with the same settings.
    template: FileMetaData,
    /// The inode at `path` (ours after the first commit) and the stream length it holds.
    published: Option<File>,
    published_len: u64,
    /// The inode at `shadow_path` and the stream length it holds correctly.
    shadow: Option<(File, u64)>,
    poisoned: bool,
    /// Rows committed so far.
    rows: u64,
    /// Bytes written to disk by commits (stream bytes, copies and footers), for cost reports.
    bytes_written: u64,
}

impl SnapshotFile {
    /// Starts the file. Nothing at `path` changes until the first [`SnapshotFile::commit`],
    /// which replaces whatever is there atomically. Removes stale temp files of an earlier writer
    /// of the same path.
    pub(crate) fn new(
        path: &Path,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<Self, SnapshotError> {
        let template = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?
            .close()?
            .file_metadata()
            .clone();
        let writer = ArrowWriter::try_new(Spool::default(), schema, Some(props))?;
        let shadow_path = temp_path(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let link_path = path.with_file_name(format!(".{name}.prev"));
        remove_if_exists(&shadow_path)?;
        remove_if_exists(&link_path)?;
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            shadow_path,
            link_path,
            writer: Some(writer),
            template,
            published: None,
            published_len: 0,
            shadow: None,
            poisoned: false,
            rows: 0,
            bytes_written: 0,
        })
    }

    /// Buffers `batch` into the in-progress row group (nothing reaches the disk until
    /// [`SnapshotFile::commit`]).
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), SnapshotError> {
        self.check()?;
        let writer = self.writer.as_mut().ok_or(SnapshotError::Poisoned)?;
        writer.write(batch).inspect_err(|_| self.poisoned = true)?;
        Ok(())
    }

    /// Closes the in-progress row group (if any) without publishing it yet.
    pub(crate) fn end_row_group(&mut self) -> Result<(), SnapshotError> {
        self.check()?;
        let writer = self.writer.as_mut().ok_or(SnapshotError::Poisoned)?;
        writer.flush().inspect_err(|_| self.poisoned = true)?;
        Ok(())
    }

    /// Closes the in-progress row group (if any) and publishes the file with it.
    pub(crate) fn commit(&mut self) -> Result<(), SnapshotError> {
        self.check()?;
        self.publish(false).inspect_err(|_| self.poisoned = true)
    }

    /// Writes the final footer (with page indexes) and publishes the file; removes the temp
    /// files. The file at the final path is then exactly what a plain [`ArrowWriter`] writes.
    /// Returns the rows and the bytes written in total.
    pub(crate) fn finish(mut self) -> Result<(u64, u64), SnapshotError> {
        self.check()?;
        self.publish(true).inspect_err(|_| self.poisoned = true)?;
        self.writer = None;
        self.published = None;
        self.shadow = None;
        remove_if_exists(&self.shadow_path)?;
        remove_if_exists(&self.link_path)?;
        Ok((self.rows, self.bytes_written))
    }

    /// Rows committed so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written to disk by commits so far (for cost measurements).
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The final path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self) -> Result<(), SnapshotError> {
        if self.poisoned || self.writer.is_none() {
            Err(SnapshotError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn publish(&mut self, finishing: bool) -> Result<(), SnapshotError> {
        let writer = self.writer.as_mut().ok_or(SnapshotError::Poisoned)?;
        writer.flush()?;
        // Counted before `finish`, which hands the row group metadata over to the footer.
        let rows: i64 = writer
            .flushed_row_groups()
            .iter()
            .map(|rg| rg.num_rows())
            .sum();
        if finishing {
            writer.finish()?;
        }
        writer.sync()?;
        let pending = std::mem::take(&mut writer.inner_mut().pending);
        let end = self.published_len + pending.len() as u64;
        let footer = if finishing {
            // The stream itself ends with the page indexes and the footer.
            Vec::new()
        } else {
            debug_assert_eq!(end, writer.bytes_written() as u64);
            footer(&self.template, writer.flushed_row_groups())?
        };

        // Bring the shadow up to date: [valid, published_len) from the published file, then the
        // new stream bytes, then the footer.
        let (mut shadow, valid) = match self.shadow.take() {
            Some(s) => s,
            None => {
                // Unlink before creating: truncating whatever the name points to could hit an
                // inode that is (also) published.
                remove_if_exists(&self.shadow_path)?;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&self.shadow_path)?;
                (file, 0)
            }
        };
        shadow.seek(SeekFrom::Start(valid))?;
        if valid < self.published_len {
            let mut src = self.published.as_ref().ok_or(SnapshotError::Poisoned)?;
            src.seek(SeekFrom::Start(valid))?;
            let want = self.published_len - valid;
            let copied = io::copy(&mut src.take(want), &mut shadow)?;
            if copied != want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the published file is shorter than expected",
                )
                .into());
            }
            self.bytes_written += copied;
        }
        shadow.write_all(&pending)?;
        shadow.write_all(&footer)?;
        let total = end + footer.len() as u64;
        if shadow.metadata()?.len() > total {
            shadow.set_len(total)?;
        }
        shadow.sync_all()?;
        self.bytes_written += (pending.len() + footer.len()) as u64;

        // Swap: keep the old published inode alive under `link_path`, move the shadow to the
        // final path (atomic), and let the old published inode become the next shadow.
        remove_if_exists(&self.link_path)?;
        let linked = self.published.is_some() && fs::hard_link(&self.path, &self.link_path).is_ok();
        fs::rename(&self.shadow_path, &self.path)?;
        let old = self.published.replace(shadow);
        let old_len = std::mem::replace(&mut self.published_len, end);
        if linked && fs::rename(&self.link_path, &self.shadow_path).is_ok() {
            self.shadow = old.map(|f| (f, old_len));
        }
        sync_dir(&self.path)?;
        self.rows = rows as u64;
        Ok(())
    }
}

/// The footer (metadata, its length, `PAR1`) of a file holding `row_groups`, with the file-level
/// metadata of `t`.
fn footer(t: &FileMetaData, row_groups: &[RowGroupMetaData]) -> Result<Vec<u8>, SnapshotError> {
    let num_rows = row_groups.iter().map(|rg| rg.num_rows()).sum();
    let file_metadata = FileMetaData::new(
        t.version(),
        num_rows,
        t.created_by().map(str::to_string),
        t.key_value_metadata().cloned(),
        t.schema_descr_ptr(),
        t.column_orders().cloned(),
    );
    let metadata = ParquetMetaData::new(file_metadata, row_groups.to_vec());
    let mut footer = Vec::new();
    ParquetMetaDataWriter::new(&mut footer, &metadata).finish()?;
    Ok(footer)
}

impl Drop for SnapshotFile {
    /// Leaves the file at the final path as the last commit left it (complete) and removes the
    /// temp files. Never panics; errors are ignored.
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.shadow = None;
            let _ = fs::remove_file(&self.shadow_path);
            let _ = fs::remove_file(&self.link_path);
        }
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
