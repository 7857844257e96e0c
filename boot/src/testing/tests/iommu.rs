//! The VT-d unit between the LSI53C895A and memory: copies between the
//! IOVAs its domain maps, a stray write recorded and dropped, an unmapped
//! IOVA faulting at once.

use core::sync::atomic::Ordering;
use core::time::Duration;

use dmaengine::engine::{Cookie, ErrorKind, PrepFlags, Status};
use dmaengine::iommu::{self, DmaFault, DomainId};
use dmaengine::mm::frame::PageRef;
use dmaengine::mm::vma::{PageProt, VmFlags};
use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PhysFrame};

use super::irq::{STOP, listen_job};
use crate::dma::LSI;
use crate::harness::Test;
use crate::iommu::{source_of, take};
use crate::mem::phys_to_virt;
use crate::mm::{db, mapper};
use crate::time::Delay;

pub const TESTS: &[Test] = &[
    Test::new(
        "iommu.lsi_copies_between_the_iovas_its_domain_maps",
        copies_between_iovas,
    ),
    Test::new(
        "iommu.stray_write_is_recorded_and_changes_no_ram",
        stray_write,
    ),
    Test::new(
        "iommu.a_refused_write_never_reads_complete_with_the_fault_hook",
        refused_write_never_reads_complete,
    ),
    Test::new("iommu.unmapped_iova_faults_at_once", unmapped_iova_faults),
    Test::new(
        "iommu.lsi_dmatest_under_translation",
        lsi_dmatest_under_translation,
    ),
    Test::new("iommu.edu_copies_under_translation", edu_under_translation),
    Test::new(
        "iommu.a_ring3_driver_copies_between_its_own_iovas",
        ring3_driver_copies,
    ),
    Test::new(
        "iommu.a_ring3_driver_aiming_at_kernel_memory_is_stopped_and_told",
        ring3_rogue_driver,
    ),
    Test::new(
        "iommu.hostile_driver_faults_are_kept_up_to_a_bound",
        endless_faults,
    ),
    Test::new(
        "iommu.hostile_driver_message_on_a_pic_vector_leaves_it_not_in_service",
        message_on_a_pic_vector,
    ),
    Test::new(
        "iommu.hostile_driver_message_on_the_spurious_vector_leaves_the_timer_ticking",
        message_on_the_spurious_vector,
    ),
    Test::new(
        "iommu.grant_calls_refuse_bad_input_and_change_nothing",
        grant_calls_refuse_bad_input,
    ),
    Test::new(
        "iommu.a_fault_interrupt_fails_the_request_that_faulted",
        fault_interrupt_fails_the_request,
    ),
    Test::new(
        "iommu.the_lsi_over_an_iova_hal_sees_only_what_it_was_given",
        lsi_over_the_iova_hal,
    ),
    Test::new(
        "iommu.dmar_unit_for_names_qemus_unit_for_every_pci_function",
        unit_for_every_pci_function,
    ),
    Test::new("iommu.the_unit_says_if_it_caches_misses", caching_mode),
];

/// Prints whether the unit reports Caching Mode (QEMU's `caching-mode=on`),
/// for the host test that boots the IOMMU tests with it: they must pass
/// either way, and that test checks they ran with it.
fn caching_mode() {
    let unit = take().expect("the IOMMU");
    let on = if unit.caching_mode() { "on" } else { "off" };
    crate::println!("iommu: caching mode {on}");
}

/// QEMU's DMAR table, read as a kernel would: its one unit, at the
/// register base the other tests drive, covers every function PCI
/// enumeration found on segment 0 (q35 puts them all on bus 0, so no
/// bridge is asked about). QEMU 7.2 names each of them in an endpoint
/// scope and sets no INCLUDE_PCI_ALL, so a function it did not name has
/// no unit. Nothing on segment 1; no reserved region.
fn unit_for_every_pci_function() {
    use dmaengine::iommu::dmar::{Dmar, ScopeKind};
    let rsdp = crate::platform().boot.rsdp().expect("the RSDP");
    let bytes = crate::acpi::dmar(rsdp).expect("a DMAR table");
    let dmar = Dmar::parse(bytes).expect("QEMU's DMAR table parses");
    let base = crate::iommu::base().expect("a unit");
    let devices = &crate::platform().pci;
    assert!(devices.len() >= 3, "host bridge, LSI and edu at least");
    let bridges = |bus, device, function| -> Option<core::ops::RangeInclusive<u8>> {
        panic!("asked about a bridge at {bus}:{device}.{function}")
    };
    for device in devices {
        let id = source_of(device);
        let unit = dmar
            .unit_for(0, id, bridges)
            .expect("a unit for every function");
        assert_eq!(unit.register_base, base, "{id:?}");
        assert!(dmar.unit_for(1, id, bridges).is_none(), "no segment 1");
        assert_eq!(dmar.reserved_regions_for(0, id, bridges).count(), 0);
    }
    let unit = dmar.units().next().expect("a unit");
    let named = unit
        .scopes()
        .filter(|s| s.kind == ScopeKind::PciEndpoint)
        .count();
    if !unit.include_pci_all() {
        assert_eq!(named, devices.len(), "each function named");
        let absent = dmaengine::iommu::SourceId::new(7, 0, 0);
        assert!(dmar.unit_for(0, absent, bridges).is_none(), "{absent:?}");
    }
}

