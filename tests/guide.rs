//! The guide (`guide/`, an mdBook) against the code: every table marked
//! `<!-- checked: NAME -->` holds exactly the rows the function for NAME
//! builds from the crate's constants (and the example kernels' glue
//! counts), so a changed register offset, bit or SCRIPTS encoding fails
//! here until the guide follows; and every relative link and image in the
//! guide's sources, the README and the built book leads to a file (and
//! heading) that exists.
//!
//! The guide is not in the published package: without `guide/` these tests
//! pass without checking anything.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dmaengine::drivers::lsi53c895a::regs::{self, Dcntl, Dmode, Dstat, Istat, Istat1};
use dmaengine::drivers::lsi53c895a::script;
use dmaengine::iommu::regs as vtd;
use dmaengine::mm::pte::{self, CacheMode};

/// A table's rows: the first cell's name (backticks dropped), then the
/// values expected in the cells after it, in order.
type Rows = Vec<(&'static str, Vec<u64>)>;

fn row(name: &'static str, values: &[u64]) -> (&'static str, Vec<u64>) {
    (name, values.to_vec())
}

/// Chapter 4: how the chip is found on the bus, and its two register BARs.
fn lsi_pci() -> Rows {
    vec![
        row("VENDOR_ID", &[regs::VENDOR_ID.into()]),
        row("DEVICE_ID", &[regs::DEVICE_ID.into()]),
        row("IO_BAR", &[regs::IO_BAR as u64]),
        row("IO_SIZE", &[regs::IO_SIZE.into()]),
        row("MMIO_BAR", &[regs::MMIO_BAR as u64]),
        row("MMIO_SIZE", &[regs::MMIO_SIZE as u64]),
    ]
}

/// A register row's values: its offset, then its width in bits (from the
/// register's type).
fn reg<T, A>(r: dmaengine::mmio::Reg<T, A>) -> [u64; 2] {
    [r.offset() as u64, 8 * size_of::<T>() as u64]
}

/// Chapter 4: the LSI53C895A registers the driver touches, their offsets
/// and widths.
fn lsi_registers() -> Rows {
    vec![
        row("DSTAT", &reg(regs::DSTAT)),
        row("ISTAT", &reg(regs::ISTAT)),
        row("ISTAT1", &reg(regs::ISTAT1)),
        row("CTEST2", &reg(regs::CTEST2)),
        row("DSP", &reg(regs::DSP)),
        row("DSPS", &reg(regs::DSPS)),
        row("DMODE", &reg(regs::DMODE)),
        row("DIEN", &reg(regs::DIEN)),
        row("DCNTL", &reg(regs::DCNTL)),
        row("SIST0", &reg(regs::SIST0)),
        row("SIST1", &reg(regs::SIST1)),
    ]
}

/// Chapter 4: the register bits the driver reads or writes.
fn lsi_bits() -> Rows {
    let b = |bits: u8| u64::from(bits);
    vec![
        row("ISTAT.ABRT", &[b(Istat::ABRT.bits())]),
        row("ISTAT.SRST", &[b(Istat::SRST.bits())]),
        row("ISTAT.SIGP", &[b(Istat::SIGP.bits())]),
        row("ISTAT.INTF", &[b(Istat::INTF.bits())]),
        row("ISTAT.SIP", &[b(Istat::SIP.bits())]),
        row("ISTAT.DIP", &[b(Istat::DIP.bits())]),
        row("ISTAT1.SRUN", &[b(Istat1::SRUN.bits())]),
        row("DSTAT.DFE", &[b(Dstat::DFE.bits())]),
        row("DSTAT.MDPE", &[b(Dstat::MDPE.bits())]),
        row("DSTAT.BF", &[b(Dstat::BF.bits())]),
        row("DSTAT.ABRT", &[b(Dstat::ABRT.bits())]),
        row("DSTAT.SIR", &[b(Dstat::SIR.bits())]),
        row("DSTAT.IID", &[b(Dstat::IID.bits())]),
        row("DMODE.MAN", &[b(Dmode::MAN.bits())]),
        row("DCNTL.STD", &[b(Dcntl::STD.bits())]),
    ]
}

/// Chapter 4: the SCRIPTS instructions the driver emits, first dword (and
/// the instruction's length in 32-bit words).
fn lsi_scripts() -> Rows {
    let w = |words: u32| u64::from(words);
    vec![
        row(
            "MEMORY_MOVE",
            &[
                script::memory_move(0, 0, 0)[0].into(),
                w(script::MOVE_WORDS),
            ],
        ),
        row(
            "STORE",
            &[
                script::store(regs::DSP, 4, 0)[0].into(),
                w(script::STORE_WORDS),
            ],
        ),
        row("JUMP", &[script::jump(0)[0].into(), w(script::TC_WORDS)]),
        row("INT", &[script::int(0)[0].into(), w(script::TC_WORDS)]),
        row(
            "INTFLY",
            &[script::intfly(0)[0].into(), w(script::TC_WORDS)],
        ),
        row(
            "MOVE_REG_OR_TO_SFBR",
            &[script::clear_sigp()[0].into(), w(script::TC_WORDS)],
        ),
        row(
            "WAIT_RESELECT",
            &[script::wait_reselect(0)[0].into(), w(script::TC_WORDS)],
        ),
        row(
            "ILLEGAL",
            &[script::illegal()[0].into(), w(script::TC_WORDS)],
        ),
    ]
}

/// Chapter 4: the largest Memory Move.
fn lsi_limits() -> Rows {
    vec![row("MAX_MOVE", &[script::MAX_MOVE.into()])]
}

/// Chapter 6: the bits of a CPU page-table entry the crate writes.
fn pte_bits() -> Rows {
    vec![
        row("PRESENT", &[pte::PRESENT]),
        row("WRITABLE", &[pte::WRITABLE]),
        row("USER", &[pte::USER]),
        row("PWT", &[pte::PWT]),
        row("PCD", &[pte::PCD]),
        row("ACCESSED", &[pte::ACCESSED]),
        row("DIRTY", &[pte::DIRTY]),
        row("HUGE", &[pte::HUGE]),
        row("PAT_4K", &[pte::PAT_4K]),
        row("SPECIAL", &[pte::SPECIAL]),
        row("OWNED", &[pte::OWNED]),
        row("RETIRED", &[pte::RETIRED]),
        row("PAT_2M", &[pte::PAT_2M]),
        row("NO_EXECUTE", &[pte::NO_EXECUTE]),
    ]
}

/// Chapter 6: each cache mode's PAT index and the bits that select it in
/// a 4 KiB and in a 2 MiB entry, under Linux's PAT.
fn pat_modes() -> Rows {
    let mode =
        |name, m: CacheMode| row(name, &[m.pat_index(), m.pte_bits(false), m.pte_bits(true)]);
    vec![
        mode("WriteBack", CacheMode::WriteBack),
        mode("WriteCombining", CacheMode::WriteCombining),
        mode("UncachedMinus", CacheMode::UncachedMinus),
        mode("Uncached", CacheMode::Uncached),
        mode("WriteProtected", CacheMode::WriteProtected),
        mode("WriteThrough", CacheMode::WriteThrough),
    ]
}

/// Chapter 6: the IA32_PAT value.
fn pat_msr() -> Rows {
    vec![row("LINUX_PAT", &[pte::LINUX_PAT])]
}

/// Chapter 7: the bits of a VT-d second-level entry the crate writes.
fn sl_bits() -> Rows {
    vec![
        row("SL_READ", &[pte::SL_READ]),
        row("SL_WRITE", &[pte::SL_WRITE]),
        row("SL_OWNED", &[pte::SL_OWNED]),
        row("SL_SPECIAL", &[pte::SL_SPECIAL]),
    ]
}

/// Chapter 7: the VT-d unit's registers the driver uses.
fn vtd_registers() -> Rows {
    let r = |off: usize| off as u64;
    vec![
        row("VER", &[r(vtd::VER)]),
        row("CAP", &[r(vtd::CAP)]),
        row("ECAP", &[r(vtd::ECAP)]),
        row("GCMD", &[r(vtd::GCMD)]),
        row("GSTS", &[r(vtd::GSTS)]),
        row("RTADDR", &[r(vtd::RTADDR)]),
        row("CCMD", &[r(vtd::CCMD)]),
        row("FSTS", &[r(vtd::FSTS)]),
        row("FECTL", &[r(vtd::FECTL)]),
        row("FEDATA", &[r(vtd::FEDATA)]),
        row("FEADDR", &[r(vtd::FEADDR)]),
        row("FEUADDR", &[r(vtd::FEUADDR)]),
        row("IQH", &[r(vtd::IQH)]),
        row("IQT", &[r(vtd::IQT)]),
        row("IQA", &[r(vtd::IQA)]),
    ]
}

/// Every named flag of the `bitflags` type `F`, as `Type::NAME` rows: a
/// flag added to `iommu::regs` fails here until the guide lists it.
fn flag_rows<F: bitflags::Flags>(ty: &str) -> Rows
where
    F::Bits: Into<u64>,
{
    F::FLAGS
        .iter()
        .map(|flag| {
            let name: &'static str = Box::leak(format!("{ty}::{}", flag.name()).into_boxed_str());
            (name, vec![flag.value().bits().into()])
        })
        .collect()
}

/// Chapter 7: register bits and table-entry bits of the VT-d driver, every
/// flag of every `bitflags` type in `iommu::regs`.
fn vtd_bits() -> Rows {
    [
        flag_rows::<vtd::Gcmd>("Gcmd"),
        flag_rows::<vtd::Gsts>("Gsts"),
        flag_rows::<vtd::Cap>("Cap"),
        flag_rows::<vtd::Ecap>("Ecap"),
        flag_rows::<vtd::Ccmd>("Ccmd"),
        flag_rows::<vtd::Iotlb>("Iotlb"),
        flag_rows::<vtd::Fsts>("Fsts"),
        flag_rows::<vtd::Fectl>("Fectl"),
        flag_rows::<vtd::Frcd>("Frcd"),
        flag_rows::<vtd::RootEntry>("RootEntry"),
        flag_rows::<vtd::ContextEntry>("ContextEntry"),
    ]
    .concat()
}

/// Chapter 7: the invalidation-queue descriptors' low dwords, and the
/// fault reasons the driver names.
fn vtd_descriptors() -> Rows {
    vec![
        row("DESC_CONTEXT_GLOBAL", &[vtd::DESC_CONTEXT_GLOBAL]),
        row("DESC_IOTLB", &[vtd::DESC_IOTLB]),
        row("DESC_WAIT", &[vtd::DESC_WAIT]),
        row("QUEUE_DESCRIPTORS", &[vtd::QUEUE_DESCRIPTORS.into()]),
        row("REASON_WRITE", &[vtd::REASON_WRITE.into()]),
        row("REASON_READ", &[vtd::REASON_READ.into()]),
    ]
}

/// Chapter 2: the lines of glue each example kernel needs, counted as
/// `boot/guest-tests` counts them for the README (code lines between the
/// `glue: begin` and `glue: end` markers, comments and blank lines left
/// out).
fn glue_counts() -> Rows {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let count = |name: &str| {
        let path = root.join(format!("boot/src/example/{name}.rs"));
        let example = fs::read_to_string(path).unwrap();
        let start = example.find("// glue: begin").expect("glue markers");
        let end = example.find("// glue: end").expect("glue markers");
        example[start..end]
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .count() as u64
    };
    vec![
        row("dma", &[count("dma")]),
        row("mm", &[count("mm")]),
        row("iommu", &[count("iommu")]),
    ]
}

/// Every checked table, by the name its marker gives.
fn tables() -> Vec<(&'static str, Rows)> {
    vec![
        ("lsi-pci", lsi_pci()),
        ("lsi-registers", lsi_registers()),
        ("lsi-bits", lsi_bits()),
        ("lsi-scripts", lsi_scripts()),
        ("lsi-limits", lsi_limits()),
        ("pte-bits", pte_bits()),
        ("pat-modes", pat_modes()),
        ("pat-msr", pat_msr()),
        ("sl-bits", sl_bits()),
        ("vtd-registers", vtd_registers()),
        ("vtd-bits", vtd_bits()),
        ("vtd-descriptors", vtd_descriptors()),
        ("glue", glue_counts()),
    ]
}

/// The guide's sources, or `None` outside the workspace (the published
/// package has no guide).
fn guide_src() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guide/src");
    if src.join("SUMMARY.md").exists() {
        Some(src)
    } else {
        eprintln!("no guide/ here (the published package): nothing to check");
        None
    }
}

