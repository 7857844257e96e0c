//! The performance chapter's tables, written from two recorded runs (QEMU
//! 7.2 and 10.0): each table lives in the chapter between the markers
//! `<!-- recorded:NAME -->` and `<!-- /recorded:NAME -->`, and `--tables`
//! rewrites what is between them, leaving the prose alone.

use crate::{BATCHES, Results, SIZES};

/// The keys of the "page tables and kernel basics" table, in its order.
const BASICS: &[&str] = &[
    "dma.small.lsi.tlb_alias.batch1.ratio",
    "mm.insert_page.ns_per_page",
    "mm.insert_pages.ns_per_page",
    "mm.x86_64_map_to.ns_per_page",
    "mm.floor.ns_per_page",
    "mm.insert_pages_vs_map_to.ratio",
    "mm.insert_pages_vs_floor.ratio",
    "mm.remap_1GiB.4k.us",
    "mm.remap_1GiB.2m.us",
    "mm.remap_1GiB.1g.us",
    "mm.remap_1GiB.4k.entries",
    "mm.remap_1GiB.2m.entries",
    "mm.remap_1GiB.1g.entries",
    "mm.remap_1GiB.time_4k_over_1g.ratio",
    "mm.zap_64MiB.1cpu.us",
    "mm.zap_64MiB.4cpu.us",
    "mm.shootdown.ipis_per_zap.1page",
    "mm.shootdown.ipis_per_zap.64MiB",
    "dma.copybreak.bytes",
    "dma.copybreak.mixed_vs_engine_only.ratio",
    "dma.async_vs_poll.4KiB.ratio",
    "dma.async_vs_poll.batch150.ratio",
    "dma.overlap.lsi_edu.ratio",
    "dma.submit.percpu_vs_shared.ratio",
    "iommu.map_vs_insert_pages.ratio",
    "iommu.map_1GiB.entries",
    "iommu.copy.lsi.1MiB.ratio",
    "iommu.copy.lsi_vs_raw.1MiB.on.ratio",
    "user.lsi_driver.copies_per_s",
    "user.lsi_driver_vs_kernel.ratio",
    "mmio.lsi.read32.ns",
    "mmio.lsi.read32_rep.ns",
    "mmio.lsi.write32.ns",
    "mmio.lsi.write32_rep.ns",
    "mmio.edu.read32.ns",
    "mmio.edu.read32_rep.ns",
    "cpu.copy.4KiB.gbps",
    "cpu.copy.16MiB.gbps",
];

/// `value` to three significant digits (no exponent, no trailing dot).
fn significant(value: f64) -> String {
    let magnitude = if value == 0.0 {
        0
    } else {
        value.abs().log10().floor() as i32
    };
    let decimals = (2 - magnitude).max(0) as usize;
    format!("{value:.decimals$}")
}

/// A whole number with its thousands set apart by spaces: `13 765`.
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

/// A value as the tables show it, by its unit.
fn show(value: f64, unit: &str) -> String {
    match unit {
        "x" => format!("{value:.2}"),
        "copies/s" | "requests/s" if value >= 1e6 => format!("{} M/s", significant(value / 1e6)),
        "copies/s" | "requests/s" if value >= 1e3 => format!("{} k/s", significant(value / 1e3)),
        "copies/s" | "requests/s" => format!("{} /s", significant(value)),
        "us" | "ns" | "ms" if value >= 1000.0 => format!("{} {unit}", grouped(value)),
        "count" | "bytes" | "rounds" => {
            let number = grouped(value);
            if unit == "count" {
                number
            } else {
                format!("{number} {unit}")
            }
        }
        _ => format!("{} {unit}", significant(value)),
    }
}

/// One recorded run: its results and the QEMU version it names (`7.2`).
struct Run<'a> {
    results: &'a Results,
    version: String,
}