/// The LSI53C895A driven through the library's `IovaHal` (`iommu_hal` is
/// the kernel's glue): the chip's own ring and completion word
/// (`dma_alloc`) and the caller's `Vec`s (`share`) are mapped into its own
/// domain, so the chip is only ever given IOVAs. A copy between the `Vec`s
/// lands; a request aimed at a page's physical address faults, ends
/// `WriteFailed` without anyone reading a fault register (the channel's
/// hook from `report_faults_to` does) and leaves the page alone. The edu
/// device, in a domain of its own at the same IOVAs, copies as well. Run
/// twice: the second run leaves exactly the frames the first did (the
/// domain keeps only its tables, which it reuses).
fn lsi_over_the_iova_hal() {
    let victim = db().alloc_page().expect("a page");
    bytes(&victim).fill(0x5a);
    let before = checksum(bytes(&victim));
    let mut free = [0; 2];
    for run in &mut free {
        lsi_over_the_iova_hal_once(&victim);
        *run = db().free_frames();
    }
    assert_eq!(free[0], free[1], "no frame kept by a run");
    assert_eq!(checksum(bytes(&victim)), before, "the page unchanged");
}

fn lsi_over_the_iova_hal_once(victim: &dmaengine::mm::frame::PageRef<'_>) {
    use dmaengine::hal::{Direction, Dma, SharedBuffer};
    use dmaengine::iommu::dma::{DeviceDma, IovaHal};

    use crate::iommu_hal::{Edu, Lsi, attach};
    type Hal = IovaHal<Lsi>;
    // SAFETY: both channels below are dropped before the guard.
    let guard = unsafe {
        attach(
            LSI.device().expect("the LSI53C895A"),
            crate::dma::EDU.device().expect("the edu device"),
        )
    }
    .expect("the devices' domains");
    // The edu device, in its own domain at the same IOVAs, copies too.
    let edu_copied = {
        let mut edu = crate::dma::edu_channel_over::<IovaHal<Edu>>().expect("the edu device");
        let mut src = Dma::<IovaHal<Edu>>::new(4096).expect("edu DMA memory");
        src.as_mut_slice().fill(0x6e);
        let dst = Dma::<IovaHal<Edu>>::new(4096).expect("edu DMA memory");
        let at = (src.paddr(), dst.paddr());
        let transfer = edu
            .copy(dst, 0, src, 0, 300, PrepFlags::empty())
            .map_err(|e| e.error)
            .expect("prep");
        edu.issue_pending();
        let (dst, _) = transfer
            .wait(&mut edu, &mut Delay, TIMEOUT)
            .expect("the edu copy");
        assert!(
            (0x8000_0000..0x8400_0000).contains(&at.0)
                && (0x8000_0000..0x8400_0000).contains(&at.1),
            "the edu device is given IOVAs only: {at:x?}"
        );
        dst.as_slice()[..300].iter().all(|&b| b == 0x6e) && dst.as_slice()[300] == 0
    };
    assert!(edu_copied, "the edu copy landed, and no further");
    let mut lsi = crate::dma::lsi_channel_over::<Hal>().expect("the LSI53C895A");
    Lsi::space()
        .report_faults_to(&mut lsi)
        .expect("the LSI is attached");
    let src: alloc::vec::Vec<u8> = (0..6000).map(|i| (i * 7 + 3) as u8).collect();
    let mut dst = alloc::vec![0u8; 6000];
    let (landed, stray, ended) = SharedBuffer::<Hal>::to_device(&src, |from| {
        SharedBuffer::<Hal>::from_device(&mut dst, Direction::FromDevice, |to| {
            let iovas = [from.dma_addr(), to.dma_addr(), lsi.engine().dma_block().0];
            assert!(
                iovas
                    .iter()
                    .all(|&a| (0x8000_0000..0x8400_0000).contains(&a)),
                "the chip is given IOVAs only: {iovas:x?}"
            );
            // SAFETY: both buffers stay shared until the wait ends.
            let cookie =
                unsafe { lsi.prep_copy(to.dma_addr(), from.dma_addr(), 6000, PrepFlags::empty()) }
                    .expect("prep");
            let landed = lsi.wait(cookie, &mut Delay, TIMEOUT);
            // SAFETY: the destination is a physical address the domain does
            // not map: the write must go nowhere.
            let stray = unsafe {
                lsi.prep_copy(
                    victim.phys().as_u64(),
                    from.dma_addr(),
                    64,
                    PrepFlags::empty(),
                )
            }
            .expect("prep");
            let _ = lsi.wait(stray, &mut Delay, TIMEOUT);
            (landed, stray, lsi.status(stray).status)
        })
        .expect("share the destination")
    })
    .expect("share the source");
    drop(lsi);
    let left = guard.with_unit(|unit| unit.take_fault());
    drop(guard);
    assert_eq!(landed, Ok(()));
    assert_eq!(dst, src, "the copy landed");
    assert_eq!(ended, Status::Error(ErrorKind::WriteFailed), "{stray:?}");
    assert_eq!(left, None, "the channel claimed its fault");
    assert_eq!(Lsi::space().pages_in_use(), 0, "every IOVA back");
}