/// Every Markdown file under `dir`, recursively (symbolic links to
/// directories are not followed: those hold pictures, not chapters).
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(markdown_files(&path));
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A value cell: `0x..` (underscores allowed), a decimal, or `bit N`;
/// backticks dropped.
fn parse_value(cell: &str) -> Option<u64> {
    let cell = cell.trim().trim_matches('`').replace('_', "");
    if let Some(bit) = cell.strip_prefix("bit ") {
        return bit
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(|b| 1u64.checked_shl(b));
    }
    match cell.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => cell.parse().ok(),
    }
}

/// The rows of each checked table in `text`, by marker name: each row's
/// cells, trimmed, header and separator left out.
fn checked_tables(text: &str) -> Vec<(String, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- checked:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        let mut rows = Vec::new();
        while let Some(l) = lines.next_if(|l| l.trim_start().starts_with('|')) {
            let cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            rows.push(cells);
        }
        assert!(rows.len() > 2, "checked table {name} has no rows");
        out.push((name.trim().to_string(), rows.split_off(2)));
    }
    out
}

#[test]
fn register_and_encoding_tables_match_the_constants() {
    let Some(src) = guide_src() else { return };
    let expected: BTreeMap<_, _> = tables().into_iter().collect();
    let mut seen = BTreeMap::new();
    for file in markdown_files(&src) {
        let text = fs::read_to_string(&file).unwrap();
        for (name, rows) in checked_tables(&text) {
            let want = expected
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{}: no check named {name}", file.display()));
            assert!(
                seen.insert(name.clone(), ()).is_none(),
                "table {name} twice"
            );
            let mut got = BTreeMap::new();
            for cells in &rows {
                let key = cells[0].trim_matches('`').to_string();
                let (_, values) = want
                    .iter()
                    .find(|(n, _)| *n == key)
                    .unwrap_or_else(|| panic!("table {name}: row {key} is not checked"));
                for (i, value) in values.iter().enumerate() {
                    let cell = cells.get(i + 1).map(String::as_str).unwrap_or("");
                    assert_eq!(
                        parse_value(cell),
                        Some(*value),
                        "table {name}, row {key}, cell {}: the guide says {cell:?}, the code {value:#x}",
                        i + 2
                    );
                }
                assert!(
                    got.insert(key.clone(), ()).is_none(),
                    "table {name}: {key} twice"
                );
            }
            for (n, _) in want {
                assert!(got.contains_key(*n), "table {name} lacks the row {n}");
            }
        }
    }
    for name in expected.keys() {
        assert!(
            seen.contains_key(*name),
            "no table marked `<!-- checked: {name} -->`"
        );
    }
}

