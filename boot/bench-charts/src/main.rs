//! Draws `./qemu-run.sh bench`'s results as SVG charts:
//!
//! - `bandwidth.svg`: copy bandwidth by size, per path (the LSI53C895A
//!   through the API, a hand-written SCRIPTS Memory Move, the CPU engine);
//! - `small_copies.svg`: 64-byte copies per second by batch size (the API
//!   and a bare chain of Memory Moves);
//! - `mm.svg`: nanoseconds per page for each way of mapping 64 MiB.
//!
//! Usage: `dmaengine-bench-charts <latest.csv> <output folder>`.
//!
//! With `--tables <7.2 csv> <10.0 csv> <chapter.md>` it rewrites the
//! performance chapter's tables from two recorded runs instead (see
//! [`tables`]).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

mod tables;

/// The results: key to value and to unit, plus the QEMU version row if
/// there is one.
struct Results {
    values: BTreeMap<String, f64>,
    units: BTreeMap<String, String>,
    qemu: String,
}

fn parse(csv: &str) -> Results {
    let (mut values, mut units) = (BTreeMap::new(), BTreeMap::new());
    let mut qemu = String::from("QEMU version unknown");
    for line in csv.lines().skip(1) {
        let mut fields = line.split(',');
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        if key == "qemu.version" {
            qemu = format!("QEMU {value}");
        } else if let Ok(v) = value.parse::<f64>() {
            values.insert(key.to_string(), v);
            if let Some(unit) = fields.next().filter(|u| !u.is_empty()) {
                units.insert(key.to_string(), unit.to_string());
            }
        }
    }
    Results {
        values,
        units,
        qemu,
    }
}

const SIZES: [(&str, f64); 4] = [
    ("4KiB", 4096.0),
    ("64KiB", 65536.0),
    ("1MiB", 1048576.0),
    ("16MiB", 16777216.0),
];
const BATCHES: [f64; 4] = [1.0, 16.0, 256.0, 4096.0];

