//! The system calls and the copy-on-write fault of ring-3 processes: each
//! call checks the caller's pointers against its own page tables and
//! answers in `rax` (see the table in the parent module).

use super::*;

impl Process {
    /// The physical pieces of `[va, va + len)` in the caller's address space
    /// if all of it is mapped to counted user pages (writable ones if
    /// `write`).
    fn user_range(&self, addr: u64, len: u64, write: bool) -> Result<Vec<(u64, u64)>, i64> {
        let end = addr
            .checked_add(len)
            .filter(|&e| e <= crate::mm::USER_END)
            .ok_or(EFAULT)?;
        let mut pieces = Vec::new();
        let mut at = addr;
        while at < end {
            // Below the end of the user half: canonical.
            let leaf = self.space.translate(va(at)).ok_or(EFAULT)?;
            let usable = leaf.entry.has(pte::USER)
                && !leaf.is_special()
                && (!write || leaf.entry.has(pte::WRITABLE));
            if !usable {
                return Err(EFAULT);
            }
            let n = (leaf.va.as_u64() + leaf.size()).min(end) - at;
            pieces.push((leaf.phys().as_u64() + (at - leaf.va.as_u64()), n));
            at += n;
        }
        Ok(pieces)
    }

    fn write(&mut self, va: u64, len: u64) -> i64 {
        if len > 4096 {
            return EINVAL;
        }
        let pieces = match self.user_range(va, len, false) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let mut bytes = Vec::new();
        for (pa, n) in pieces {
            // SAFETY: a user page of the caller's, reached through the direct
            // map; `n` stays inside it.
            bytes.extend_from_slice(unsafe {
                core::slice::from_raw_parts(mem::phys_to_virt(pa), n as usize)
            });
        }
        let text = String::from_utf8_lossy(&bytes);
        if self.output.len() + text.len() > MAX_OUTPUT {
            return ENOSPC;
        }
        if self.echo {
            print!("{text}");
        }
        self.output.push_str(&text);
        len as i64
    }

    fn map_pages(&mut self, count: u64) -> i64 {
        // Checked: a huge count must not wrap past the limit (and make the
        // kernel allocate its whole pool before failing).
        let fits = count
            .checked_mul(PAGE_4K)
            .and_then(|len| self.heap_next.checked_add(len))
            .is_some_and(|end| end <= HEAP + HEAP_SIZE);
        if count == 0 || !fits {
            return EINVAL;
        }
        let Ok(pages) = (0..count)
            .map(|_| zeroed_page())
            .collect::<Result<Vec<_>, _>>()
        else {
            return ENOMEM;
        };
        let at = self.heap_next;
        match self.space.insert_pages(self.heap, pg(at), &pages) {
            Ok(()) => {
                self.heap_next += count * PAGE_4K;
                at as i64
            }
            Err(partial) => {
                let _ = self.space.zap_range(
                    self.heap,
                    pg(at),
                    npages(at, at + partial.inserted as u64 * PAGE_4K),
                );
                ENOMEM
            }
        }
    }

    fn unmap(&mut self, va: u64, count: u64) -> i64 {
        let Some(end) = count
            .checked_mul(PAGE_4K)
            .and_then(|len| va.checked_add(len))
        else {
            return EINVAL;
        };
        if count == 0 || !va.is_multiple_of(PAGE_4K) || va < HEAP || end > self.heap_next {
            return EINVAL;
        }
        // This space is loaded: its flusher invalidates the caller's TLB.
        match self.space.zap_range(self.heap, pg(va), npages(va, end)) {
            Ok(()) => 0,
            Err(_) => ENOMEM,
        }
    }

    fn map_device(&mut self) -> i64 {
        let Some((bar, _)) =
            devices::find(edu::regs::VENDOR_ID, edu::regs::DEVICE_ID).and_then(|d| d.mem_bar(0))
        else {
            return ENODEV;
        };
        if self.space.translate(va(DEVICE)).is_some() {
            return DEVICE as i64;
        }
        // Read-only: this page also holds edu's DMA registers (source,
        // destination, count, command at 0x80-0x98), and edu is behind no
        // domain of the process's, so a write there would let ring 3 have
        // edu copy between any physical addresses. edu's reads have no side
        // effects, and the area lacks WRITE, so a write fault ends the
        // process instead of upgrading the entry.
        // SAFETY: edu's BAR 0: device memory, which the kernel never hands out as RAM.
        match unsafe {
            self.space.io_remap_pfn_range(
                self.device,
                pg(DEVICE),
                fr(bar / PAGE_4K),
                bytes_to_pages(PAGE_4K),
                PageProt::READ_ONLY,
                CacheMode::Uncached,
            )
        } {
            Ok(()) => DEVICE as i64,
            Err(_) => ENOMEM,
        }
    }

