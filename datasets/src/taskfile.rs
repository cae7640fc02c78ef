//! User task files for the `qa-file` environment: question/answer pairs in JSONL or Parquet.
//!
//! # Formats (chosen by file extension, case-insensitive)
//! - `.jsonl` or `.json` — JSON Lines: one JSON object per line with a string field `prompt` and a
//!   field `answer`. Blank (whitespace-only) lines are skipped; other fields are ignored; a UTF-8
//!   byte-order mark at the start of the file is ignored. Positions in errors are 1-based line
//!   numbers, blank lines counted. A row may also give **tools** for a multi-turn task
//!   (`envs::qa`, "Tools"): `"tools": {"search": {"Zorp": "Zorp is made by Quux."}}` (tool name
//!   → argument → the observation returned) and the expert's calls before its answer,
//!   `"solution": ["search[Zorp]"]`.
//! - `.parquet` — a Parquet file with columns `prompt` and `answer` of type `Utf8`, `LargeUtf8` or
//!   `Utf8View` (or a dictionary of those); other columns are ignored and not read (Parquet rows
//!   are single-turn: tools come only in JSONL). Positions in
//!   errors are 0-based row indices over the whole file.
//!
//! Any other extension is an error ([`DatasetError::UnknownFormat`]).
//!
//! # Numeric answers
//! An `answer` may also be a number (a JSON integer or float; a Parquet integer or float column).
//! It becomes text the way Rust prints it: integers in decimal (`42`, `-7`), floats as the shortest
//! decimal that reads back as the same value, without exponent or trailing `.0` (`2.5`, `0.1`,
//! `3` for `3.0`). Booleans, arrays, objects and nulls are errors, and `prompt` must be text.
//!
//! A file with no tasks is an error ([`DatasetError::Empty`]), and so is every malformed line or
//! row, an empty (or whitespace-only) prompt or answer included: the loader never skips bad
//! data silently.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use envs::EnvSpec;
use envs::qa::{QaConfig, QaPair, Verifier};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::error::{DatasetError, Location};

/// A prompt or answer that is empty or only whitespace is an error.
fn check_not_empty(
    path: &Path,
    at: Location,
    prompt: &str,
    answer: &str,
) -> Result<(), DatasetError> {
    let empty = [("prompt", prompt), ("answer", answer)]
        .into_iter()
        .find(|(_, v)| v.trim().is_empty());
    match empty {
        Some((field, _)) => Err(DatasetError::EmptyValue {
            path: path.to_path_buf(),
            at,
            field: field.to_string(),
        }),
        None => Ok(()),
    }
}

/// Reads question/answer pairs from a JSONL or Parquet file (see the [module docs](self) for the
/// formats), in file order.
pub fn load_qa_file(path: impl AsRef<Path>) -> Result<Vec<QaPair>, DatasetError> {
    let path = path.as_ref();
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let pairs = match extension.as_str() {
        "jsonl" | "json" => read_jsonl(path)?,
        "parquet" => read_parquet(path)?,
        _ => {
            return Err(DatasetError::UnknownFormat {
                path: path.to_path_buf(),
                extension,
            });
        }
    };
    if pairs.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(pairs)
}

/// Loads a task file and builds the `qa-file` environment family over it, checked with
/// `verifier`. Task id `i` is row `i` of the file.
pub fn qa_spec_from_file(
    path: impl AsRef<Path>,
    verifier: Verifier,
) -> Result<EnvSpec, DatasetError> {
    let pairs = load_qa_file(path)?;
    Ok(EnvSpec::QaFile(QaConfig::new(pairs, verifier)?))
}

