//! Host tests of the mapping rules: page tables in host memory (reached
//! with an offset of 0: "physical" addresses are host addresses), checked
//! entry by entry and count by count.

use std::collections::BTreeMap;

use proptest::prelude::*;

use x86_64::structures::paging::Page;

use super::MmError;
use super::frame::{FrameDb, FrameKind, PageRef};
use super::pte::PageProt;
use super::pte::{self, CacheMode, PAGE_2M, PAGE_4K};
use super::space::{AddressSpace, Inserted, PartialInsert, VmaId};
use super::testing::*;
use super::traits::{OffsetMapper, TableAllocator};
use super::vma::VmFlags;

/// The end of the user half.
const USER: u64 = super::space::USER_END;

mod areas;
mod fork_fault;
mod insert;
mod model;
mod remap;
mod zap;