    fn dma_copy(&mut self, dst_va: u64, src_va: u64, len: u64) -> i64 {
        if len == 0 || len > MAX_COPY {
            return EINVAL;
        }
        let (dst, src) = match (
            self.user_range(dst_va, len, true),
            self.user_range(src_va, len, false),
        ) {
            (Ok(d), Ok(s)) => (d, s),
            _ => return EFAULT,
        };
        if self.lsi.is_none() {
            self.lsi = LSI.channel().ok();
        }
        let Some(chan) = self.lsi.as_mut() else {
            return ENODEV;
        };
        // Walk both lists of pieces together, one copy per overlap. The
        // pieces enter the ring as one batch, whole or not at all: a piece
        // refused after others were written must not leave those to run
        // on a later call.
        let mut ops = Vec::new();
        let (mut di, mut si, mut doff, mut soff) = (0, 0, 0, 0);
        while di < dst.len() && si < src.len() {
            let n = (dst[di].1 - doff).min(src[si].1 - soff);
            ops.push(Op::Copy {
                dst: dst[di].0 + doff,
                src: src[si].0 + soff,
                len: n as usize,
            });
            doff += n;
            soff += n;
            if doff == dst[di].1 {
                (di, doff) = (di + 1, 0);
            }
            if soff == src[si].1 {
                (si, soff) = (si + 1, 0);
            }
        }
        if crate::iommu::base().is_some() {
            // The same refusal as the direct path: a piece whose sides
            // overlap runs nothing.
            let overlap = ops.iter().any(|op| {
                matches!(*op, Op::Copy { dst, src, len }
                    if dst < src + len as u64 && src < dst + len as u64)
            });
            if overlap {
                return EINVAL;
            }
            return self.dma_copy_translated(dst_va, src_va, len);
        }
        // SAFETY: both sides are the caller's own mapped pages, which stay
        // mapped (the process is stopped in this call) until the copy has
        // ended below; a refused batch prepared nothing.
        let batch = match unsafe { chan.prep_batch(&ops, PrepFlags::empty()) } {
            Ok(batch) => batch,
            Err(DmaError::NoMemory) => return ENOMEM,
            Err(_) => return EINVAL,
        };
        match chan.wait(batch.last, &mut time::Delay, Duration::from_secs(2)) {
            Ok(()) => 0,
            Err(_) => {
                // Whatever is still in flight must end before we return.
                chan.terminate();
                let _ = chan.reset();
                EIO
            }
        }
    }
}

/// `dma_copy` calls served through the IOMMU so far.
pub static TRANSLATED_COPIES: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(0);

impl Process {
    /// `dma_copy` with the LSI53C895A behind the IOMMU: for this call the
    /// chip's domain maps its own DMA block and the caller's pages, and
    /// nothing else: the destination pages (writable) in one IOVA window,
    /// the source pages (read-only) in another, each contiguous whatever
    /// the pages' frames, so one Memory Move does the copy.
    fn dma_copy_translated(&mut self, dst_va: u64, src_va: u64, len: u64) -> i64 {
        /// IOVA windows below 4 GiB (SCRIPTS addresses are 32 bits).
        const DST_WINDOW: u64 = 0xc000_0000;
        const SRC_WINDOW: u64 = 0xd000_0000;
        let Ok(unit) = crate::iommu::take() else {
            return EIO;
        };
        let (Some(chan), Some(device)) = (self.lsi.as_mut(), crate::dma::LSI.device()) else {
            return ENODEV;
        };
        let id = DomainId::new(5).expect("a domain id");
        let Ok(mut domain) = iommu::domain(&unit, id, db(), mapper(), db()) else {
            return ENOMEM;
        };
        let rw = VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED;
        let window = |domain: &mut crate::iommu::Domain<'_>, at: u64, pages: u64| {
            domain.map_vma(pg(at), pages, rw).map_err(|_| ENOMEM)
        };
        let (block, block_len) = chan.engine().dma_block();
        let block_pages = (block_len as u64).div_ceil(PAGE_4K);
        let mapped = window(&mut domain, block, block_pages).and_then(|area| {
            // SAFETY: the chip's own DMA block, allocated for as long as the channel lives, which
            // outlives this call; the domain is dropped at its end.
            unsafe {
                domain.remap_pfn_range(
                    area,
                    pg(block),
                    fr(block / PAGE_4K),
                    block_pages,
                    PageProt::READ_WRITE,
                )
            }
            .map_err(|_| ENOMEM)
        });
        let mut iovas = [0u64; 2];
        let user = [
            (dst_va, DST_WINDOW, PageProt::READ_WRITE),
            (src_va, SRC_WINDOW, PageProt::READ_ONLY),
        ];
        let mapped = mapped.and_then(|()| {
            for (k, &(va, base, prot)) in user.iter().enumerate() {
                let first = va & !(PAGE_4K - 1);
                let pages = (va + len).div_ceil(PAGE_4K) - first / PAGE_4K;
                let area = window(&mut domain, base, pages)?;
                for i in 0..pages {
                    // Checked by `user_range`: every page is mapped.
                    let frame = self
                        .space
                        .translate(crate::mm::va(first + i * PAGE_4K))
                        .and_then(|leaf| leaf.frame_of(crate::mm::va(first + i * PAGE_4K)))
                        .ok_or(EFAULT)?;
                    // SAFETY: a page of this process's space, which stays mapped there (the process
                    // is stopped in this call) until the domain is dropped at the end of the call.
                    unsafe { domain.remap_pfn_range(area, pg(base + i * PAGE_4K), frame, 1, prot) }
                        .map_err(|_| ENOMEM)?;
                }
                iovas[k] = base + (va - first);
            }
            Ok(())
        });
        if let Err(e) = mapped {
            return e;
        }
        let source = crate::iommu::source_of(device);
        // SAFETY: the domain outlives the attachment (detached below, after
        // the copy has ended).
        if unsafe { unit.attach(source, id, domain.root()) }.is_err() || unit.enable().is_err() {
            return EIO;
        }
        // SAFETY: both IOVA windows map the caller's own pages, which stay
        // mapped (the process is stopped in this call) until the copy ends.
        let copied =
            unsafe { chan.prep_copy(iovas[0], iovas[1], len as usize, PrepFlags::empty()) }
                .map_err(|_| EINVAL)
                .and_then(|cookie| {
                    chan.wait(cookie, &mut time::Delay, Duration::from_secs(2))
                        .map_err(|_| EIO)
                });
        let fault = unit.take_fault();
        if copied.is_err() {
            chan.terminate();
            let _ = chan.reset();
        }
        // SAFETY: the chip is idle: its one request ended, or it was
        // terminated above.
        let _ = unsafe { unit.disable() };
        let _ = unit.detach(source);
        match (copied, fault) {
            (Ok(()), None) => {
                TRANSLATED_COPIES.fetch_add(1, Ordering::Relaxed);
                0
            }
            (Ok(()), Some(_)) => EIO,
            (Err(e), _) => e,
        }
    }
}