/// The unit's fault events go to the last CPU as an MSI, and its handler
/// pins each fault on the serviced channel of the device that made it: a
/// stray write ends its request `WriteFailed` without the test reading a
/// fault register, the page it aimed at keeps its bytes, and the channel
/// resets and copies again.
fn fault_interrupt_fails_the_request() {
    let victim = db().alloc_page().expect("a page");
    bytes(&victim).fill(0x5a);
    let before = checksum(bytes(&victim));
    let unit = take().expect("the IOMMU");
    let (lsi, line) = crate::dma::LSI.serviced().expect("LSI53C895A channel");
    let source = source_of(LSI.device().expect("its PCI function"));
    let id = DomainId::new(1).expect("a domain id");
    let (src, dst) = (
        db().alloc_page().expect("a page"),
        db().alloc_page().expect("a page"),
    );
    let block = lsi.lock().engine().dma_block();
    lsi.lock().set_fault_attribution(true);
    let (domain, _) = lsi_domain(&unit, id, block, &src, &dst);
    bytes(&src).fill(0xc3);
    // SAFETY: the domain outlives the attachment (detached below).
    unsafe { unit.attach(source, id, domain.root()) }.expect("attach");
    unit.enable().expect("translation on");
    let cpu = crate::smp::cpus() - 1;
    // SAFETY: the route is dropped below, before the unit.
    let route = unsafe { crate::iommu::route_faults(&unit, cpu, crate::dma::fail_serviced) }
        .expect("fault route");
    let routed = crate::iommu::routed_faults();
    if cpu != 0 {
        STOP.store(false, Ordering::Release);
        crate::smp::start_on(cpu, listen_job);
    }
    let copy = |dst: u64| {
        // SAFETY: the destination is the victim page's physical address
        // (never mapped for the chip: the write must go nowhere) or our own
        // IOVA; the source is our page.
        let cookie =
            unsafe { lsi.lock().prep_copy(dst, IOVA_SRC, 256, PrepFlags::empty()) }.expect("prep");
        (cookie, lsi.wait(cookie, &mut Delay, TIMEOUT))
    };
    let (stray, waited) = copy(victim.phys().as_u64() + 64);
    // The fault event may trail the chip's own completion by a moment.
    let start = crate::time::now_ns();
    while lsi.lock().status(stray).status == Status::Complete
        && crate::time::now_ns() - start < 1_000_000_000
    {
        core::hint::spin_loop();
    }
    let ended = lsi.lock().status(stray).status;
    let halted = lsi.lock().is_halted();
    let reset = lsi.lock().reset();
    let (_, again) = copy(IOVA_DST);
    STOP.store(true, Ordering::Release);
    let listened = cpu == 0 || crate::smp::wait_for(cpu, 5_000_000_000);
    let taken_on_cpu = crate::irq::msi_count(route.vector(), cpu);
    drop(route);
    crate::dma::LSI.release(line);
    drop(lsi);
    // SAFETY: the channel is dropped and the chip released: nothing is in
    // flight.
    let _ = unsafe { unit.disable() };
    unit.detach(source).expect("detach");
    drop(domain);
    assert!(listened, "CPU {cpu} stopped listening");
    let failed = Err(dmaengine::engine::DmaError::Failed(ErrorKind::WriteFailed));
    if cpu == 0 {
        // Aimed at the waiting CPU: taken between the issue and the look.
        assert_eq!(waited, failed, "the wait itself reports the fault");
    } else {
        assert!(waited == failed || waited.is_ok(), "{waited:?}");
    }
    assert_eq!(ended, Status::Error(ErrorKind::WriteFailed));
    assert!(halted, "the channel halted as for any failure");
    assert_eq!(reset, Ok(()));
    assert_eq!(again, Ok(()), "works after the reset");
    assert!(bytes(&dst)[..256].iter().all(|&b| b == 0xc3));
    assert!(
        crate::iommu::routed_faults() > routed,
        "read by the handler"
    );
    assert!(taken_on_cpu >= 1, "on the CPU the events were aimed at");
    assert_eq!(
        checksum(bytes(&victim)),
        before,
        "the victim page unchanged"
    );
}

