//! `chronik wal inspect|verify DATA_DIR`: offline, read-only views of a broker's WAL.

use std::{io::Write, path::Path};

use chronik_wal::inspect::{inspect, IndexStatus, PartitionReport};

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
