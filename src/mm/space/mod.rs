//! An address space: a PML4, its areas, and the mapping operations, each in
//! its own file: [`walk`](self) (reaching, creating and pruning tables),
//! `insert`, `remap`, `zap`, `fork` and `fault`.
//!
//! Invariants, kept by every operation:
//! - no page table the crate allocated (linked with [`pte::OWNED`]) is left
//!   empty below the root: an operation that empties or fails to fill one
//!   unlinks it, flushes, and only then frees it; tables the crate did not
//!   allocate (a kernel's own) are never freed;
//! - every present non-special leaf maps a page its [`PageCounter`] counts,
//!   holding one reference and one map count on it; special leaves hold
//!   nothing;
//! - 2 MiB leaves are only made by `remap_pfn_range` and are special;
//! - nothing outside the space's areas is ever written: an area may not be
//!   created over anything already mapped.

mod fault;
mod fork;
mod insert;
mod remap;
mod walk;
mod zap;

use core::marker::PhantomData;
use core::sync::atomic::AtomicU64;

use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

pub use fault::WriteFault;
pub use insert::{Inserted, PartialInsert};

use super::MmError;
use super::pte::{self, Format, PAGE_1G, PAGE_2M, PAGE_4K, Pte, X86};
use super::tlb::TlbFlush;
use super::traits::{PageCounter, TableAllocator, TableMapper};
use super::vma::{VmFlags, Vma};
use crate::slots::{Key, SlotMap, take_id};

/// Areas an address space holds.
pub const MAX_VMAS: usize = 64;

/// The end of the spare-table list: above every physical address, bit 0
/// (an entry's present bit) clear.
const NO_SPARE: u64 = !0xfff;
/// The end of the lower (user) half of the canonical address space.
pub const USER_END: u64 = 1 << 47;
/// The start of the upper (kernel) half: between the two, addresses are
/// not canonical and no entry maps them.
const KERNEL_START: u64 = !(USER_END - 1);

/// An area's handle: one `map_vma` of one address space. Once the area is
/// unmapped the handle is stale ([`MmError::NoSuchVma`]) even if a new area
/// takes its slot, and another address space refuses it
/// ([`MmError::ForeignVma`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmaId {
    key: Key,
    space: u64,
}

/// Address-space identities, so a `VmaId` of one is refused by another.
/// (64 bits, never wrapping: a `VmaId` of a space made 2^32 spaces ago
/// must not be taken for one of a space that reused its id.)
static NEXT_SPACE_ID: AtomicU64 = AtomicU64::new(1);

/// One leaf entry found by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The first virtual address it maps.
    pub va: VirtAddr,
    /// The entry.
    pub entry: Pte,
    /// 1 for a 4 KiB page, 2 for a 2 MiB page, 3 for a 1 GiB page.
    pub level: u32,
    /// The table holding the entry, and its index.
    table: PhysFrame,
    index: usize,
    /// Whether the entry is special in its format.
    special: bool,
}

impl Leaf {
    /// Bytes it maps.
    pub fn size(&self) -> u64 {
        match self.level {
            3 => PAGE_1G,
            2 => PAGE_2M,
            _ => PAGE_4K,
        }
    }

    /// The physical address of the frame it maps: for a 2 MiB or 1 GiB
    /// leaf, the large frame's base, not the address of some `va` inside it
    /// (see [`Leaf::phys_of`]).
    pub fn phys(&self) -> PhysAddr {
        self.entry.phys(self.level)
    }

    /// The physical address `va` maps to, if this leaf covers `va`.
    pub fn phys_of(&self, va: VirtAddr) -> Option<PhysAddr> {
        let offset = va
            .as_u64()
            .checked_sub(self.va.as_u64())
            .filter(|&o| o < self.size())?;
        Some(self.phys() + offset)
    }

    /// The 4 KiB frame `va` maps to, if this leaf covers `va`.
    pub fn frame_of(&self, va: VirtAddr) -> Option<PhysFrame> {
        self.phys_of(va).map(PhysFrame::containing_address)
    }

    /// The entry's flags, as the `x86_64` crate names them (bit 9,
    /// `BIT_9`, is [`pte::SPECIAL`]; meaningful for the CPU's format only).
    pub fn flags(&self) -> PageTableFlags {
        PageTableFlags::from_bits_truncate(self.entry.bits())
    }