fn io_error(path: &Path, err: std::io::Error) -> DatasetError {
    match err.kind() {
        ErrorKind::NotFound => DatasetError::NotFound {
            path: path.to_path_buf(),
        },
        _ => DatasetError::Unreadable {
            path: path.to_path_buf(),
            reason: err.to_string(),
        },
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<QaPair>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut pairs = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = Location::Line(i + 1);
        let line = std::str::from_utf8(raw).map_err(|_| DatasetError::BadUtf8 {
            path: path.to_path_buf(),
            at,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| DatasetError::BadJson {
            path: path.to_path_buf(),
            at,
            reason: e.to_string(),
        })?;
        let Value::Object(mut object) = value else {
            return Err(DatasetError::NotAnObject {
                path: path.to_path_buf(),
                at,
                found: json_type(&value).to_string(),
            });
        };
        let mut field = |name: &str, numbers: bool| -> Result<String, DatasetError> {
            let value = object
                .remove(name)
                .ok_or_else(|| DatasetError::MissingField {
                    path: path.to_path_buf(),
                    at,
                    field: name.to_string(),
                })?;
            match value {
                Value::String(s) => Ok(s),
                Value::Number(n) if numbers => Ok(number_text(&n)),
                Value::Null => Err(DatasetError::NullValue {
                    path: path.to_path_buf(),
                    at,
                    field: name.to_string(),
                }),
                other => Err(DatasetError::WrongType {
                    path: path.to_path_buf(),
                    at,
                    field: name.to_string(),
                    expected: if numbers {
                        "a string or a number"
                    } else {
                        "a string"
                    }
                    .into(),
                    found: json_type(&other).to_string(),
                }),
            }
        };
        let prompt = field("prompt", false)?;
        let answer = field("answer", true)?;
        check_not_empty(path, at, &prompt, &answer)?;
        let wrong = |field: &str, expected: &str, found: &Value| DatasetError::WrongType {
            path: path.to_path_buf(),
            at,
            field: field.to_string(),
            expected: expected.to_string(),
            found: json_type(found).to_string(),
        };
        let mut tools = std::collections::BTreeMap::new();
        match object.remove("tools") {
            None | Some(Value::Null) => {}
            Some(Value::Object(table)) => {
                for (name, results) in table {
                    let Value::Object(results) = results else {
                        return Err(wrong("tools", "tool -> {argument: observation}", &results));
                    };
                    let mut by_arg = std::collections::BTreeMap::new();
                    for (arg, text) in results {
                        let Value::String(text) = text else {
                            return Err(wrong("tools", "observation text", &text));
                        };
                        by_arg.insert(arg.trim().to_string(), text);
                    }
                    tools.insert(name, by_arg);
                }
            }
            Some(other) => return Err(wrong("tools", "an object of tools", &other)),
        }
        let solution = match object.remove("solution") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(calls)) => calls
                .into_iter()
                .map(|c| match c {
                    Value::String(s) => Ok(s),
                    other => Err(wrong("solution", "a list of tool calls (strings)", &other)),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(wrong("solution", "a list of tool calls", &other)),
        };
        pairs.push(QaPair {
            prompt,
            answer,
            tools,
            solution,
        });
    }
    Ok(pairs)
}

/// A JSON number as answer text (see the module docs).
fn number_text(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        // Without serde_json's arbitrary_precision every other number is a finite f64.
        n.as_f64()
            .map(|f| f.to_string())
            .unwrap_or_else(|| n.to_string())
    }
}

const PROMPT: &str = "prompt";
const ANSWER: &str = "answer";

fn is_text(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, value) => is_text(value),
        _ => false,
    }
}

fn is_number(dt: &DataType) -> bool {
    dt.is_integer() || matches!(dt, DataType::Float32 | DataType::Float64)
}

fn read_parquet(path: &Path) -> Result<Vec<QaPair>, DatasetError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let bad = |e: &dyn std::fmt::Display| DatasetError::BadParquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
    let schema = builder.schema().clone();
    let mut roots = Vec::new();
    for (column, numbers) in [(PROMPT, false), (ANSWER, true)] {
        let Some((index, field)) = schema.column_with_name(column) else {
            let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(DatasetError::MissingColumn {
                path: path.to_path_buf(),
                column: column.to_string(),
                found: if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                },
            });
        };
        let dt = field.data_type();
        if !(is_text(dt) || numbers && is_number(dt)) {
            return Err(DatasetError::WrongColumnType {
                path: path.to_path_buf(),
                column: column.to_string(),
                expected: if numbers {
                    "a string or numeric column"
                } else {
                    "a string column"
                }
                .into(),
                found: dt.to_string(),
            });
        }
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).build().map_err(|e| bad(&e))?;
    let mut pairs = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let offset = pairs.len();
        let column = |name: &str| {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| bad(&format!("column \"{name}\" missing from a record batch")))?;
            column_text(array.as_ref()).map_err(|e| bad(&e))
        };
        let prompts = column(PROMPT)?;
        let answers = column(ANSWER)?;
        for (i, (prompt, answer)) in prompts.into_iter().zip(answers).enumerate() {
            let null = |field: &str| DatasetError::NullValue {
                path: path.to_path_buf(),
                at: Location::Row(offset + i),
                field: field.to_string(),
            };
            let (prompt, answer) = (
                prompt.ok_or_else(|| null(PROMPT))?,
                answer.ok_or_else(|| null(ANSWER))?,
            );
            check_not_empty(path, Location::Row(offset + i), &prompt, &answer)?;
            pairs.push(QaPair {
                prompt,
                answer,
                ..Default::default()
            });
        }
    }
    Ok(pairs)
}