impl<'a> Run<'a> {
    fn new(results: &'a Results) -> Self {
        let full = results.qemu.trim_start_matches("QEMU ");
        let version = full.split('.').take(2).collect::<Vec<_>>().join(".");
        Run { results, version }
    }

    /// The value of `key` as the tables show it, or `n/a`.
    fn get(&self, key: &str) -> String {
        match (self.results.values.get(key), self.results.units.get(key)) {
            (Some(&value), Some(unit)) => show(value, unit),
            (Some(&value), None) => significant(value),
            _ => "n/a".into(),
        }
    }
}

fn bandwidth(runs: &[Run<'_>; 2]) -> String {
    let mut out = String::from("| size ");
    for run in runs {
        let v = &run.version;
        out += &format!("| API {v} | raw {v} | API/raw {v} | CPU {v} ");
    }
    out += "|\n|---|---|---|---|---|---|---|---|---|\n";
    for (label, _) in SIZES {
        out += &format!("| {} ", label.replace("KiB", " KiB").replace("MiB", " MiB"));
        for run in runs {
            out += &format!(
                "| {} | {} | {} | {} ",
                run.get(&format!("dma.copy.lsi.{label}.gbps")),
                run.get(&format!("dma.copy.raw.{label}.gbps")),
                run.get(&format!("dma.copy.lsi_vs_raw.{label}.ratio")),
                run.get(&format!("dma.copy.cpu.{label}.gbps")),
            );
        }
        out += "|\n";
    }
    out
}

fn small_copies(runs: &[Run<'_>; 2]) -> String {
    let mut out = String::from("| batch ");
    for run in runs {
        let v = &run.version;
        out += &format!("| API {v} | bare {v} | API/bare {v} ");
    }
    out += "| MMIO reads / writes per issue, per descriptor |\n";
    out += "|---|---|---|---|---|---|---|---|\n";
    for batch in BATCHES {
        out += &format!("| {batch} ");
        for run in runs {
            out += &format!(
                "| {} | {} | {} ",
                run.get(&format!("dma.small.lsi.batch{batch}.copies_per_s")),
                run.get(&format!("dma.small.raw.batch{batch}.copies_per_s")),
                run.get(&format!("dma.small.lsi_vs_raw.batch{batch}.ratio")),
            );
        }
        let mmio = |what: &str| runs[0].get(&format!("dma.lsi.mmio_{what}.batch{batch}"));
        out += &format!(
            "| {} / {}, {} |\n",
            mmio("reads_per_issue"),
            mmio("writes_per_issue"),
            mmio("per_desc")
        );
    }
    for batch in [1, 16] {
        out += &format!("| {batch}, SIGP chain ");
        for run in runs {
            out += &format!(
                "| {} | {} | {} ",
                run.get(&format!("dma.small.lsi.batch{batch}.copies_per_s")),
                run.get(&format!("dma.small.sigp_raw.batch{batch}.copies_per_s")),
                run.get(&format!("dma.small.lsi_vs_sigp_raw.batch{batch}.ratio")),
            );
        }
        out += "|  |\n";
    }
    out
}

fn basics(runs: &[Run<'_>; 2]) -> String {
    let mut out = format!(
        "| key | QEMU {} | QEMU {} |\n|---|---|---|\n",
        runs[0].version, runs[1].version
    );
    for &key in BASICS {
        out += &format!("| {key} | {} | {} |\n", runs[0].get(key), runs[1].get(key));
    }
    out
}

/// The cells that read `n/a` in `table`: a key one of the runs lacks
/// (a benchmark skipped, or renamed).
pub fn missing(table: &str) -> usize {
    table.matches("n/a").count()
}

/// `chapter` with every marked table rewritten from `first` and `second`;
/// an error names a table whose markers are missing.
pub fn rewrite(chapter: &str, first: &Results, second: &Results) -> Result<String, String> {
    let runs = [Run::new(first), Run::new(second)];
    let mut out = chapter.to_string();
    for (name, table) in [
        ("bandwidth", bandwidth(&runs)),
        ("small_copies", small_copies(&runs)),
        ("basics", basics(&runs)),
    ] {
        let (open, close) = (
            format!("<!-- recorded:{name} -->\n"),
            format!("<!-- /recorded:{name} -->"),
        );
        let start = out
            .find(&open)
            .ok_or(format!("no `{}` marker", open.trim()))?
            + open.len();
        let end = out[start..]
            .find(&close)
            .ok_or(format!("no `{close}` marker"))?
            + start;
        out.replace_range(start..end, &table);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn values_show_as_the_tables_print_them() {
        assert_eq!(show(3.5189, "GB/s"), "3.52 GB/s");
        assert_eq!(show(18.84, "GB/s"), "18.8 GB/s");
        assert_eq!(show(1_183_000.0, "copies/s"), "1.18 M/s");
        assert_eq!(show(810_400.0, "copies/s"), "810 k/s");
        assert_eq!(show(0.7749, "x"), "0.77");
        assert_eq!(show(13_765.2, "us"), "13 765 us");
        assert_eq!(show(66.84, "us"), "66.8 us");
        assert_eq!(show(262_658.0, "count"), "262 658");
        assert_eq!(show(4096.0, "bytes"), "4 096 bytes");
        assert_eq!(show(1.0, "rounds"), "1 rounds");
        assert_eq!(show(0.0, "count"), "0");
    }

    #[test]
    fn marked_tables_are_rewritten_and_the_prose_is_left_alone() {
        let seven = parse(concat!(
            "key,value,unit\n",
            "qemu.version,7.2.22,\n",
            "dma.copy.lsi.4KiB.gbps,3.5189,GB/s\n",
            "dma.small.lsi.batch1.copies_per_s,1183000,copies/s\n",
            "dma.lsi.mmio_writes_per_issue.batch1,1,count\n",
            "mm.floor.ns_per_page,17.12,ns\n",
        ));
        let ten = parse(concat!(
            "key,value,unit\n",
            "qemu.version,10.0.2,\n",
            "mm.floor.ns_per_page,11.8,ns\n",
        ));
        let chapter = concat!(
            "prose before\n",
            "<!-- recorded:bandwidth -->\nold\n<!-- /recorded:bandwidth -->\n",
            "between\n",
            "<!-- recorded:small_copies -->\n<!-- /recorded:small_copies -->\n",
            "<!-- recorded:basics -->\nold | table\n<!-- /recorded:basics -->\n",
            "prose after\n",
        );
        let out = rewrite(chapter, &seven, &ten).unwrap();
        assert!(out.starts_with("prose before\n<!-- recorded:bandwidth -->\n| size | API 7.2 |"));
        assert!(out.contains("| 4 KiB | 3.52 GB/s | n/a | n/a | n/a | n/a |"));
        assert!(out.contains("\n<!-- /recorded:bandwidth -->\nbetween\n"));
        assert!(out.contains("| 1 | 1.18 M/s | n/a | n/a | n/a | n/a | n/a | n/a / 1, n/a |"));
        assert!(out.contains("| key | QEMU 7.2 | QEMU 10.0 |"));
        assert!(out.contains("| mm.floor.ns_per_page | 17.1 ns | 11.8 ns |"));
        assert!(!out.contains("old"));
        assert!(out.ends_with("<!-- /recorded:basics -->\nprose after\n"));
        // Every cell but the six whose keys the runs above have.
        assert_eq!(missing(&out), 4 * 8 + 4 * 9 + 2 * 6 + 2 * BASICS.len() - 6);
        // Rewriting again changes nothing.
        assert_eq!(rewrite(&out, &seven, &ten).unwrap(), out);
        let unmarked = rewrite("no markers here\n", &seven, &ten);
        assert_eq!(
            unmarked,
            Err("no `<!-- recorded:bandwidth -->` marker".into())
        );
    }
}