    /// Whether it is special (no counted page behind it).
    pub fn is_special(&self) -> bool {
        self.special
    }
}

/// A 4-level address space. Its page tables come from `A` (the kernel's
/// frame allocator) and are reached through `M`; the pages it maps are
/// counted by `C`; `T` flushes its TLB entries.
///
/// A space made by [`AddressSpace::new`] owns its root table; one made by
/// [`AddressSpace::from_root`] works inside a hierarchy the kernel built
/// and never touches the kernel's mappings. Dropping it unmaps every area
/// (giving back every count) and frees the tables the crate allocated, and
/// an owned root: it must not be loaded in CR3 by then.
pub struct AddressSpace<
    C: PageCounter,
    M: TableMapper,
    A: TableAllocator,
    T: TlbFlush,
    F: Format = X86,
> {
    counter: C,
    mapper: M,
    alloc: A,
    tlb: T,
    root: PhysFrame,
    owns_root: bool,
    /// The newest spare table; see [`AddressSpace::spare_tables`].
    spares: Option<PhysFrame>,
    spare_count: usize,
    /// 0 once ids ran out (never, in practice): such a space refuses
    /// every area id as foreign.
    id: u64,
    /// The areas, in a generational slot map: an unmapped area's ids go
    /// stale and stay stale.
    vmas: SlotMap<Vma, MAX_VMAS>,
    /// PML4 slots shared with the kernel, never touched by this space.
    shared: [bool; 512],
    nx: bool,
    /// 1 GiB leaves may be used (the CPU has them).
    pages_1g: bool,
    entries_written: u64,
    _format: PhantomData<F>,
}

