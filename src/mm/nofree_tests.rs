//! Kernels that keep less than a page database and a freeing allocator.
//! An allocator that cannot free (blog_os' boot-map allocator, say): the
//! space keeps the tables it empties, reuses them before asking the
//! allocator again, and hands every one to the kernel when released. No
//! page database at all ([`NoPages`]): raw frames are remapped, copies on
//! write are refused.

use std::cell::Cell;
use std::collections::BTreeSet;

use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size4KiB};

use super::MmError;
use super::frame::FrameDb;
use super::pte::PageProt;
use super::space::AddressSpace;
use super::space::WriteFault;
use super::testing::{BASE, Memory, SHARED_RW, Tlb, mapper, npages, pg, table_frames, va};
use super::traits::{NoFree, NoPages, OffsetMapper};
use super::vma::VmFlags;
use crate::mm::pte::PAGE_4K;

/// Hands out the database's frames and never takes one back; counts what
/// it gave and can be told to run dry.
struct Boot<'a> {
    db: &'a FrameDb<'a>,
    given: &'a Cell<usize>,
    left: &'a Cell<usize>,
}

// SAFETY: frames come from the database, each handed out once.
unsafe impl FrameAllocator<Size4KiB> for Boot<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let left = self.left.get().checked_sub(1)?;
        let frame = (&*self.db).allocate_frame()?;
        self.left.set(left);
        self.given.set(self.given.get() + 1);
        Some(frame)
    }
}

type Space<'a> = AddressSpace<&'a FrameDb<'a>, OffsetMapper, NoFree<Boot<'a>>, Tlb>;

fn space<'a>(db: &'a FrameDb<'a>, given: &'a Cell<usize>, left: &'a Cell<usize>) -> Space<'a> {
    let boot = Boot { db, given, left };
    AddressSpace::new(db, mapper(), NoFree(boot), Tlb::default(), true).unwrap()
}

/// Two pages 2 MiB apart: two page tables under one directory.
const FAR: u64 = BASE + 512 * PAGE_4K;

#[test]
fn emptied_tables_are_kept_and_reused_before_the_allocator_is_asked() {
    let mem = Memory::new(64);
    let db = mem.db();
    let (given, left) = (Cell::new(0), Cell::new(usize::MAX));
    let mut space = space(&db, &given, &left);
    let pages = [db.alloc_page().unwrap(), db.alloc_page().unwrap()];

    let id = space
        .map_vma(pg(BASE), npages(BASE, FAR + PAGE_4K), SHARED_RW)
        .unwrap();
    space.insert_page(id, pg(BASE), &pages[0]).unwrap();
    space.insert_page(id, pg(FAR), &pages[1]).unwrap();
    // The root, a PDPT, a PD and two PTs.
    assert_eq!(given.get(), 5);
    assert_eq!(space.spare_tables(), 0);

    space.unmap_vma(id).unwrap();
    assert_eq!(
        space.spare_tables(),
        4,
        "the emptied tables stay with the space"
    );
    assert_eq!(table_frames(&db), 5, "none went back to the database");
    assert_eq!(space.translate(va(BASE)), None);

    // The same mappings again take the four spares, not new frames, and
    // the real walk finds the pages through them.
    left.set(0);
    let id = space
        .map_vma(pg(BASE), npages(BASE, FAR + PAGE_4K), SHARED_RW)
        .unwrap();
    space.insert_page(id, pg(BASE), &pages[0]).unwrap();
    space.insert_page(id, pg(FAR), &pages[1]).unwrap();
    assert_eq!(space.spare_tables(), 0);
    assert_eq!(given.get(), 5);
    assert_eq!(space.translate(va(FAR)).unwrap().phys(), pages[1].phys());

    // With the spares gone and the allocator dry, a third table is refused
    // and the space is left as it was.
    let before: Vec<_> = space.user_leaves().collect();
    let far_away = FAR + 512 * 512 * PAGE_4K;
    let id2 = space.map_vma(pg(far_away), 1, SHARED_RW).unwrap();
    assert_eq!(
        space.insert_page(id2, pg(far_away), &pages[0]),
        Err(MmError::OutOfMemory)
    );
    assert_eq!(space.user_leaves().collect::<Vec<_>>(), before);
    assert_eq!(space.spare_tables(), 0);
}