/// The cells of a text or numeric column as text (`None` for nulls).
fn column_text(array: &dyn Array) -> Result<Vec<Option<String>>, arrow::error::ArrowError> {
    fn collect<'a>(cells: impl Iterator<Item = Option<&'a str>>) -> Vec<Option<String>> {
        cells.map(|c| c.map(str::to_string)).collect()
    }
    macro_rules! numbers {
        ($t:ty) => {
            array
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|v| v.to_string()))
                .collect()
        };
    }
    Ok(match array.data_type() {
        DataType::Utf8 => collect(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => collect(array.as_string::<i64>().iter()),
        DataType::Utf8View => collect(array.as_string_view().iter()),
        DataType::Dictionary(..) => {
            let plain = cast(array, &DataType::LargeUtf8)?;
            collect(plain.as_string::<i64>().iter())
        }
        DataType::Int8 => numbers!(Int8Type),
        DataType::Int16 => numbers!(Int16Type),
        DataType::Int32 => numbers!(Int32Type),
        DataType::Int64 => numbers!(Int64Type),
        DataType::UInt8 => numbers!(UInt8Type),
        DataType::UInt16 => numbers!(UInt16Type),
        DataType::UInt32 => numbers!(UInt32Type),
        DataType::UInt64 => numbers!(UInt64Type),
        DataType::Float32 => numbers!(Float32Type),
        DataType::Float64 => numbers!(Float64Type),
        other => {
            return Err(arrow::error::ArrowError::SchemaError(format!(
                "unexpected column type {other}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, LargeStringArray, StringArray,
        StringViewArray,
    };
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;

    use super::*;
    use crate::testutil::TempDir;
    use std::path::PathBuf;

    fn pair(prompt: &str, answer: &str) -> QaPair {
        QaPair {
            prompt: prompt.to_string(),
            answer: answer.to_string(),
            ..Default::default()
        }
    }

    /// Writes `columns` to `name` in `dir` as Parquet, in batches of 2 rows.
    fn parquet(dir: &TempDir, name: &str, columns: Vec<(&str, ArrayRef)>) -> PathBuf {
        let path = dir.0.join(name);
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut writer =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        let mut start = 0;
        while start < batch.num_rows() {
            let len = 2.min(batch.num_rows() - start);
            writer.write(&batch.slice(start, len)).unwrap();
            start += len;
        }
        writer.close().unwrap();
        path
    }

    fn strings(cells: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(cells.to_vec()))
    }

    /// Asserts the message names the file and every `parts` entry.
    fn assert_names(err: &DatasetError, path: &Path, parts: &[&str]) {
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(
            msg.contains(&path.display().to_string()),
            "names the file: {msg}"
        );
        for part in parts {
            assert!(msg.contains(part), "names {part:?}: {msg}");
        }
    }

    #[test]
    fn reads_jsonl_with_blank_lines_extra_fields_and_numeric_answers() {
        let dir = TempDir::new("jsonl-ok");
        let text = "\u{FEFF}{\"prompt\": \"2+2?\", \"answer\": \"4\"}\n\n  \r\n\
            {\"prompt\": \"half of 5?\", \"answer\": 2.5, \"source\": [1]}\r\n\
            {\"answer\": -7, \"prompt\": \"é?\"}\n{\"prompt\": \"3.0?\", \"answer\": 3.0}";
        let path = dir.file("tasks.jsonl", text.as_bytes());
        let pairs = load_qa_file(&path).unwrap();
        let want = vec![
            pair("2+2?", "4"),
            pair("half of 5?", "2.5"),
            pair("é?", "-7"),
            pair("3.0?", "3"),
        ];
        assert_eq!(pairs, want);
        // `.json` and upper-case extensions read as JSONL too.
        let path = dir.file("tasks.JSON", text.as_bytes());
        assert_eq!(load_qa_file(&path).unwrap(), want);
    }

    #[test]
    fn reads_parquet_string_kinds_and_numeric_answers() {
        let dir = TempDir::new("parquet-ok");
        let prompts = ["a?", "b?", "c?"];
        let cases: Vec<(ArrayRef, ArrayRef, [&str; 3])> = vec![
            (
                strings(&[Some("a?"), Some("b?"), Some("c?")]),
                strings(&[Some("x"), Some("y"), Some("z")]),
                ["x", "y", "z"],
            ),
            (
                Arc::new(LargeStringArray::from(prompts.to_vec())),
                Arc::new(Int64Array::from(vec![1, -2, 30])),
                ["1", "-2", "30"],
            ),
            (
                Arc::new(StringViewArray::from(prompts.to_vec())),
                Arc::new(Float64Array::from(vec![0.5, 2.0, 0.1])),
                ["0.5", "2", "0.1"],
            ),
        ];
        for (i, (prompt, answer, want)) in cases.into_iter().enumerate() {
            let extra: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true]));
            let name = format!("tasks{i}.parquet");
            let path = parquet(
                &dir,
                &name,
                vec![("id", extra), ("answer", answer), ("prompt", prompt)],
            );
            let pairs = load_qa_file(&path).unwrap();
            let want: Vec<QaPair> = prompts.iter().zip(want).map(|(p, a)| pair(p, a)).collect();
            assert_eq!(pairs, want, "case {i}");
        }
    }

    #[test]
    fn spec_from_file_builds_qa_file_env() {
        let dir = TempDir::new("spec");
        let path = dir.file("t.jsonl", b"{\"prompt\":\"p\",\"answer\":\"a\"}\n");
        let spec = qa_spec_from_file(&path, Verifier::Exact).unwrap();
        assert_eq!(spec.name(), "qa-file");
        assert_eq!(spec.task_count(), Some(1));
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("nope.jsonl");
        let err = load_qa_file(&path).unwrap_err();
        assert!(matches!(err, DatasetError::NotFound { .. }), "{err:?}");
        assert_names(&err, &path, &["not found"]);
        let err = load_qa_file(dir.0.join("nope.parquet")).unwrap_err();
        assert!(matches!(err, DatasetError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn directory_is_unreadable() {
        let dir = TempDir::new("unreadable");
        let path = dir.0.join("folder.jsonl");
        std::fs::create_dir(&path).unwrap();
        let err = load_qa_file(&path).unwrap_err();
        assert!(matches!(err, DatasetError::Unreadable { .. }), "{err:?}");
        assert_names(&err, &path, &["cannot read"]);
    }

    #[test]
    fn unknown_extension_is_rejected() {
        let dir = TempDir::new("ext");
        for name in ["tasks.csv", "tasks"] {
            let path = dir.file(name, b"prompt,answer\n");
            let err = load_qa_file(&path).unwrap_err();
            assert!(matches!(err, DatasetError::UnknownFormat { .. }), "{err:?}");
            assert_names(&err, &path, &["unknown format", ".jsonl"]);
        }
    }

    #[test]
    fn empty_files_have_no_tasks() {
        let dir = TempDir::new("empty");
        for (name, bytes) in [("a.jsonl", &b""[..]), ("b.jsonl", &b"\n  \n\n"[..])] {
            let path = dir.file(name, bytes);
            let err = load_qa_file(&path).unwrap_err();
            assert!(matches!(err, DatasetError::Empty { .. }), "{err:?}");
            assert_names(&err, &path, &["no tasks"]);
        }
        let path = parquet(
            &dir,
            "c.parquet",
            vec![("prompt", strings(&[])), ("answer", strings(&[]))],
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(matches!(err, DatasetError::Empty { .. }), "{err:?}");
        assert_names(&err, &path, &["no tasks"]);
    }

    #[test]
    fn bad_utf8_names_the_line() {
        let dir = TempDir::new("utf8");
        let path = dir.file(
            "t.jsonl",
            b"{\"prompt\":\"p\",\"answer\":\"a\"}\n\n{\"prompt\":\"\xff\",\"answer\":\"a\"}\n",
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::BadUtf8 {
                    at: Location::Line(3),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_names(&err, &path, &["line 3", "UTF-8"]);
    }

    #[test]
    fn invalid_json_names_the_line() {
        let dir = TempDir::new("json");
        let path = dir.file(
            "t.jsonl",
            b"{\"prompt\":\"p\",\"answer\":\"a\"}\n{\"prompt\": \"p\",\n",
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::BadJson {
                    at: Location::Line(2),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_names(&err, &path, &["line 2", "invalid JSON"]);
    }

    #[test]
    fn non_object_line_names_the_type() {
        let dir = TempDir::new("object");
        let path = dir.file("t.json", b"[{\"prompt\":\"p\",\"answer\":\"a\"}]\n");
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::NotAnObject {
                    at: Location::Line(1),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_names(&err, &path, &["line 1", "found array"]);
    }

    #[test]
    fn missing_field_names_line_and_field() {
        let dir = TempDir::new("field");
        let path = dir.file(
            "t.jsonl",
            b"{\"prompt\":\"p\",\"answer\":\"a\"}\n{\"prompt\":\"q\"}\n",
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(&err, DatasetError::MissingField { at: Location::Line(2), field, .. }
                if field == "answer"),
            "{err:?}"
        );
        assert_names(&err, &path, &["line 2", "missing field \"answer\""]);
    }

    #[test]
    fn missing_column_names_the_column() {
        let dir = TempDir::new("column");
        let path = parquet(
            &dir,
            "t.parquet",
            vec![
                ("question", strings(&[Some("q")])),
                ("answer", strings(&[Some("a")])),
            ],
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(&err, DatasetError::MissingColumn { column, .. } if column == "prompt"),
            "{err:?}"
        );
        assert_names(
            &err,
            &path,
            &["missing column \"prompt\"", "question, answer"],
        );
    }

    #[test]
    fn wrong_json_type_names_line_field_and_type() {
        let dir = TempDir::new("type");
        let cases: [(&[u8], &str, &str); 3] = [
            (b"{\"prompt\":\"p\",\"answer\":true}", "answer", "boolean"),
            (b"{\"prompt\":3,\"answer\":\"a\"}", "prompt", "number"),
            (b"{\"prompt\":\"p\",\"answer\":[\"a\"]}", "answer", "array"),
        ];
        for (i, (line, field, found)) in cases.into_iter().enumerate() {
            let mut bytes = b"{\"prompt\":\"ok\",\"answer\":\"ok\"}\n".to_vec();
            bytes.extend_from_slice(line);
            let path = dir.file(&format!("t{i}.jsonl"), &bytes);
            let err = load_qa_file(&path).unwrap_err();
            assert!(
                matches!(
                    &err,
                    DatasetError::WrongType { at: Location::Line(2), field: f, found: t, .. }
                        if f == field && t == found
                ),
                "{err:?}"
            );
            assert_names(&err, &path, &["line 2", &format!("\"{field}\""), found]);
        }
    }

    #[test]
    fn wrong_column_type_names_column_and_type() {
        let dir = TempDir::new("coltype");
        let flags: ArrayRef = Arc::new(BooleanArray::from(vec![true]));
        let path = parquet(
            &dir,
            "t.parquet",
            vec![("prompt", strings(&[Some("p")])), ("answer", flags)],
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(&err, DatasetError::WrongColumnType { column, .. } if column == "answer"),
            "{err:?}"
        );
        assert_names(&err, &path, &["column \"answer\"", "Boolean"]);
        // Numbers are answers, never prompts.
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        let path = parquet(
            &dir,
            "u.parquet",
            vec![("prompt", numbers), ("answer", strings(&[Some("a")]))],
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(&err, DatasetError::WrongColumnType { column, .. } if column == "prompt"),
            "{err:?}"
        );
        assert_names(&err, &path, &["column \"prompt\"", "Int64"]);
    }

    #[test]
    fn null_values_name_the_row() {
        let dir = TempDir::new("null");
        let path = dir.file(
            "t.jsonl",
            b"{\"prompt\":\"p\",\"answer\":\"a\"}\n{\"prompt\":null,\"answer\":\"a\"}\n",
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(&err, DatasetError::NullValue { at: Location::Line(2), field, .. }
                if field == "prompt"),
            "{err:?}"
        );
        assert_names(&err, &path, &["line 2", "\"prompt\" is null"]);
        // Row 3 sits in the second record batch (batches of 2 rows), so the index is file-wide.
        let path = parquet(
            &dir,
            "t.parquet",
            vec![
                (
                    "prompt",
                    strings(&[Some("a"), Some("b"), Some("c"), Some("d")]),
                ),
                ("answer", strings(&[Some("1"), Some("2"), Some("3"), None])),
            ],
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(
            matches!(&err, DatasetError::NullValue { at: Location::Row(3), field, .. }
                if field == "answer"),
            "{err:?}"
        );
        assert_names(&err, &path, &["row 3", "\"answer\" is null"]);
    }

    /// JSONL rows may carry tools and the expert's calls; wrong shapes are errors naming the
    /// field.
    #[test]
    fn tool_rows_are_read() {
        let dir = TempDir::new("tools");
        let path = dir.file(
            "t.jsonl",
            br#"{"prompt": "p", "answer": "a", "tools": {"search": {" X ": "x is y"}}, "solution": ["search[X]"]}
{"prompt": "q", "answer": "b"}
"#,
        );
        let pairs = load_qa_file(&path).unwrap();
        assert_eq!(pairs[0].tools["search"]["X"], "x is y");
        assert_eq!(pairs[0].solution, vec!["search[X]".to_string()]);
        assert!(pairs[1].tools.is_empty() && pairs[1].solution.is_empty());
        let bad = dir.file(
            "b.jsonl",
            br#"{"prompt": "p", "answer": "a", "tools": {"search": 3}}"#,
        );
        let err = load_qa_file(&bad).unwrap_err();
        assert_names(&err, &bad, &["line 1", "tools"]);
        let bad = dir.file(
            "c.jsonl",
            br#"{"prompt": "p", "answer": "a", "solution": [1]}"#,
        );
        assert_names(
            &load_qa_file(&bad).unwrap_err(),
            &bad,
            &["line 1", "solution"],
        );
    }

    /// An empty or whitespace-only prompt or answer poses or checks nothing: an error naming
    /// its line or row, in both formats.
    #[test]
    fn empty_prompts_and_answers_are_rejected() {
        let dir = TempDir::new("emptyvalues");
        let path = dir.file(
            "e.jsonl",
            b"{\"prompt\":\"p\",\"answer\":\"a\"}\n{\"prompt\":\"  \",\"answer\":\"a\"}\n",
        );
        let err = load_qa_file(&path).unwrap_err();
        assert!(matches!(&err, DatasetError::EmptyValue { .. }), "{err:?}");
        assert_names(&err, &path, &["line 2", "\"prompt\" is empty"]);
        let path = parquet(
            &dir,
            "e.parquet",
            vec![
                ("prompt", strings(&[Some("a"), Some("b")])),
                ("answer", strings(&[Some("1"), Some("")])),
            ],
        );
        let err = load_qa_file(&path).unwrap_err();
        assert_names(&err, &path, &["row 1", "\"answer\" is empty"]);
    }

    #[test]
    fn non_parquet_bytes_are_rejected() {
        let dir = TempDir::new("corrupt");
        let text = dir.file("t.parquet", b"{\"prompt\":\"p\",\"answer\":\"a\"}\n");
        let empty = dir.file("e.parquet", b"");
        let good = parquet(
            &dir,
            "g.parquet",
            vec![
                ("prompt", strings(&[Some("p")])),
                ("answer", strings(&[Some("a")])),
            ],
        );
        let mut bytes = std::fs::read(&good).unwrap();
        let len = bytes.len();
        bytes[len - 20..len - 8].fill(0xAB); // clobber the footer metadata
        let broken = dir.file("b.parquet", &bytes);
        for path in [text, empty, broken] {
            let err = load_qa_file(&path).unwrap_err();
            assert!(matches!(err, DatasetError::BadParquet { .. }), "{err:?}");
            assert_names(&err, &path, &["not a readable Parquet file"]);
        }
    }

    #[test]
    fn empty_qa_set_error_comes_from_envs() {
        let err = DatasetError::from(envs::EnvError::EmptyTaskSet);
        assert!(matches!(err, DatasetError::Env { .. }));
        assert_eq!(err.to_string(), "the qa task set is empty");
    }
}
