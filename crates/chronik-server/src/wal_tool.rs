//! `chronik wal inspect|verify DATA_DIR`, `dump SEGMENT`, `compare DIR_A DIR_B PARTITION`: offline,
//! read-only views of a broker's WAL.

use std::{io::Write, path::Path};

use chronik_wal::{
    inspect::{inspect, partition_frames, IndexStatus, PartitionReport},
    TopicPartition,
};

fn load(dir: &Path, show_progress: bool) -> anyhow::Result<Vec<PartitionReport>> {
    // A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
    let bar = indicatif::ProgressBar::hidden();
    if show_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_message("partitions checked");
    }
    let reports = inspect(dir, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(reports)
}

/// Prints a table (or JSON lines) of partitions and segments.
pub fn inspect_cmd(dir: &Path, json: bool) -> anyhow::Result<()> {
    let reports = load(dir, !json)?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the listing quietly.
    macro_rules! println {
        ($($arg:tt)*) => {
            if writeln!(out, $($arg)*).is_err() {
                return Ok(());
            }
        };
    }
    if !json {
        println!(
            "{:<32} {:>20} {:>14} {:>14} {:>8} {:>12} {:<10}",
            "PARTITION", "SEGMENT", "FIRST", "NEXT", "FRAMES", "BYTES", "INDEX"
        );
    }
    for p in &reports {
        let checkpoint = p
            .checkpoint
            .as_ref()
            .map(|c| format!("segment {} byte {}", c.segment_base, c.position));
        for s in &p.segments {
            let index = match &s.index {
                IndexStatus::Ok { entries, .. } => format!("ok({entries})"),
                IndexStatus::Missing => "missing".into(),
                IndexStatus::Bad(_) => "BAD".into(),
            };
            if json {
                println!(
                    "{{\"partition\":\"{}\",\"segment\":\"{}\",\"first_offset\":{},\"next_offset\":{},\"frames\":{},\"bytes\":{},\"index\":\"{}\",\"checkpoint\":{},\"problem\":{}}}",
                    p.tp,
                    s.path.display(),
                    s.base_offset,
                    s.next_offset,
                    s.frames,
                    s.bytes,
                    index,
                    checkpoint.as_ref().map_or("null".into(), |c| format!("\"{c}\"")),
                    s.problem.as_ref().map_or("null".into(), |(pos, k)| format!("\"byte {pos}: {k}\"")),
                );
            } else {
                let name = s
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                println!(
                    "{:<32} {:>20} {:>14} {:>14} {:>8} {:>12} {:<10}",
                    p.tp.to_string(),
                    name,
                    s.base_offset,
                    s.next_offset,
                    s.frames,
                    s.bytes,
                    index
                );
            }
        }
        if let (false, Some(c)) = (json, checkpoint) {
            println!("{:<32} checkpoint: {c}", p.tp.to_string());
        }
    }
    Ok(())
}

/// Checks every frame and index; `Ok(false)` when something is wrong (reported on stdout).
pub fn verify_cmd(dir: &Path) -> anyhow::Result<bool> {
    let reports = load(dir, true)?;
    let problems: Vec<String> = reports.iter().flat_map(PartitionReport::problems).collect();
    let mut out = std::io::stdout().lock();
    macro_rules! println {
        ($($arg:tt)*) => {
            let _ = writeln!(out, $($arg)*);
        };
    }
    let frames: u64 = reports.iter().flat_map(|p| &p.segments).map(|s| s.frames).sum();
    let segments: usize = reports.iter().map(|p| p.segments.len()).sum();
    for p in &problems {
        println!("{p}");
    }
    println!(
        "{} partitions, {segments} segments, {frames} frames: {}",
        reports.len(),
        if problems.is_empty() {
            "clean".to_string()
        } else {
            format!("{} problem(s)", problems.len())
        }
    );
    Ok(problems.is_empty())
}