/// Every refusal of `grant_lsi`, `iommu_map` and `dma_faults` the kernel
/// owes a hostile process, in one script, then the calls that must still
/// work afterwards (a refused `iommu_map` that had mapped part of its pages
/// took them out again: the IOVA is free for the next call).
fn grant_calls_refuse_bad_input() {
    use crate::user::sys::{DMA_FAULTS, GRANT_LSI as GRANT, IOMMU_MAP, MAP_PAGES};
    use crate::user::{
        CODE, EBUSY, EFAULT, EINVAL, ENODEV, GRANT_IOVA, GRANT_IOVA_SIZE, GRANT_REGS, HEAP,
    };
    const PAGE: u64 = 4096;
    const KERNEL: u64 = 0xffff_8000_0010_0000;
    let end = GRANT_IOVA + GRANT_IOVA_SIZE;
    let rows: &[(&str, [u64; 4], i64)] = &[
        (
            "iommu_map before a grant",
            [IOMMU_MAP, HEAP, 1, GRANT_IOVA],
            ENODEV,
        ),
        ("dma_faults before a grant", [DMA_FAULTS, 0, 0, 0], ENODEV),
        ("two heap pages", [MAP_PAGES, 2, 0, 0], HEAP as i64),
        ("grant", [GRANT, 0, 0, 0], GRANT_REGS as i64),
        ("grant again", [GRANT, 0, 0, 0], EBUSY),
        ("zero pages", [IOMMU_MAP, HEAP, 0, GRANT_IOVA], EINVAL),
        (
            "u64::MAX pages",
            [IOMMU_MAP, HEAP, u64::MAX, GRANT_IOVA],
            EINVAL,
        ),
        (
            "2^52 pages (wraps)",
            [IOMMU_MAP, HEAP, 1 << 52, GRANT_IOVA],
            EINVAL,
        ),
        (
            "misaligned IOVA",
            [IOMMU_MAP, HEAP, 1, GRANT_IOVA + 1],
            EINVAL,
        ),
        ("IOVA below the window", [IOMMU_MAP, HEAP, 1, PAGE], EINVAL),
        (
            "IOVA at the window's end",
            [IOMMU_MAP, HEAP, 1, end],
            EINVAL,
        ),
        (
            "IOVA runs off the window",
            [IOMMU_MAP, HEAP, 2, end - PAGE],
            EINVAL,
        ),
        (
            "IOVA wraps past 2^64",
            [IOMMU_MAP, HEAP, 2, !0xfffu64],
            EINVAL,
        ),
        (
            "misaligned address",
            [IOMMU_MAP, HEAP + 1, 1, GRANT_IOVA],
            EINVAL,
        ),
        ("code, not heap", [IOMMU_MAP, CODE, 1, GRANT_IOVA], EFAULT),
        ("kernel address", [IOMMU_MAP, KERNEL, 1, GRANT_IOVA], EFAULT),
        (
            "heap never mapped",
            [IOMMU_MAP, HEAP, 3, GRANT_IOVA],
            EFAULT,
        ),
        (
            "address wraps",
            [IOMMU_MAP, !0xfffu64, 2, GRANT_IOVA],
            EFAULT,
        ),
        (
            "good: page 1 at +3",
            [IOMMU_MAP, HEAP + PAGE, 1, GRANT_IOVA + 3 * PAGE],
            0,
        ),
        (
            "IOVA taken",
            [IOMMU_MAP, HEAP, 1, GRANT_IOVA + 3 * PAGE],
            EBUSY,
        ),
        (
            "half taken",
            [IOMMU_MAP, HEAP, 2, GRANT_IOVA + 2 * PAGE],
            EBUSY,
        ),
        (
            "the free half is free",
            [IOMMU_MAP, HEAP, 1, GRANT_IOVA + 2 * PAGE],
            0,
        ),
        ("good: both at 0", [IOMMU_MAP, HEAP, 2, GRANT_IOVA], 0),
        ("no fault yet", [DMA_FAULTS, 0, 0, 0], 0),
    ];
    let free = db().free_frames();
    let calls: alloc::vec::Vec<[u64; 4]> = rows.iter().map(|row| row.1).collect();
    let outcome = crate::user::run_script(crate::platform(), &calls).expect("the process");
    assert!(
        matches!(outcome.exit, crate::user::Exit::Code(0)),
        "{:?}",
        outcome.exit
    );
    for (row, &got) in rows.iter().zip(&outcome.results) {
        assert_eq!(got, row.2, "{}: {:x?}", row.0, row.1);
    }
    assert!(outcome.granted);
    assert_eq!(db().free_frames(), free, "every frame back");
    drop(take().expect("the unit is free again"));
}

