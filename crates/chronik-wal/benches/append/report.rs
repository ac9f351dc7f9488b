//! The tables on stdout and the JSON in `target/bench-results/append.json`.

use crate::{
    common::{self, json_number},
    median_of,
    reads::ReadAllocations,
    Contender, Measurement, ScenarioResult, Settings, RATIOS,
};

pub fn print_table(number: usize, settings: &Settings, result: &ScenarioResult) {
    let s = &result.scenario;
    println!();
    println!(
        "scenario {number}: {} (median of {} round(s) x {:.1} s; ratios are medians of per-round ratios)",
        s.name,
        settings.rounds,
        settings.run_for.as_secs_f64()
    );
    println!(
        "  {:<22} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "contender", "appends/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "allocs/append"
    );
    for contender in Contender::ALL {
        let rounds = result.of(contender);
        if rounds.is_empty() {
            continue;
        }
        let m = median_of(rounds);
        println!(
            "  {:<22} {:>10.0} {:>8.1} {:>8.0} {:>8.0} {:>8.0} {:>12.2}",
            contender.label(s),
            m.appends_per_s,
            m.mb_per_s,
            m.p50_us,
            m.p99_us,
            m.p999_us,
            m.allocs_per_append
        );
    }
    for (label, _, a, b) in RATIOS {
        if result.of(a).is_empty() || result.of(b).is_empty() {
            continue;
        }
        let r = result.ratio(a, b);
        println!(
            "  {label:<22} {:>9.2}x {:>7.2}x {:>7.2}x {:>7.2}x {:>7.2}x",
            r.appends_per_s, r.mb_per_s, r.p50_us, r.p99_us, r.p999_us
        );
    }
}

pub fn print_summary(results: &[ScenarioResult]) {
    println!();
    println!("summary: appends/s ratios (median of per-round ratios)");
    println!(
        "  {:<34} {:>16} {:>12} {:>21} {:>13}",
        "scenario", "chronik/okaywal", "chronik/raw", "chronik/raw prealloc", "io_uring/std"
    );
    for result in results {
        let r = |a, b| result.ratio(a, b).appends_per_s;
        println!(
            "  {:<34} {:>15.2}x {:>11.2}x {:>20.2}x {:>12.2}x",
            result.scenario.name,
            r(Contender::Chronik, Contender::OkayWal),
            r(Contender::Chronik, Contender::Raw),
            r(Contender::Chronik, Contender::RawPrealloc),
            r(Contender::ChronikUring, Contender::Chronik)
        );
    }
    println!();
    println!("targets: chronik-wal (std) appends/s against");
    for result in results {
        for (target, ratio, met) in result.targets() {
            println!(
                "  {:<34} {:<22} {ratio:>6.2}x  >= {:.2}x  {}",
                result.scenario.name,
                target.against.label(&result.scenario),
                target.min_ratio,
                if met { "MET" } else { "MISSED" }
            );
        }
    }
}

pub fn print_read_allocations(reads: &[ReadAllocations]) {
    println!();
    println!("read path: PartitionWal::read over 1 KiB batches (std backend, page cache)");
    println!(
        "  {:<20} {:>8} {:>9} {:>12} {:>13} {:>14}",
        "pattern", "calls", "batches", "allocs/call", "allocs/batch", "alloc B/call"
    );
    for r in reads {
        println!(
            "  {:<20} {:>8} {:>9} {:>12.2} {:>13.3} {:>14.0}",
            r.pattern,
            r.calls,
            r.batches,
            r.allocs_per_call,
            r.allocs_per_batch(),
            r.alloc_bytes_per_call
        );
    }
}

pub fn write_json(settings: &Settings, results: &[ScenarioResult], reads: &[ReadAllocations]) {
    let scenarios: Vec<String> = results.iter().map(scenario_json).collect();
    let reads: Vec<String> = reads
        .iter()
        .map(|r| {
            format!(
                "    {{ \"pattern\": \"{}\", \"max_bytes\": {}, \"calls\": {}, \"batches\": {}, \
                 \"allocs_per_call\": {}, \"allocs_per_batch\": {}, \"alloc_bytes_per_call\": {} }}",
                r.pattern,
                r.max_bytes,
                r.calls,
                r.batches,
                json_number(r.allocs_per_call),
                json_number(r.allocs_per_batch()),
                json_number(r.alloc_bytes_per_call)
            )
        })
        .collect();
    let json = format!(
        "{{\n  \"bench\": \"append\",\n  \"quick\": {},\n  \"rounds\": {},\n  \"secs_per_run\": {},\n  \
         \"scenarios\": [\n{}\n  ],\n  \"read_path_allocations\": [\n{}\n  ]\n}}\n",
        settings.quick,
        settings.rounds,
        json_number(settings.run_for.as_secs_f64()),
        scenarios.join(",\n"),
        reads.join(",\n")
    );
    common::write_results("append", &json);
}

fn scenario_json(result: &ScenarioResult) -> String {
    let s = &result.scenario;
    let field = |key: &str, value: String| format!("      \"{key}\": {value}");
    let mut fields = vec![
        // Scenario names and labels are fixed ASCII without quotes or backslashes: no escaping needed.
        field("name", format!("\"{}\"", s.name)),
        field("batch_bytes", s.batch_bytes.to_string()),
        field("writers", s.writers.to_string()),
        field("partitions", s.partitions.to_string()),
        field("raw_kind", format!("\"{}\"", Contender::Raw.label(s))),
    ];
    for contender in Contender::ALL {
        let rounds = result.of(contender);
        let value = if rounds.is_empty() {
            "null".to_owned()
        } else {
            measurement_json(&median_of(rounds))
        };
        fields.push(field(contender.json_key(), value));
    }
    for (_, key, a, b) in RATIOS {
        fields.push(field(key, measurement_json(&result.ratio(a, b))));
    }
    let targets: Vec<String> = result
        .targets()
        .iter()
        .map(|(t, ratio, met)| {
            format!(
                "{{ \"against\": \"{}\", \"min_ratio\": {}, \"ratio\": {}, \"met\": {met} }}",
                t.against.json_key(),
                json_number(t.min_ratio),
                json_number(*ratio)
            )
        })
        .collect();
    fields.push(field("targets", format!("[{}]", targets.join(", "))));
    let rounds: Vec<String> = (0..result.of(Contender::Chronik).len())
        .map(|i| {
            let runs: Vec<String> = Contender::ALL
                .iter()
                .map(|c| {
                    let m = result.of(*c).get(i);
                    format!(
                        "\"{}\": {}",
                        c.json_key(),
                        m.map_or("null".to_owned(), measurement_json)
                    )
                })
                .collect();
            format!("        {{ {} }}", runs.join(", "))
        })
        .collect();
    fields.push(field("rounds", format!("[\n{}\n      ]", rounds.join(",\n"))));
    format!("    {{\n{}\n    }}", fields.join(",\n"))
}

fn measurement_json(m: &Measurement) -> String {
    format!(
        "{{ \"appends_per_s\": {}, \"mb_per_s\": {}, \"p50_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \
         \"allocs_per_append\": {}, \"alloc_bytes_per_append\": {} }}",
        json_number(m.appends_per_s),
        json_number(m.mb_per_s),
        json_number(m.p50_us),
        json_number(m.p99_us),
        json_number(m.p999_us),
        json_number(m.allocs_per_append),
        json_number(m.alloc_bytes_per_append)
    )
}