/// Prints a segment's frames; with `payload`, decodes each stored Kafka RecordBatch into its records, or
/// shows a JSON payload (the internal metadata and Raft logs) as it is.
pub fn dump_cmd(segment: &Path, from_offset: i64, payload: bool) -> anyhow::Result<bool> {
    use kafka_protocol::records::RecordBatchDecoder;
    let mut out = std::io::stdout().lock();
    let mut frames = 0u64;
    let problem = chronik_wal::inspect::dump_segment(segment, from_offset, |f| {
        frames += 1;
        let h = &f.header;
        let line = format!(
            "position {} offsets {}..={} records {} first_ts {} max_ts {} payload_bytes {} crc ok",
            f.position,
            h.base_offset,
            h.next_offset() - 1,
            h.record_count,
            h.first_timestamp,
            h.max_timestamp,
            h.payload_len
        );
        if writeln!(out, "{line}").is_err() {
            return false;
        }
        if payload {
            let mut bytes = f.payload.clone();
            // A stored payload may hold several record batches; show them all.
            let text = match RecordBatchDecoder::decode_all(&mut bytes) {
                Ok(sets) => sets
                    .iter()
                    .flat_map(|set| set.records.iter())
                    .map(|r| {
                        let show = |b: &Option<bytes::Bytes>| {
                            b.as_ref()
                                .map_or("null".to_string(), |b| String::from_utf8_lossy(b).into_owned())
                        };
                        let headers: Vec<String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{}={}", k.as_str(), show(v)))
                            .collect();
                        format!(
                            "  | offset {} ts {} key {} value {} headers [{}]",
                            r.offset,
                            r.timestamp,
                            show(&r.key),
                            show(&r.value),
                            headers.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                // The internal logs (the metadata log, the Raft log) hold one JSON document per frame.
                Err(e) => match serde_json::from_slice::<serde_json::Value>(&f.payload) {
                    Ok(json) => format!("  | json {json}"),
                    Err(_) => format!("  | not a Kafka record batch: {e:#}"),
                },
            };
            if writeln!(out, "{text}").is_err() {
                return false;
            }
        }
        true
    })?;
    match problem {
        None => {
            let _ = writeln!(out, "{frames} frames");
            Ok(true)
        }
        Some((pos, kind)) => {
            let _ = writeln!(
                out,
                "{}: {pos}: {kind} (after {frames} valid frames)",
                segment.display()
            );
            Ok(false)
        }
    }
}

/// Batches of copy A that `compare_cmd` holds at a time (24 bytes each).
const COMPARE_CHUNK: usize = 1 << 16;

/// The first batch at or after `from` of `tp` under `root`, if any.
fn first_batch(root: &Path, tp: &TopicPartition, from: i64) -> anyhow::Result<Option<i64>> {
    let mut first = None;
    partition_frames(root, tp, from, |d| {
        first = Some(d.base_offset);
        false
    })?;
    Ok(first)
}

/// Compares two brokers' copies of `partition` (`TOPIC-N`), batch by batch (offsets, record count,
/// stored bytes), from the later of their log starts, up to `up_to` if given (both must reach it).
/// Prints the range where they agree and the first difference; returns whether they agree. For
/// replicas: every copy must be identical below the high watermark.
pub fn compare_cmd(dir_a: &Path, dir_b: &Path, partition: &str, up_to: Option<i64>) -> anyhow::Result<bool> {
    compare_in_chunks(dir_a, dir_b, partition, up_to, COMPARE_CHUNK)
}

/// [`compare_cmd`], holding `chunk` batches of copy A at a time.
fn compare_in_chunks(
    dir_a: &Path,
    dir_b: &Path,
    partition: &str,
    up_to: Option<i64>,
    chunk: usize,
) -> anyhow::Result<bool> {
    let tp = TopicPartition::from_dir_name(partition)
        .ok_or_else(|| anyhow::anyhow!("{partition:?} is not TOPIC-PARTITION"))?;
    let (Some(a_start), Some(b_start)) = (first_batch(dir_a, &tp, 0)?, first_batch(dir_b, &tp, 0)?) else {
        println!("{tp}: a copy holds no batch; nothing to compare");
        return Ok(up_to.is_none_or(|u| u <= 0));
    };
    let start = a_start.max(b_start);
    let limit = up_to.unwrap_or(i64::MAX);
    // Copy A is read a chunk of batches at a time, and copy B compared with each chunk: memory stays
    // bounded however long the partition.
    let (mut compared, mut end, mut from) = (0usize, start, start);
    let (mut differ, mut b_extra) = (None, None);
    let (a_problem, b_problem, a_extra) = loop {
        let mut a = Vec::new();
        let a_problem = partition_frames(dir_a, &tp, from, |d| {
            if d.base_offset >= limit {
                return false;
            }
            if d.base_offset >= from {
                a.push(d);
            }
            a.len() < chunk
        })?;
        let full = a.len() == chunk;
        let mut matched = 0usize;
        let b_problem = partition_frames(dir_b, &tp, from, |d| {
            if d.base_offset >= limit || d.base_offset < from {
                return d.base_offset < limit;
            }
            match a.get(matched) {
                Some(x) if *x == d => {
                    matched += 1;
                    // A full chunk matched: the next one is read from here. The last chunk goes on to
                    // find whether B holds more.
                    matched < a.len() || !full
                }
                Some(x) => {
                    differ = Some((*x, d));
                    false
                }
                None => {
                    b_extra = Some(d);
                    false
                }
            }
        })?;
        compared += matched;
        if let Some(d) = a[..matched].last() {
            end = d.base_offset + i64::from(d.record_count);
        }
        if differ.is_some() || matched < a.len() || !full {
            break (a_problem, b_problem, a.get(matched).copied());
        }
        from = end;
    };
    println!("{tp}: copies agree on offsets {start}..{end} ({compared} batches)");
    for (side, problem) in [("A", &a_problem), ("B", &b_problem)] {
        if let Some((path, pos, kind)) = problem {
            println!(
                "{tp}: copy {side} is damaged at {}: {pos}: {kind}",
                path.display()
            );
        }
    }
    let describe = |d: &chronik_wal::inspect::FrameDigest| {
        format!(
            "offsets {}..{} ({} bytes, crc32c {:#010x})",
            d.base_offset,
            d.base_offset + i64::from(d.record_count),
            d.payload_len,
            d.payload_crc
        )
    };
    if let Some((x, y)) = differ {
        println!(
            "{tp}: copies differ after {end}: A has {}, B has {}",
            describe(&x),
            describe(&y)
        );
        return Ok(false);
    }
    match (a_extra, b_extra) {
        (Some(x), None) => println!("{tp}: copy A continues with {}", describe(&x)),
        (None, Some(y)) => println!("{tp}: copy B continues with {}", describe(&y)),
        _ => {}
    }
    if let Some(u) = up_to.filter(|&u| end < u) {
        println!("{tp}: the copies agree only up to {end}, not up to {u}");
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_wal::{Batch, RotationConfig, WalConfig, WalManager};

    /// 41 batches of `orders-0`, the last one's payload `last`, in segments of `segment` bytes.
    fn write(dir: &Path, segment: u64, last: &[u8]) {
        let config = WalConfig {
            rotation: RotationConfig {
                max_segment_size: segment,
                ..Default::default()
            },
            ..Default::default()
        };
        let wal = WalManager::open(dir, config).unwrap();
        let tp = TopicPartition::new("orders", 0);
        wal.create_partition(&tp).unwrap();
        for i in 0..40 {
            let payload = format!("batch {i} {}", "y".repeat(300)).into_bytes();
            wal.append(&tp, Batch::new(payload, 2, 1_000 + i)).unwrap();
        }
        wal.append(&tp, Batch::new(last.to_vec(), 2, 2_000)).unwrap();
        wal.close().unwrap();
    }

    /// Small chunks (full ones, a last partial one, one ending exactly at the end) give the answers
    /// one chunk gives.
    #[test]
    fn chunked_comparison_agrees_with_a_whole_one() {
        let (a, b, same) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        write(a.path(), 4096, b"last");
        write(b.path(), 64 << 10, b"other");
        write(same.path(), 8192, b"last");
        let cases = [
            (b.path(), None, false),
            (b.path(), Some(80), true),
            (b.path(), Some(100), false),
            (same.path(), None, true),
            (same.path(), Some(82), true),
            (same.path(), Some(84), false),
        ];
        for (other, up_to, agree) in cases {
            for chunk in [1, 4, 40, 41, 1 << 16] {
                let got = compare_in_chunks(a.path(), other, "orders-0", up_to, chunk).unwrap();
                assert_eq!(got, agree, "{} up to {up_to:?}, chunk {chunk}", other.display());
            }
        }
    }
}