/// The physical frame at `phys` (an address from an entry: below 2^52).
#[inline]
fn frame(phys: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new_truncate(phys))
}

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush> AddressSpace<C, M, A, T, X86> {
    /// An empty address space with its own root table from `alloc`. `nx`
    /// says whether the execute-disable bit may be used (EFER.NXE is on;
    /// without it the bit is reserved and would fault).
    pub fn new(counter: C, mapper: M, alloc: A, tlb: T, nx: bool) -> Result<Self, MmError> {
        Self::new_in(counter, mapper, alloc, tlb, nx)
    }

    /// An address space inside the hierarchy rooted at `root`, which the
    /// kernel built (its own mappings included). The crate creates areas
    /// only where nothing is mapped, writes entries only inside its areas,
    /// and frees only the tables it allocated; the root stays the kernel's.
    ///
    /// What the crate assumes of the kernel's entries (since issue 17): it
    /// takes for its own only what lies under its areas, and
    /// [`map_vma`](Self::map_vma) creates an area only where every entry
    /// is zero or a present link to a table, refusing (`Overlap`) any leaf,
    /// any non-zero entry that is not present (whatever a kernel keeps in
    /// bits 9-11 or the address bits of such an entry), and any link
    /// carrying bit 10 ([`pte::OWNED`]) that no area of the space
    /// explains. So inside its areas bit 9 ([`pte::SPECIAL`]) and bit 11
    /// ([`pte::RETIRED`]) are only ever the crate's, and it frees only
    /// tables it linked itself. Outside its areas it reads nothing but the
    /// links it walks through, and writes nothing.
    ///
    /// # Safety
    /// `root` must be a live PML4 whose tables are all reachable through
    /// `mapper`, and must stay so (with the tables under it) for the life
    /// of the space; the kernel must not add, change or free entries (leaf,
    /// link, or non-present marker) in the span of the space's areas, nor
    /// tables the crate linked (marked [`pte::OWNED`]), nor set bit 10 on
    /// a link of its own once an area of the space lies under it. Links the
    /// kernel made that the space's areas lie under (with or without bit
    /// 10 then) stay the kernel's: the crate writes entries below them but
    /// never frees them. In practice: keep the kernel's own mappings in
    /// other PML4 slots than the space's areas, and follow
    /// [`TableMapper`]'s rule for an `OffsetPageTable` kept over the same
    /// hierarchy (made anew for each use).
    pub unsafe fn from_root(
        root: PhysFrame,
        counter: C,
        mapper: M,
        alloc: A,
        tlb: T,
        nx: bool,
    ) -> Self {
        Self::with_root(counter, mapper, alloc, tlb, nx, root, false)
    }
}

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush, F: Format>
    AddressSpace<C, M, A, T, F>
{
    /// As [`AddressSpace::new`], for a hierarchy in entry format `F` (an
    /// IOMMU domain's [`SecondLevel`](super::pte::SecondLevel) tables).
    pub fn new_in(counter: C, mapper: M, mut alloc: A, tlb: T, nx: bool) -> Result<Self, MmError> {
        let root = alloc.allocate_table().ok_or(MmError::OutOfMemory)?;
        let space = Self::with_root(counter, mapper, alloc, tlb, nx, root, true);
        space.root_table().clear();
        Ok(space)
    }

    fn with_root(
        counter: C,
        mapper: M,
        alloc: A,
        tlb: T,
        nx: bool,
        root: PhysFrame,
        owns_root: bool,
    ) -> Self {
        AddressSpace {
            counter,
            mapper,
            alloc,
            tlb,
            root,
            owns_root,
            spares: None,
            spare_count: 0,
            id: take_id(&NEXT_SPACE_ID),
            vmas: SlotMap::new(),
            shared: [false; 512],
            nx,
            pages_1g: false,
            entries_written: 0,
            _format: PhantomData,
        }
    }

    /// Lets `remap_pfn_range` use 1 GiB leaves where virtual and physical
    /// alignment allow. Only for a CPU with 1 GiB pages
    /// (CPUID.80000001H:EDX.Page1GB, bit 26; QEMU's default model lacks
    /// it: `-cpu qemu64,+pdpe1gb`); off by default.
    pub fn set_1g_pages(&mut self, on: bool) {
        self.pages_1g = on;
    }

    /// The root table (what CR3 loads).
    pub fn root(&self) -> PhysFrame {
        self.root
    }

    /// The page counter.
    pub fn counter(&self) -> &C {
        &self.counter
    }

    /// The TLB flusher.
    pub fn tlb(&self) -> &T {
        &self.tlb
    }

    /// The TLB flusher, to change.
    ///
    /// `unsafe` since issue 20: a flusher may know its space by more than
    /// the root it is given (an IOMMU domain's flushes by the domain id it
    /// was made with), so a safe swap of two spaces' flushers, or a new
    /// one put in, left each space flushing the other's translations while
    /// it freed its own frames under a device or CPU still caching them:
    ///
    /// ```compile_fail,E0133
    /// # use dmaengine::mm::space::AddressSpace;
    /// # use dmaengine::mm::traits::{PageCounter, TableAllocator, TableMapper};
    /// # use dmaengine::mm::tlb::TlbFlush;
    /// fn swap<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush>(
    ///     a: &mut AddressSpace<C, M, A, T>,
    ///     b: &mut AddressSpace<C, M, A, T>,
    /// ) {
    ///     core::mem::swap(a.tlb_mut(), b.tlb_mut());
    /// }
    /// ```
    ///
    /// # Safety
    /// The flusher stays one that flushes this space's translations
    /// everywhere they may be cached, as [`TlbFlush`] requires for its
    /// root: change its state, but do not swap it with, or replace it by,
    /// another space's.
    pub unsafe fn tlb_mut(&mut self) -> &mut T {
        &mut self.tlb
    }

    /// The table-frame allocator.
    ///
    /// Shared only: with a `&mut`, a caller could swap two spaces'
    /// allocators (or put in a new one), and each space would then give
    /// its tables back to an allocator that never gave them out, breaking
    /// [`TableAllocator::take_back`]'s promise to the kernel (`allocator_mut`
    /// did until issue 20):
    ///
    /// ```compile_fail,E0599
    /// # use dmaengine::mm::space::AddressSpace;
    /// # use dmaengine::mm::traits::{PageCounter, TableAllocator, TableMapper};
    /// # use dmaengine::mm::tlb::TlbFlush;
    /// fn swap<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush>(
    ///     a: &mut AddressSpace<C, M, A, T>,
    ///     b: &mut AddressSpace<C, M, A, T>,
    /// ) {
    ///     core::mem::swap(a.allocator_mut(), b.allocator_mut());
    /// }
    /// ```
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Table frames the space keeps because its allocator cannot take
    /// them back ([`NoFree`](super::traits::NoFree)); its next tables come
    /// from them first. Always 0 with an allocator that frees.
    pub fn spare_tables(&self) -> usize {
        self.spare_count
    }

    /// Unmaps every area (as dropping does) and hands every frame the space
    /// still holds of its own to `give`: its spare tables, then its root
    /// if it made it. For a kernel whose allocator cannot free, which
    /// would otherwise lose them: give them to its allocator's free list,
    /// or to another space through [`AddressSpace::add_spare_table`]. The
    /// root must not be loaded in CR3 any more.
    pub fn release_tables(mut self, mut give: impl FnMut(PhysFrame)) {
        self.unmap_all();
        while let Some(table) = self.pop_spare() {
            give(table);
        }
        if self.owns_root {
            self.owns_root = false;
            give(self.root);
        }
    }

    /// Gives the space `table` as a spare, for its next page table (a frame
    /// another space [`release_tables`](AddressSpace::release_tables) gave).
    ///
    /// # Safety
    /// `table` is RAM nothing else uses from now on, reachable through the
    /// space's mapper, and not already a table or a spare of this space
    /// (the same frame twice would be handed out as two tables); and the
    /// space's allocator may be offered it back
    /// (`take_back`) as if it had allocated it: with a [`NoFree`](super::traits::NoFree)
    /// allocator that is always so, with one that frees the frame must
    /// be one that allocator may free.
    pub unsafe fn add_spare_table(&mut self, table: PhysFrame) {
        // SAFETY: the caller's contract: the frame is RAM given to this
        // space alone, mapped by the mapper, no table or spare of it.
        unsafe { self.push_spare(table) };
    }

    /// Unmaps every area; whole areas never split a 2 MiB entry, so this
    /// cannot fail.
    fn unmap_all(&mut self) {
        for slot in 0..MAX_VMAS {
            if let Some(key) = self.vmas.key_at(slot) {
                let _ = self.unmap_vma(self.vma_id(key));
            }
        }
    }

    /// Page-table entries written since creation (leaves and table links).
    pub fn entries_written(&self) -> u64 {
        self.entries_written
    }

    /// Copies PML4 entries `slots` from the table `kernel_root` (the
    /// kernel's own mappings), so the kernel keeps running when this space
    /// is loaded. Those slots are never modified or freed by this space,
    /// and no area may be created in them. A slot an area of the space
    /// already lies in, or whose entry the space already uses, is refused
    /// (`Overlap`, nothing shared): the area's next insertion would walk
    /// into the kernel's tables and write them. Slots past 511 are
    /// ignored; sharing a slot again copies its entry again.
    ///
    /// # Safety
    /// `kernel_root` must be a live PML4 reachable through the mapper,
    /// whose entries in `slots` stay valid for the life of this space.
    pub unsafe fn share_kernel_slots(
        &mut self,
        kernel_root: PhysFrame,
        slots: impl IntoIterator<Item = usize>,
    ) -> Result<(), MmError> {
        let mut wanted = [false; 512];
        for slot in slots.into_iter().filter(|&s| s < 512) {
            wanted[slot] = true;
        }
        let root = self.root_table();
        let slot_size = 1u64 << 39;
        let in_use = |slot: usize| {
            let (start, end) = (slot as u64 * slot_size, (slot as u64 + 1) * slot_size);
            let area = self
                .vmas
                .iter()
                .any(|(_, v)| v.start.start_address().as_u64() < end && start < v.end());
            area || (!self.shared[slot] && !root.read(slot).is_empty())
        };
        if (0..512).any(|slot| wanted[slot] && in_use(slot)) {
            return Err(MmError::Overlap);
        }
        // SAFETY: the caller's contract: a live PML4 reached through the
        // mapper; only read.
        let kernel_root = unsafe { self.table(kernel_root) };
        for slot in (0..512).filter(|&slot| wanted[slot]) {
            let entry = kernel_root.read(slot);
            self.write(root, slot, entry);
            self.shared[slot] = true;
        }
        Ok(())
    }

    // ---- areas ----

    /// Creates an area of `pages` pages from `start` with `flags` (what
    /// `mmap` does before a driver's `mmap` hook fills it). Refused where
    /// anything is already mapped (`Overlap`): the kernel's mappings, or
    /// another area, and (since issue 17) any entry of the kernel's the
    /// crate could take for its own: a non-zero entry that is not present,
    /// or a link carrying [`pte::OWNED`] that no area of this space
    /// explains.
    pub fn map_vma(&mut self, start: Page, pages: u64, flags: VmFlags) -> Result<VmaId, MmError> {
        if pages == 0 {
            return Err(MmError::Misaligned);
        }
        let first = start.start_address().as_u64();
        let end = pages
            .checked_mul(PAGE_4K)
            .and_then(|len| first.checked_add(len))
            .filter(|&end| end <= USER_END)
            .ok_or(MmError::OutOfRange)?;
        let overlaps_kernel =
            (pte::index(first, 4)..=pte::index(end - 1, 4)).any(|s| self.shared[s]);
        let overlaps_vma = self.vmas.iter().any(|(_, v)| {
            let v_start = v.start.start_address().as_u64();
            v_start < end && first < v.end()
        });
        if overlaps_kernel || overlaps_vma || !self.range_is_vacant(first, end) {
            return Err(MmError::Overlap);
        }
        let vma = Vma {
            start,
            pages,
            flags,
            pgoff: 0,
        };
        let key = self.vmas.insert(vma).map_err(|_| MmError::TooManyVmas)?;
        Ok(self.vma_id(key))
    }

    fn vma_id(&self, key: Key) -> VmaId {
        VmaId {
            key,
            space: self.id,
        }
    }

    /// The area `id`.
    pub fn vma(&self, id: VmaId) -> Result<&Vma, MmError> {
        if id.space != self.id || self.id == 0 {
            return Err(MmError::ForeignVma);
        }
        self.vmas.get(id.key).ok_or(MmError::NoSuchVma)
    }

    fn vma_mut(&mut self, id: VmaId) -> Result<&mut Vma, MmError> {
        if id.space != self.id || self.id == 0 {
            return Err(MmError::ForeignVma);
        }
        self.vmas.get_mut(id.key).ok_or(MmError::NoSuchVma)
    }

    /// The area containing `addr`, if any.
    fn vma_at(&self, addr: VirtAddr) -> Option<Vma> {
        self.vmas
            .iter()
            .map(|(_, v)| v)
            .find(|v| v.contains(addr))
            .copied()
    }

    /// Moves every area slot to its last generation before running out:
    /// how a test reaches the end of the generations without that many
    /// `map_vma`s.
    #[cfg(test)]
    pub(crate) fn set_vma_generations_to_last(&mut self) {
        self.vmas.set_generations(crate::slots::RETIRED - 1);
    }

    /// Removes area `id` and everything mapped in it; `id` is stale after.
    pub fn unmap_vma(&mut self, id: VmaId) -> Result<(), MmError> {
        let vma = *self.vma(id)?;
        let start = vma.start.start_address().as_u64();
        self.zap(start, vma.end())?;
        self.vmas.remove(id.key);
        Ok(())
    }

    /// The byte range `[start, end)` of `count` pages from `first`, if they
    /// lie inside `vma` (and `count` is not zero).
    fn range_in(vma: &Vma, first: Page, count: u64) -> Result<(u64, u64), MmError> {
        if count == 0 {
            return Err(MmError::Misaligned);
        }
        if !vma.contains_pages(first, count) {
            return Err(MmError::OutOfRange);
        }
        let start = first.start_address().as_u64();
        Ok((start, start + count * PAGE_4K))
    }
}

impl<C: PageCounter, M: TableMapper, A: TableAllocator, T: TlbFlush, F: Format> Drop
    for AddressSpace<C, M, A, T, F>
{
    fn drop(&mut self) {
        self.unmap_all();
        // Spares are only kept when the allocator refused them, so they
        // and the root stay unused RAM, leaked, if it refuses again
        // (`release_tables` is how a kernel gets them back).
        while let Some(table) = self.pop_spare() {
            // SAFETY: a table from this allocator, unlinked and flushed.
            unsafe { self.alloc.take_back(table) };
        }
        if self.owns_root {
            // SAFETY: the root came from this allocator in `new`; every
            // area is gone and the space must not be loaded (type docs).
            unsafe { self.alloc.take_back(self.root) };
        }
    }
}