/// Runs `program` as a process and checks what any user-space driver run
/// must leave: every frame back (the domain emptied, its tables freed, the
/// process's pages freed), the unit and the chip free for the next user.
fn run_driver(program: &[u8]) -> crate::user::Outcome {
    let free = db().free_frames();
    let outcome = crate::user::run(crate::platform(), program, false).expect("the process");
    assert!(
        outcome.granted,
        "the process was given the chip: {:?}",
        outcome.exit
    );
    assert_eq!(db().free_frames(), free, "every frame back");
    drop(take().expect("the unit is free again"));
    drop(crate::dma::LSI2.channel().expect("the chip is free again"));
    outcome
}

/// A ring-3 program drives the second LSI53C895A itself: SCRIPTS in its own
/// page, the chip started through its DSP register mapped into the
/// process, its ISTAT polled; the Memory Move lands between the IOVAs the
/// process mapped, and the unit records no fault.
fn ring3_driver_copies() {
    let outcome = run_driver(crate::user::lsi_driver());
    assert!(
        matches!(outcome.exit, crate::user::Exit::Code(0)),
        "the driver's own checks: {:?}",
        outcome.exit
    );
    assert_eq!(outcome.dma_faults, []);
    let (src, dst) = (&outcome.heap[4096..8192], &outcome.heap[8192..12288]);
    assert!(src.iter().enumerate().all(|(i, &b)| b == (7 * i + 1) as u8));
    assert_eq!(&dst[..256], &src[..256], "the move landed");
    assert!(dst[256..].iter().all(|&b| b == 0), "and nothing else");
}

/// The same driver with the move's destination set to 0x100000, the
/// kernel's first page by physical address: the write is dropped and
/// recorded (a write fault of the second chip at that page), the page's
/// bytes are unchanged, the process is told through `dma_faults`, and the
/// kernel goes on.
fn ring3_rogue_driver() {
    const KERNEL_PAGE: u64 = 0x10_0000;
    // SAFETY: the kernel image's first page, mapped by the direct map;
    // read only.
    let page = || unsafe { core::slice::from_raw_parts(phys_to_virt(KERNEL_PAGE), 4096) };
    let before = checksum(page());
    let outcome = run_driver(crate::user::rogue_driver());
    assert_eq!(checksum(page()), before, "kernel memory unchanged");
    assert!(
        matches!(outcome.exit, crate::user::Exit::Code(0)),
        "the process was told of its fault: {:?}",
        outcome.exit
    );
    let chip = source_of(crate::dma::LSI2.device().expect("the second chip"));
    assert!(
        outcome
            .dma_faults
            .iter()
            .any(|f| f.source == chip && f.write && f.address == KERNEL_PAGE),
        "a write fault at the kernel page: {:?}",
        outcome.dma_faults
    );
}

/// A ring-3 driver whose chip faults again and again, read through
/// `dma_faults` after each fault, must not grow the kernel's record of them
/// without bound: the first `MAX_KEPT_FAULTS` are kept, the rest counted,
/// and every call still says how many it read.
fn endless_faults() {
    let outcome = run_driver(crate::user::rogue_driver_100());
    assert!(
        matches!(outcome.exit, crate::user::Exit::Code(0)),
        "every dma_faults call reported its fault: {:?}",
        outcome.exit
    );
    assert_eq!(outcome.dma_faults.len(), crate::user::MAX_KEPT_FAULTS);
    assert_eq!(
        outcome.dma_faults_dropped,
        100 - crate::user::MAX_KEPT_FAULTS as u64
    );
}

/// Spins for `ms` milliseconds with interrupts on.
fn spin_ms(ms: u64) {
    let start = crate::time::now_ns();
    while crate::time::now_ns() - start < ms * 1_000_000 {
        core::hint::spin_loop();
    }
}

/// The granted chip sends vector 0x27 (the 8259's IRQ 7, whose handler
/// takes no EOI for the 8259's own spurious interrupt) to this CPU as an
/// interrupt message; the handler must end it, or the vector stays in
/// service and blocks its priority class on this CPU for good.
fn message_on_a_pic_vector() {
    assert_eq!(crate::apic::id(), 0, "the message goes to APIC ID 0");
    let taken = crate::irq::SPURIOUS.load(Ordering::Relaxed);
    let outcome = run_driver(crate::user::msi_driver_27());
    assert!(
        matches!(outcome.exit, crate::user::Exit::Code(0)),
        "{:?}",
        outcome.exit
    );
    spin_ms(10);
    assert!(
        crate::irq::SPURIOUS.load(Ordering::Relaxed) > taken,
        "the message arrived as vector 0x27"
    );
    assert!(
        !crate::apic::in_service(0x27),
        "vector 0x27 still in service"
    );
}