/// mdBook's id for a heading: lower case; letters, digits, `-` and `_`
/// kept, spaces to `-`, the rest dropped.
fn heading_id(heading: &str) -> String {
    let text = heading.replace('`', "");
    text.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_ascii_lowercase())
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect::<String>()
        .to_lowercase()
}

/// The ids of a Markdown file's headings (outside code blocks).
fn heading_ids(text: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            let id = heading_id(h.trim_start_matches('#').trim());
            let n = ids
                .iter()
                .filter(|i| **i == id || i.starts_with(&format!("{id}-")))
                .count();
            ids.push(if n == 0 { id } else { format!("{id}-{n}") });
        }
    }
    ids
}

/// The targets of a Markdown file's links and images (`](target)` and
/// `src="target"`), outside code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Code spans hold Rust, not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for (pattern, end) in [("](", ')'), ("src=\"", '"'), ("href=\"", '"')] {
            let mut rest = prose.as_str();
            while let Some(at) = rest.find(pattern) {
                rest = &rest[at + pattern.len()..];
                if let Some(stop) = rest.find(end) {
                    out.push(
                        rest[..stop]
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    );
                    rest = &rest[stop..];
                }
            }
        }
    }
    out
}

#[test]
fn every_link_and_image_in_the_guide_leads_somewhere() {
    let Some(src) = guide_src() else { return };
    let src = src.canonicalize().unwrap();
    let summary = fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    let mut checked = 0;
    for file in markdown_files(&src) {
        let text = fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        let chapter = file
            .strip_prefix(&src)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if chapter != "SUMMARY.md" {
            assert!(
                summary.contains(&format!("]({chapter})")),
                "{chapter} is not in SUMMARY.md: mdBook would not build it"
            );
        }
        for target in link_targets(&text) {
            let what = format!("{chapter}: link {target:?}");
            assert!(!target.is_empty(), "{what}: empty");
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file_linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            // The built book holds only what is under guide/src (the
            // symbolic link to the recorded charts is copied as a folder).
            let lexical = normalize(&file_linked);
            assert!(
                lexical.starts_with(&src),
                "{what}: outside guide/src, so absent from the built book"
            );
            assert!(file_linked.exists(), "{what}: no such file");
            if let Some(anchor) = anchor {
                let linked = fs::read_to_string(&file_linked).unwrap();
                assert!(
                    heading_ids(&linked).iter().any(|id| id == anchor),
                    "{what}: no heading with that id"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 10,
        "only {checked} links found: the parser is broken"
    );
}

#[test]
fn the_readmes_links_into_the_guide_lead_somewhere() {
    let Some(src) = guide_src() else { return };
    let root = src.join("../..");
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let targets = link_targets(&readme);
    assert!(
        targets
            .iter()
            .filter(|t| t.starts_with("guide/src/"))
            .count()
            >= 10
    );
    for target in targets {
        if target.starts_with("http://") || target.starts_with("https://") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let file = root.join(path);
        assert!(file.exists(), "README.md: link {target:?}: no such file");
        if !anchor.is_empty() {
            let text = fs::read_to_string(&file).unwrap();
            assert!(
                heading_ids(&text).iter().any(|id| id == anchor),
                "README.md: link {target:?}: no such heading"
            );
        }
    }
}

/// `path` with `.` and `..` resolved lexically (not through symbolic links).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_pictures_are_svg_a_browser_opens() {
    let Some(src) = guide_src() else { return };
    let mut n = 0;
    for entry in fs::read_dir(src.join("img")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(path.extension().unwrap(), "svg", "{}", path.display());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("<svg") && text.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(text.trim_end().ends_with("</svg>"), "{}", path.display());
        assert_eq!(
            text.matches("<text").count(),
            text.matches("</text>").count()
        );
        n += 1;
    }
    assert!(
        n >= 3,
        "the ring, the page walk and the VT-d tables at least"
    );
}

/// The value of every `attr="..."` in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let pattern = format!(" {attr}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&pattern) {
        rest = &rest[at + pattern.len()..];
        if let Some(stop) = rest.find('"') {
            out.push(&rest[..stop]);
            rest = &rest[stop..];
        }
    }
    out
}

