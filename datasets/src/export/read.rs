//! Reading run files back into rows.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use arrow::datatypes::{DataType, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::rows::{
    Columns, NodeRow, TrajectoryRow, nodes_from_batch, nodes_schema, trajectories_from_batch,
    trajectories_schema,
};
use crate::error::DatasetError;

/// Reads `trajectories.parquet` (or any file with the [`trajectories_schema`](super::trajectories_schema)
/// columns; extra columns are ignored) into rows, in file order.
pub fn read_trajectories(path: impl AsRef<Path>) -> Result<Vec<TrajectoryRow>, DatasetError> {
    read_table(
        path.as_ref(),
        &trajectories_schema(),
        trajectories_from_batch,
    )
}

/// Reads `nodes.parquet` (or any file with the [`nodes_schema`](super::nodes_schema) columns;
/// extra columns are ignored) into rows, in file order.
pub fn read_nodes(path: impl AsRef<Path>) -> Result<Vec<NodeRow>, DatasetError> {
    read_table(path.as_ref(), &nodes_schema(), nodes_from_batch)
}

/// Whether a file's column type is the expected one. List item names and nullability are not
/// compared (pyarrow and polars name and flag them differently), everything else is.
fn same_type(found: &DataType, want: &DataType) -> bool {
    match (found, want) {
        (DataType::List(f), DataType::List(w)) => same_type(f.data_type(), w.data_type()),
        _ => found == want,
    }
}

/// Checks that every column of `want` is in `found` with the same type.
pub(crate) fn check_schema(path: &Path, found: &Schema, want: &Schema) -> Result<(), DatasetError> {
    for field in want.fields() {
        match found.field_with_name(field.name()) {
            Err(_) => {
                let columns: Vec<&str> = found.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(DatasetError::BadRunFile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "missing column \"{}\" (columns: {})",
                        field.name(),
                        columns.join(", ")
                    ),
                });
            }
            Ok(f) if !same_type(f.data_type(), field.data_type()) => {
                return Err(DatasetError::BadRunFile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "column \"{}\" has type {}, expected {}",
                        field.name(),
                        f.data_type(),
                        field.data_type()
                    ),
                });
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Reads every row of a Parquet file whose columns include `want`'s, converting each record
/// batch with `convert`.
pub(crate) fn read_table<T>(
    path: &Path,
    want: &Schema,
    convert: impl Fn(&Columns<'_>, &mut Vec<T>) -> Result<(), DatasetError>,
) -> Result<Vec<T>, DatasetError> {
    let bad = |reason: String| DatasetError::BadRunFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => bad("not found".to_string()),
        _ => bad(format!("cannot open: {e}")),
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    check_schema(path, builder.schema(), want)?;
    let reader = builder
        .build()
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("corrupt data: {e}")))?;
        convert(
            &Columns {
                path,
                batch: &batch,
            },
            &mut out,
        )?;
    }
    Ok(out)
}