/// The same with vector 0xff, the local APIC's spurious vector: left in
/// service it blocks every maskable interrupt on this CPU, the timer (0xf0)
/// included.
fn message_on_the_spurious_vector() {
    assert_eq!(crate::apic::id(), 0, "the message goes to APIC ID 0");
    assert!(x86_64::instructions::interrupts::are_enabled());
    let spurious = crate::apic::spurious();
    let outcome = run_driver(crate::user::msi_driver_ff());
    assert!(
        matches!(outcome.exit, crate::user::Exit::Code(0)),
        "{:?}",
        outcome.exit
    );
    let ticks = crate::apic::ticks(0);
    spin_ms(300);
    let after = crate::apic::ticks(0);
    assert!(
        crate::apic::spurious() > spurious,
        "the message arrived as vector 0xff"
    );
    assert!(
        !crate::apic::in_service(0xff),
        "vector 0xff still in service"
    );
    assert!(
        after > ticks,
        "the boot CPU's timer took no tick in 300 ms after the process ended ({ticks} -> {after})"
    );
}

/// Runs `body` with `device` attached to a domain that maps all of the
/// guest's RAM (the first 2 GiB but page 0) at its own addresses, the
/// second gigabyte with one 1 GiB entry, translation on; then checks that
/// nothing faulted.
fn with_identity_domain(device: &crate::pci::Device, body: impl FnOnce()) {
    const GIB_PAGES: u64 = 1 << 18;
    let unit = take().expect("the IOMMU");
    let id = DomainId::new(4).expect("a domain id");
    let mut domain = iommu::domain(&unit, id, db(), mapper(), db()).expect("a domain");
    domain.set_1g_pages(true);
    let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
    // Page 0 stays unmapped: a null DMA address faults.
    for (start, pages) in [(4096u64, GIB_PAGES - 1), (1 << 30, GIB_PAGES)] {
        let area = domain.map_vma(page(start), pages, rw).expect("area");
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(start));
        // SAFETY: the first 2 GiB of physical memory at their own addresses, for the device only
        // (the domain is never loaded into a CPU); the kernel frees nothing the test's DMA touches
        // while the domain lives, and the domain is dropped at the end of this function.
        unsafe { domain.remap_pfn_range(area, page(start), frame, pages, PageProt::READ_WRITE) }
            .expect("RAM at its own address");
    }
    assert_eq!(
        domain.translate(VirtAddr::new(1 << 30)).map(|l| l.level),
        Some(3),
        "a 1 GiB entry"
    );
    let source = source_of(device);
    // SAFETY: the domain outlives the attachment (detached below).
    unsafe { unit.attach(source, id, domain.root()) }.expect("attach");
    unit.enable().expect("translation on");
    body();
    let fault = unit.take_fault();
    unit.detach(source).expect("detach");
    drop(domain);
    assert_eq!(fault, None, "no DMA left the domain");
}

/// Where the test's buffers appear to the chip: above the guest's 2 GiB
/// of RAM, below the 4 GiB its 32-bit SCRIPTS addresses reach.
const IOVA_SRC: u64 = 0xa000_0000;
const IOVA_DST: u64 = 0xb000_0000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn page(addr: u64) -> Page {
    Page::from_start_address(VirtAddr::new(addr)).expect("page-aligned")
}

fn bytes(page: &PageRef<'_>) -> &'static mut [u8] {
    // SAFETY: a page we hold, reached through the direct map; the chip
    // writes it only while the test waits for the copy.
    unsafe { core::slice::from_raw_parts_mut(phys_to_virt(page.phys().as_u64()), 4096) }
}

/// Runs `body` with the LSI53C895A attached to a fresh domain in which its
/// own DMA block is mapped at its physical address and a source page and
/// a destination page at [`IOVA_SRC`] and [`IOVA_DST`], translation on.
/// What a test body works with.
struct Ctx<'a, 'u> {
    lsi: &'a mut crate::dma::LsiChannel,
    domain: &'a mut Dom<'u>,
    unit: &'a crate::iommu::Unit,
    src: &'a PageRef<'static>,
    dst: &'a PageRef<'static>,
    /// The destination page's area in the domain.
    dst_area: dmaengine::mm::space::VmaId,
}

/// Domain `id` of `unit` for the LSI53C895A: the chip's own DMA block
/// (`block`: address and length) at its own address, where it reads its
/// ring and writes completions, and one page each at `IOVA_SRC` and
/// `IOVA_DST`; with the areas of those two pages.
fn lsi_domain<'u>(
    unit: &'u crate::iommu::Unit,
    id: DomainId,
    (block, len): (u64, usize),
    src: &PageRef<'static>,
    dst: &PageRef<'static>,
) -> (Dom<'u>, [dmaengine::mm::space::VmaId; 2]) {
    let mut domain = iommu::domain(unit, id, db(), mapper(), db()).expect("a domain");
    let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
    let block_pages = (len as u64).div_ceil(4096);
    let own = domain
        .map_vma(page(block), block_pages, rw)
        .expect("block area");
    let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(block));
    // SAFETY: the chip's own DMA block, allocated for as long as its channel lives, which outlives
    // the domain.
    unsafe { domain.remap_pfn_range(own, page(block), frame, block_pages, PageProt::READ_WRITE) }
        .expect("the chip's own block, at its own address");
    let areas = [(IOVA_SRC, src), (IOVA_DST, dst)].map(|(at, p)| {
        let area = domain.map_vma(page(at), 1, rw).expect("an IOVA area");
        domain
            .insert_pages(area, page(at), core::slice::from_ref(p))
            .expect("a buffer page");
        area
    });
    (domain, areas)
}