/// Handles a page fault from ring 3 at `cr2`: a write to a present page of
/// a copy-on-write area gets the process a private copy. Returns whether the
/// access can be retried.
fn write_fault(cr2: u64, error_code: u64) -> bool {
    // Error code bit 0: the page was present; bit 1: a write.
    if error_code & 0b11 != 0b11 {
        return false;
    }
    let current = CURRENT.load(Ordering::Acquire);
    if current.is_null() {
        return false;
    }
    // SAFETY: as in `syscall`: the running process, exclusively ours while
    // this trap runs with interrupts off.
    let process = unsafe { &mut *current };
    process.space.handle_write_fault(va(cr2)).is_ok()
}

/// Registers the system call and user copy-on-write faults with the trap
/// layer; done by the first process run, so modes without processes leave
/// those vectors alone.
pub(super) fn register_traps() {
    crate::trap::register(crate::trap::SYSCALL_VECTOR, on_syscall);
    crate::trap::register(crate::trap::PAGE_FAULT, on_page_fault);
}

fn on_syscall(frame: &mut TrapFrame, _cr2: u64) -> bool {
    syscall(frame);
    true
}

/// A user write to a copy-on-write page: copy it and retry the write.
/// Anything else goes on to the fallback (recovery).
fn on_page_fault(frame: &mut TrapFrame, cr2: u64) -> bool {
    frame.cs & 3 == 3 && write_fault(cr2, frame.error_code)
}

fn syscall(frame: &mut TrapFrame) {
    let current = CURRENT.load(Ordering::Acquire);
    if current.is_null() || frame.cs & 3 != 3 {
        frame.rax = EINVAL as u64;
        return;
    }
    // SAFETY: CURRENT points at the process `run` is running, whose frame
    // outlives its time in ring 3; system calls run with interrupts off on
    // the only CPU, so this is the only reference.
    let process = unsafe { &mut *current };
    let (a, b, c) = (frame.rdi, frame.rsi, frame.rdx);
    let result = match frame.rax {
        sys::EXIT => {
            recover::exit_process(frame, a);
            return;
        }
        sys::WRITE => process.write(a, b),
        sys::MAP_PAGES => process.map_pages(a),
        sys::DMA_COPY => process.dma_copy(a, b, c),
        sys::MAP_DEVICE => process.map_device(),
        sys::UNMAP => process.unmap(a, b),
        sys::GRANT_LSI => process.grant_lsi(),
        sys::IOMMU_MAP => process.iommu_map(a, b, c),
        sys::DMA_FAULTS => {
            if process.grant.is_none() {
                ENODEV
            } else {
                process.collect_faults() as i64
            }
        }
        _ => EINVAL,
    };
    frame.rax = result as u64;
}
