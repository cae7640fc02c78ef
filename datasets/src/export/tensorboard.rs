//! TensorBoard event files: scalars that TensorBoard (and anything that reads its event files)
//! plots.
//!
//! A run's file is `tb/events.out.tfevents.arbor` in the run directory ([`events_path`]). The
//! metrics writer rewrites it whole, atomically, with every write of `metrics.parquet`, from the
//! same rows (`metrics_events`), so after a resume it holds exactly the rows the metrics hold
//! (no duplicated steps) and a crash never leaves it torn. One scalar per numeric column and
//! row, tagged `<phase>/<column>` (`rl/reward_mean`, `eval/success_rate`, `sft/loss`), at the
//! row's step; non-finite values are left out. An event's wall time is the sum of the rows'
//! `wall_ms` up to it, in seconds.
//!
//! # Format
//! Records (TFRecord framing): length (u64 LE), masked CRC-32C of the length, the bytes, masked
//! CRC-32C of the bytes; the mask is `((crc >> 15) | (crc << 17)) + 0xa282ead8`. Each record is a
//! protobuf `Event`: `wall_time` (1, double), `step` (2, int64), `file_version` (3, string, the
//! first record: `brain.Event:2`) or `summary` (5), whose `value`s (1) carry `tag` (1, string)
//! and `simple_value` (2, float).

use std::path::{Path, PathBuf};

/// The events file of the run directory `dir`.
pub fn events_path(dir: &Path) -> PathBuf {
    dir.join("tb").join("events.out.tfevents.arbor")
}

/// CRC-32C (Castagnoli), bitwise.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn event(wall_time: f64, step: u64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step);
    body(&mut e);
    e
}

fn record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// One event: scalars `(tag, value)` at a step and a wall time in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalars {
    /// The step.
    pub step: u64,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// `(tag, value)`; non-finite values are left out of the file.
    pub values: Vec<(String, f64)>,
}

/// The event file's bytes: the file-version record, then one record per event.
pub fn events_bytes(events: &[Scalars]) -> Vec<u8> {
    let mut out = Vec::new();
    record(
        &mut out,
        &event(0.0, 0, |e| bytes_field(e, 3, b"brain.Event:2")),
    );
    for ev in events {
        let mut summary = Vec::new();
        for (tag, value) in ev.values.iter().filter(|(_, v)| v.is_finite()) {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            key(&mut v, 2, 5);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        let data = event(ev.wall_s, ev.step, |e| bytes_field(e, 5, &summary));
        record(&mut out, &data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard check value of CRC-32C, and the TFRecord mask.
    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    /// Records frame their data with its length and checksums; values become tagged scalars.
    #[test]
    fn events_frame_rows_as_scalars() {
        let ev = Scalars {
            step: 3,
            wall_s: 1.5,
            values: vec![
                ("rl/reward_mean".into(), 0.5),
                ("rl/tokens_per_success".into(), f64::NAN),
            ],
        };
        let bytes = events_bytes(&[ev]);
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let first = &bytes[12..12 + len];
        assert!(first.windows(13).any(|w| w == b"brain.Event:2"));
        let crc = u32::from_le_bytes(bytes[12 + len..16 + len].try_into().unwrap());
        assert_eq!(crc, masked_crc(first));
        let tag = b"rl/reward_mean";
        assert!(bytes.windows(tag.len()).any(|w| w == tag));
        let nan = b"rl/tokens_per_success";
        assert!(
            !bytes.windows(nan.len()).any(|w| w == nan),
            "non-finite left out"
        );
    }
}