fn with_lsi_domain(body: impl FnOnce(Ctx<'_, '_>)) {
    let unit = take().expect("the IOMMU");
    let mut lsi = LSI.channel().expect("the LSI53C895A");
    let source = source_of(LSI.device().expect("its PCI function"));
    let id = DomainId::new(1).expect("a domain id");
    let src = db().alloc_page().expect("a page");
    let dst = db().alloc_page().expect("a page");
    let (mut domain, areas) = lsi_domain(&unit, id, lsi.engine().dma_block(), &src, &dst);
    // SAFETY: the domain outlives the attachment (detached below).
    unsafe { unit.attach(source, id, domain.root()) }.expect("attach");
    unit.enable().expect("translation on");
    // Behind the unit: a fault is pinned on the request that made it.
    lsi.set_fault_attribution(true);
    body(Ctx {
        lsi: &mut lsi,
        domain: &mut domain,
        unit: &unit,
        src: &src,
        dst: &dst,
        dst_area: areas[1],
    });
    drop(lsi);
    unit.detach(source).expect("detach");
    drop(domain);
}

type Dom<'a> = iommu::Domain<
    'a,
    &'static dmaengine::mm::frame::FrameDb<'static>,
    dmaengine::mm::traits::OffsetMapper,
    &'static dmaengine::mm::frame::FrameDb<'static>,
    dmaengine::mmio::MmioRegion,
>;

/// A channel halted by a fault resets and copies the source page into the
/// destination page (0xc3 bytes, through their IOVAs) again.
fn copies_again_after_reset(lsi: &mut crate::dma::LsiChannel, dst: &PageRef<'_>) {
    lsi.reset().expect("reset");
    bytes(dst).fill(0);
    copy(lsi, IOVA_DST, IOVA_SRC, 256);
    assert!(
        bytes(dst)[..256].iter().all(|&b| b == 0xc3),
        "works after reset"
    );
}

fn copy(lsi: &mut crate::dma::LsiChannel, dst: u64, src: u64, len: usize) -> Cookie {
    // SAFETY: both IOVAs are pages of ours, untouched until the wait ends.
    let cookie = unsafe { lsi.prep_copy(dst, src, len, PrepFlags::empty()) }.expect("prep");
    lsi.wait(cookie, &mut Delay, TIMEOUT)
        .expect("the copy ends");
    cookie
}