#[test]
fn a_table_taken_and_refused_in_a_failed_call_is_kept_not_lost() {
    let mem = Memory::new(64);
    let db = mem.db();
    let (given, left) = (Cell::new(0), Cell::new(usize::MAX));
    let mut space = space(&db, &given, &left);
    let page = db.alloc_page().unwrap();
    let id = space.map_vma(pg(BASE), 1, SHARED_RW).unwrap();
    // Room for the PDPT only: the call fails at the PD and gives the PDPT
    // back, which the allocator refuses, so the space keeps it.
    left.set(1);
    assert_eq!(
        space.insert_page(id, pg(BASE), &page),
        Err(MmError::OutOfMemory)
    );
    assert_eq!(space.spare_tables(), 1);
    assert_eq!(space.translate(va(BASE)), None);
    // The next try uses the spare and two new frames.
    left.set(2);
    space.insert_page(id, pg(BASE), &page).unwrap();
    assert_eq!(space.spare_tables(), 0);
    assert_eq!(given.get(), 4);
}

#[test]
fn released_tables_are_every_frame_the_space_took_and_serve_another_space() {
    let mem = Memory::new(64);
    let db = mem.db();
    let (given, left) = (Cell::new(0), Cell::new(usize::MAX));
    let mut first = space(&db, &given, &left);
    let root = first.root();
    let page = db.alloc_page().unwrap();
    let id = first
        .map_vma(pg(BASE), npages(BASE, FAR + PAGE_4K), SHARED_RW)
        .unwrap();
    first.insert_page(id, pg(BASE), &page).unwrap();
    first.insert_page(id, pg(FAR), &page).unwrap();
    assert_eq!(db.state(page.frame()).unwrap().mapcount, 2);

    let mut released = BTreeSet::new();
    first.release_tables(|frame| assert!(released.insert(frame)));
    assert_eq!(released.len(), 5, "four tables and the root");
    assert!(released.contains(&root));
    assert_eq!(
        db.state(page.frame()).unwrap().mapcount,
        0,
        "its areas were unmapped"
    );

    // Another space builds its tables from them alone.
    let mut second = space(&db, &given, &left);
    for &frame in &released {
        // SAFETY: released by the first space, unused, host memory the
        // mapper reaches; a `NoFree` allocator takes nothing back.
        unsafe { second.add_spare_table(frame) };
    }
    left.set(0);
    let id = second.map_vma(pg(BASE), 1, SHARED_RW).unwrap();
    second.insert_page(id, pg(BASE), &page).unwrap();
    assert_eq!(second.spare_tables(), 2);
    let pt = second.translate(va(BASE)).unwrap();
    assert_eq!(pt.phys(), page.phys());
}

#[test]
fn a_kernel_without_a_page_database_remaps_raw_frames_and_refuses_copies() {
    let mem = Memory::new(64);
    let db = mem.db();
    let (given, left) = (Cell::new(0), Cell::new(usize::MAX));
    let boot = Boot {
        db: &db,
        given: &given,
        left: &left,
    };
    let mut space: AddressSpace<NoPages, OffsetMapper, NoFree<Boot<'_>>, Tlb> =
        AddressSpace::new(NoPages, mapper(), NoFree(boot), Tlb::default(), true).unwrap();
    // Two frames of the kernel's own (here from the database, which the
    // space does not know about).
    let frames = [db.alloc_page().unwrap(), db.alloc_page().unwrap()];
    let shared = space.map_vma(pg(BASE), 1, SHARED_RW).unwrap();
    let private = space
        .map_vma(
            pg(FAR),
            1,
            VmFlags::READ | VmFlags::WRITE | VmFlags::MAYWRITE,
        )
        .unwrap();
    // A private area's own protection: read-only until a write copies.
    let cow = space.vma(private).unwrap().page_prot();
    // SAFETY: the frames stay allocated (held above) for the whole test.
    unsafe {
        space
            .remap_pfn_range(shared, pg(BASE), frames[0].frame(), 1, PageProt::READ_WRITE)
            .unwrap();
        space
            .remap_pfn_range(private, pg(FAR), frames[1].frame(), 1, cow)
            .unwrap();
    }
    let leaf = space.translate(va(BASE)).unwrap();
    assert_eq!(leaf.phys(), frames[0].phys());
    assert!(leaf.is_special(), "nothing is counted behind it");
    assert_eq!(db.state(frames[0].frame()).unwrap().mapcount, 0);
    // A write to the private mapping needs a fresh page to copy into.
    assert_eq!(space.handle_write_fault(va(FAR)), Err(MmError::OutOfMemory));
    assert_eq!(space.translate(va(FAR)).unwrap().phys(), frames[1].phys());
    assert_eq!(space.handle_write_fault(va(BASE)), Ok(WriteFault::Spurious));
}