/// The built book (`mdbook build guide`, into `target/guide/`), if it has
/// been built: every relative `href` and `src` of every page leads to a
/// file the book holds, and every `#anchor` to an id on that page.
#[test]
fn the_built_books_links_and_images_resolve() {
    let Some(src) = guide_src() else { return };
    let book = src.join("../../target/guide");
    if !book.join("index.html").exists() {
        eprintln!("the guide is not built (mdbook build guide): nothing to check");
        return;
    }
    let mut checked = 0;
    for entry in fs::read_dir(&book).unwrap() {
        let page = entry.unwrap().path();
        // 404.html links from the site's root, wherever it is served.
        if page.extension().is_none_or(|e| e != "html") || page.ends_with("404.html") {
            continue;
        }
        let html = fs::read_to_string(&page).unwrap();
        let name = page.file_name().unwrap().to_string_lossy().to_string();
        let values = attribute_values(&html, "href")
            .into_iter()
            .chain(attribute_values(&html, "src"));
        for target in values {
            if target.contains("://") || target.starts_with("mailto:") || target.starts_with("{{") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                book.join(path)
            };
            assert!(
                file.is_file(),
                "{name}: {target:?} is not in the built book"
            );
            if !anchor.is_empty() && file.extension().is_some_and(|e| e == "html") {
                let linked = fs::read_to_string(&file).unwrap();
                assert!(
                    linked.contains(&format!("id=\"{anchor}\"")),
                    "{name}: {target:?}: no such id"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} links in the built book");
}