fn copies_between_iovas() {
    with_lsi_domain(
        |Ctx {
             lsi,
             unit,
             src,
             dst,
             ..
         }| {
            for (i, b) in bytes(src).iter_mut().enumerate() {
                *b = (i * 7 + 1) as u8;
            }
            bytes(dst).fill(0);
            copy(lsi, IOVA_DST + 16, IOVA_SRC, 4000);
            let (s, d) = (bytes(src), bytes(dst));
            assert_eq!(&d[16..4016], &s[..4000], "the copy went through the domain");
            assert!(
                d[..16].iter().chain(&d[4016..]).all(|&b| b == 0),
                "guards untouched"
            );
            assert_eq!(unit.take_fault(), None, "no fault");
        },
    );
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn stray_write() {
    // A page of RAM whose physical address the chip is told to write: not
    // mapped in its domain, so the write must go nowhere.
    let victim = db().alloc_page().expect("a page");
    bytes(&victim).fill(0x5a);
    let before = checksum(bytes(&victim));
    let target = victim.phys().as_u64();
    with_lsi_domain(
        |Ctx {
             lsi,
             unit,
             src,
             dst,
             ..
         }| {
            bytes(src).fill(0xc3);
            // The chip never learns of the fault: the copy "completes".
            let stray = copy(lsi, target + 64, IOVA_SRC, 256);
            let fault = unit.take_fault().expect("the fault was recorded");
            assert_eq!(
                fault,
                DmaFault {
                    source: source_of(LSI.device().expect("LSI")),
                    address: target,
                    write: true,
                    reason: iommu::regs::REASON_WRITE,
                }
            );
            // Pinned on the request that wrote the page: it ends WriteFailed and
            // the channel halts, as for any failure.
            assert_eq!(lsi.fail_at(fault.address, fault.write), Some(stray));
            assert_eq!(
                lsi.status(stray).status,
                Status::Error(ErrorKind::WriteFailed)
            );
            assert!(lsi.is_halted());
            copies_again_after_reset(lsi, dst);
        },
    );
    assert_eq!(
        checksum(bytes(&victim)),
        before,
        "RAM the stray write aimed at is unchanged"
    );
}

/// Bug 5 of issue 17: the chip goes on after a refused write and writes
/// its completion, so without the unit's fault records the stray copy read
/// `Complete` (as `stray_write` shows). With the fault hook set, the
/// channel reads its device's faults before it calls anything complete:
/// polled from issue to end, the request is never `Complete`, it ends
/// `WriteFailed`, the fault is claimed (the unit has none left) and the
/// channel, reset, copies again with the hook still on.
fn refused_write_never_reads_complete() {
    use dmaengine::engine::FaultHook;
    let victim = db().alloc_page().expect("a page");
    bytes(&victim).fill(0x5a);
    let before = checksum(bytes(&victim));
    let target = victim.phys().as_u64();
    let source = source_of(LSI.device().expect("LSI"));
    with_lsi_domain(
        |Ctx {
             lsi,
             unit,
             src,
             dst,
             ..
         }| {
            // SAFETY: the unit outlives the channel (`with_lsi_domain`
            // drops the channel first), and nothing else reads the unit's
            // faults meanwhile: no fault interrupt is routed in this test.
            unsafe { lsi.set_fault_hook(Some(FaultHook::new(unit, source))) };
            bytes(src).fill(0xc3);
            // SAFETY: the destination is a physical address the domain does
            // not map (the write must go nowhere); the source is our page.
            let stray = unsafe { lsi.prep_copy(target + 64, IOVA_SRC, 256, PrepFlags::empty()) }
                .expect("prep");
            lsi.issue_pending();
            let start = crate::time::now_ns();
            let (mut looks, mut ended) = (0u32, Status::InProgress);
            while ended == Status::InProgress && crate::time::now_ns() - start < 5_000_000_000 {
                ended = lsi.status(stray).status;
                looks += 1;
                assert_ne!(
                    ended,
                    Status::Complete,
                    "look {looks}: a refused copy read Complete"
                );
            }
            assert_eq!(ended, Status::Error(ErrorKind::WriteFailed));
            assert!(lsi.is_halted(), "halted as for any failure");
            assert_eq!(unit.take_fault(), None, "the channel claimed its fault");
            copies_again_after_reset(lsi, dst);
        },
    );
    assert_eq!(
        checksum(bytes(&victim)),
        before,
        "the victim page unchanged"
    );
}

/// Unmapping an IOVA invalidates its IOTLB entry (through the unit's
/// invalidation queue, which QEMU's unit has): the next DMA there faults.
fn unmapped_iova_faults() {
    with_lsi_domain(
        |Ctx {
             lsi,
             domain,
             unit,
             src,
             dst,
             dst_area,
         }| {
            assert!(
                unit.queued_invalidation(),
                "QEMU's unit has an invalidation queue, and the driver uses it"
            );
            bytes(src).fill(0x11);
            bytes(dst).fill(0);
            copy(lsi, IOVA_DST, IOVA_SRC, 512);
            assert!(bytes(dst)[..512].iter().all(|&b| b == 0x11));
            // Unmap the destination: its IOTLB entry must go with it.
            domain
                .zap_range(dst_area, page(IOVA_DST), 1)
                .expect("unmap");
            bytes(src).fill(0x22);
            copy(lsi, IOVA_DST, IOVA_SRC, 512);
            assert!(
                bytes(dst)[..512].iter().all(|&b| b == 0x11),
                "the chip wrote through a translation the unmap should have flushed"
            );
            assert_eq!(
                unit.take_fault().map(|f| (f.address, f.write)),
                Some((IOVA_DST, true))
            );
        },
    );
}

fn lsi_dmatest_under_translation() {
    let mut lsi = LSI.channel().expect("the LSI53C895A");
    with_identity_domain(LSI.device().expect("its PCI function"), || {
        super::dma::random_batches(&mut *lsi, 7, 1500);
    });
}

fn edu_under_translation() {
    use dmaengine::hal::Dma;
    let mut edu = crate::dma::EDU.channel().expect("the edu device");
    let mask = edu.limits().dma_mask;
    let mut src = Dma::<crate::dma::KernelHal>::new_below(6000, mask).expect("buffer");
    let dst = Dma::<crate::dma::KernelHal>::new_below(6000, mask).expect("buffer");
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 13 + 5) as u8;
    }
    with_identity_domain(crate::dma::EDU.device().expect("its PCI function"), || {
        // SAFETY: both buffers are ours, untouched until the wait ends.
        let c = unsafe { edu.prep_copy(dst.paddr(), src.paddr(), 6000, PrepFlags::empty()) }
            .expect("prep");
        edu.wait(c, &mut Delay, TIMEOUT).expect("the copy ends");
    });
    assert_eq!(
        dst.as_slice(),
        src.as_slice(),
        "two device transfers per piece, each translated"
    );
}