/// One line of a chart: its name, color and points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// A log-x line chart of `series`.
fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<'_>],
) -> Result<(), Box<dyn Error>> {
    let points = series.iter().flat_map(|s| s.2.iter());
    let (x_max, y_max) = points.fold((1.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let x_min = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(f64::MAX, f64::min)
        .min(x_max);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0.0..y_max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| human(*x))
        .draw()?;
    for (name, color, pts) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `4096` as `4K`, `1048576` as `1M`.
fn human(x: f64) -> String {
    let x = x.round() as u64;
    match x {
        x if x >= 1 << 20 && x % (1 << 20) == 0 => format!("{}M", x >> 20),
        x if x >= 1 << 10 && x % (1 << 10) == 0 => format!("{}K", x >> 10),
        x => x.to_string(),
    }
}

fn points(results: &Results, keys: impl Iterator<Item = (f64, String)>) -> Vec<(f64, f64)> {
    keys.filter_map(|(x, key)| results.values.get(&key).map(|&v| (x, v)))
        .collect()
}

fn bandwidth(results: &Results, dir: &Path) -> Result<(), Box<dyn Error>> {
    let path_of = |path: &str| {
        points(
            results,
            SIZES
                .iter()
                .map(move |(label, bytes)| (*bytes, format!("dma.copy.{path}.{label}.gbps"))),
        )
    };
    line_chart(
        &dir.join("bandwidth.svg"),
        &format!(
            "Copy bandwidth by size, one request per copy ({})",
            results.qemu
        ),
        "bytes per copy",
        "GB/s",
        &[
            ("LSI53C895A through the API", BLUE, path_of("lsi")),
            (
                "hand-written Memory Move",
                RGBColor(120, 120, 120),
                path_of("raw"),
            ),
            ("CPU engine", RED, path_of("cpu")),
        ],
    )
}

fn small_copies(results: &Results, dir: &Path) -> Result<(), Box<dyn Error>> {
    let path_of = |path: &str| {
        points(
            results,
            BATCHES
                .iter()
                .map(move |&b| (b, format!("dma.small.{path}.batch{b}.copies_per_s"))),
        )
        .into_iter()
        .map(|(x, y)| (x, y / 1e6))
        .collect::<Vec<_>>()
    };
    line_chart(
        &dir.join("small_copies.svg"),
        &format!("64-byte copies by batch size ({})", results.qemu),
        "copies per batch",
        "million copies per second",
        &[
            ("LSI53C895A through the API", BLUE, path_of("lsi")),
            (
                "bare chain of Memory Moves",
                RGBColor(120, 120, 120),
                path_of("raw"),
            ),
        ],
    )
}

fn mm(results: &Results, dir: &Path) -> Result<(), Box<dyn Error>> {
    let bars: Vec<(&str, f64)> = [
        ("insert_page", "mm.insert_page.ns_per_page"),
        ("x86_64 map_to", "mm.x86_64_map_to.ns_per_page"),
        ("insert_pages", "mm.insert_pages.ns_per_page"),
        ("the floor", "mm.floor.ns_per_page"),
    ]
    .into_iter()
    .filter_map(|(name, key)| results.values.get(key).map(|&v| (name, v)))
    .collect();
    let y_max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
    let path = dir.join("mm.svg");
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Nanoseconds per page, mapping 64 MiB ({})", results.qemu),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (0..bars.len() as i32 - 1).into_segmented(),
            0.0..y_max * 1.15,
        )?;
    let names: Vec<&str> = bars.iter().map(|b| b.0).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("ns per page")
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i as usize).copied().unwrap_or("").to_string(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        let i = i as i32;
        Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *v),
            ],
            BLUE.mix(0.6).filled(),
        )
    }))?;
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, first, second, chapter] = args.as_slice()
        && flag == "--tables"
    {
        let (first, second) = (
            parse(&std::fs::read_to_string(first)?),
            parse(&std::fs::read_to_string(second)?),
        );
        let text = tables::rewrite(&std::fs::read_to_string(chapter)?, &first, &second)
            .map_err(|e| format!("{chapter}: {e}"))?;
        // A skipped benchmark shows as `n/a`: refused, so it is noticed.
        let missing = tables::missing(&text);
        if missing > 0 {
            return Err(format!("{missing} cells would read n/a: a run lacks their keys").into());
        }
        std::fs::write(chapter, text)?;
        println!("rewrote the tables of {chapter}");
        return Ok(());
    }
    let [_, csv, dir] = args.as_slice() else {
        return Err(concat!(
            "usage: dmaengine-bench-charts <latest.csv> <output folder>\n",
            "   or: dmaengine-bench-charts --tables <7.2 csv> <10.0 csv> <chapter.md>"
        )
        .into());
    };
    let results = parse(&std::fs::read_to_string(csv)?);
    if results.values.is_empty() {
        return Err(format!("{csv}: no results").into());
    }
    let dir = Path::new(dir);
    bandwidth(&results, dir)?;
    small_copies(&results, dir)?;
    mm(&results, dir)?;
    for name in ["bandwidth.svg", "small_copies.svg", "mm.svg"] {
        println!("wrote {}", dir.join(name).display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse_with_their_qemu_version_and_charts_come_out() {
        let csv = concat!(
            "key,value,unit\n",
            "qemu.version,7.2.22,\n",
            "dma.copy.lsi.4KiB.gbps,3.5,GB/s\n",
            "dma.copy.lsi.64KiB.gbps,20.0,GB/s\n",
            "dma.small.lsi.batch1.copies_per_s,900000,copies/s\n",
            "mm.insert_pages.ns_per_page,18.0,ns\n",
            "broken line\n",
        );
        let results = parse(csv);
        assert_eq!(results.qemu, "QEMU 7.2.22");
        assert_eq!(results.values.get("dma.copy.lsi.64KiB.gbps"), Some(&20.0));
        assert_eq!(results.values.len(), 4);
        let dir = std::env::temp_dir().join(format!("charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        bandwidth(&results, &dir).unwrap();
        small_copies(&results, &dir).unwrap();
        mm(&results, &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("bandwidth.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("QEMU 7.2.22"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(human(4096.0), "4K");
        assert_eq!(human(16777216.0), "16M");
    }
}
