//! Runs the guest suite in QEMU through `qemu-run.sh`, and checks that the
//! harness really reports failures (so this test can fail).

use std::path::Path;
use std::process::{Command, Output};

fn qemu_run(args: &[&str]) -> (Output, String) {
    qemu_run_with(args, &[])
}

/// As [`qemu_run`], with `env` added to the script's environment.
fn qemu_run_with(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(root.join("qemu-run.sh"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(&root)
        .output()
        .expect("run qemu-run.sh");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

/// The last `N passed, M failed` line of a run.
fn summary(text: &str) -> Option<(u32, u32)> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed") && l.contains(" passed, "))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

fn assert_suite_passed(output: &Output, text: &str) {
    let summary = summary(text);
    assert!(
        output.status.success() && matches!(summary, Some((passed, 0)) if passed > 0),
        "guest suite failed ({:?}, summary {summary:?}):\n{text}",
        output.status
    );
}

/// The suite on the default machine: four CPUs, q35 with a VT-d unit.
/// The kernel adds the IOMMU tests only when its DMAR table names a unit,
/// so they are counted here: a parser that refused QEMU's table would
/// otherwise drop them without a failure.
#[test]
fn guest_suite_passes() {
    let (output, text) = qemu_run(&["test"]);
    assert_suite_passed(&output, &text);
    let iommu_tests = text
        .lines()
        .filter(|l| l.starts_with("test iommu."))
        .count();
    assert!(iommu_tests >= 10, "{iommu_tests} IOMMU tests ran:\n{text}");
}

/// The IOMMU tests on a unit with Caching Mode (QEMU's `caching-mode=on`),
/// where every new mapping needs an invalidation: they pass, and the unit
/// did report CM.
#[test]
fn iommu_tests_pass_with_caching_mode() {
    let (output, text) = qemu_run(&[
        "test",
        "iommu.",
        "--",
        "-global",
        "intel-iommu.caching-mode=on",
    ]);
    assert_suite_passed(&output, &text);
    assert!(text.contains("iommu: caching mode on"), "{text}");
}

/// The same suite on one CPU: nothing in it may need a second one.
#[test]
fn guest_suite_passes_on_one_cpu() {
    let (output, text) = qemu_run_with(&["test"], &[("SMP", "1")]);
    assert_suite_passed(&output, &text);
    assert!(
        text.contains("cpus: 1"),
        "the guest ran on one CPU:\n{text}"
    );
}

#[test]
fn harness_reports_every_kind_of_failure() {
    let (output, text) = qemu_run(&["selftest"]);
    assert!(
        !output.status.success(),
        "a failing guest run must exit non-zero:\n{text}"
    );
    assert_eq!(summary(&text), Some((1, 4)), "{text}");
    for (name, why) in [
        ("selftest.assertion_fails", "deliberate assertion failure"),
        ("selftest.panics", "deliberate panic"),
        ("selftest.unexpected_page_fault", "cr2 0x4000dead0000"),
        ("selftest.hangs", "watchdog expired"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("test {name} ... ")));
        assert!(
            line.is_some_and(|l| l.contains("FAILED") && text.contains(why)),
            "{name} not reported as failed with {why:?}:\n{text}"
        );
    }
}

#[test]
fn bad_command_lines_are_clear_errors() {
    let (output, text) = qemu_run(&["nosuchmode"]);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("unknown mode 'nosuchmode'"), "{text}");

    let (output, text) = qemu_run(&["test", "no.such.test"]);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("no test matches filter 'no.such.test'"),
        "{text}"
    );
}

#[test]
fn a_bench_run_with_no_results_fails_and_keeps_the_last_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let csv = root.join("target/bench/latest.csv");
    let previous = std::fs::read(&csv).ok();
    if previous.is_none() {
        std::fs::create_dir_all(csv.parent().unwrap()).unwrap();
        std::fs::write(&csv, "key,value,unit\nmarker,1,x\n").unwrap();
    }
    let kept = std::fs::read(&csv).unwrap();
    let (output, text) = qemu_run(&["bench", "no.such.group"]);
    let after = std::fs::read(&csv).ok();
    if previous.is_none() {
        let _ = std::fs::remove_file(&csv);
    }
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("no benchmark result"), "{text}");
    assert_eq!(after, Some(kept), "latest.csv must be left as it was");
}

#[test]
fn a_kernel_with_its_own_page_tables_adopts_the_mm_half() {
    let (output, text) = qemu_run(&["example"]);
    assert!(
        output.status.success() && text.contains("example done"),
        "the example kernel failed ({:?}):\n{text}",
        output.status
    );
}

/// The lines of code (not blank, not comments) between the glue markers
/// of example `name` (`boot/src/example/{name}.rs`): what a kernel writes
/// to adopt that part of the crate.
fn glue_lines(name: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join(format!("boot/src/example/{name}.rs"));
    let example = std::fs::read_to_string(path).unwrap();
    let start = example.find("// glue: begin").expect("glue markers");
    let end = example.find("// glue: end").expect("glue markers");
    example[start..end]
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

/// Each example's glue is within issue 19's limit, and the README says how
/// many lines it is ("N lines of mm glue").
#[test]
fn the_examples_need_no_more_glue_than_the_readme_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for (name, limit) in [("mm", 20), ("dma", 40), ("iommu", 20)] {
        let lines = glue_lines(name);
        assert!(lines <= limit, "{lines} lines of {name} glue, over {limit}");
        assert!(
            readme.contains(&format!("{lines} lines of {name} glue")),
            "README.md must say \"{lines} lines of {name} glue\""
        );
    }
}
