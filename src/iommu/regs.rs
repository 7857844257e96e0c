//! Registers of an Intel VT-d DMA-remapping unit and the in-memory
//! structures it reads. Source: Intel Virtualization Technology for
//! Directed I/O, Architecture Specification (rev. 4), chapter 9 "Translation
//! Structure Formats" and chapter 11 "Register Descriptions" (section numbers
//! below); the QEMU behaviour the driver relies on is noted where it is used.
//!
//! Register bits are [`bitflags`](mod@bitflags) types named after their register
//! ([`Gcmd`], [`Gsts`], [`Cap`], ...); multi-bit fields that hold numbers
//! (offsets, counts, ids, fault reasons) are read by the functions here.

use bitflags::bitflags;

/// 11.4.1 Version Register (32-bit): major version in bits 7:4.
pub const VER: usize = 0x00;
/// VER bits 7:4, Max: the VT-d major version the unit implements.
pub const fn ver_major(ver: u32) -> u32 {
    (ver >> 4) & 0xf
}
/// 11.4.2 Capability Register (64-bit).
pub const CAP: usize = 0x08;
/// 11.4.3 Extended Capability Register (64-bit).
pub const ECAP: usize = 0x10;
/// 11.4.4 Global Command Register (32-bit, write-only).
pub const GCMD: usize = 0x18;
/// 11.4.5 Global Status Register (32-bit).
pub const GSTS: usize = 0x1c;
/// 11.4.6 Root Table Address Register (64-bit).
pub const RTADDR: usize = 0x20;
/// 11.4.7 Context Command Register (64-bit).
pub const CCMD: usize = 0x28;
/// 11.4.9.1 Fault Status Register (32-bit).
pub const FSTS: usize = 0x34;
/// 11.4.9.2 Fault Event Control Register (32-bit).
pub const FECTL: usize = 0x38;
/// 11.4.9.3 Fault Event Data Register (32-bit): the MSI data of a fault
/// event.
pub const FEDATA: usize = 0x3c;
/// 11.4.9.4 Fault Event Address Register (32-bit): the MSI address (bits
/// 31:2) of a fault event.
pub const FEADDR: usize = 0x40;
/// 11.4.9.5 Fault Event Upper Address Register (32-bit): bits 63:32 of
/// that address.
pub const FEUADDR: usize = 0x44;
/// Bytes of register window the driver touches on QEMU's unit (its fault
/// recording register ends at 0x230); map a 4 KiB page.
pub const MMIO_SIZE: usize = 0x1000;

/// CAP bits 33:24, FRO: offset of the first fault recording register, in
/// 16-byte units.
pub const fn cap_fro(cap: u64) -> usize {
    (((cap >> 24) & 0x3ff) * 16) as usize
}
/// CAP bits 47:40, NFR: number of fault recording registers, minus one.
pub const fn cap_nfr(cap: u64) -> usize {
    ((cap >> 40) & 0xff) as usize + 1
}
/// FSTS bits 15:8, FRI: the fault recording register the unit filled when
/// it last set PPF (spec 11.4.9.1); the unit fills the registers round
/// robin from there. Software clearing records does not move it, so once
/// the round robin wraps past a cleared record it no longer names the
/// oldest fault.
pub const fn fsts_fri(fsts: u32) -> usize {
    ((fsts >> 8) & 0xff) as usize
}
/// CAP bits 21:16, MGAW: the widest guest address (IOVA) the unit
/// translates is MGAW + 1 bits; DMA to an address above it is refused
/// (spec 11.4.2; QEMU reports its `aw-bits` minus one).
pub const fn cap_mgaw(cap: u64) -> u32 {
    ((cap >> 16) & 0x3f) as u32 + 1
}
/// CAP bits 2:0, ND: the unit takes 2^(4 + 2 * ND) domain ids (VT-d spec
/// 11.4.2, Capability Register; QEMU reports ND = 6: 16-bit ids).
pub const fn cap_domains(cap: u64) -> u32 {
    1 << (4 + 2 * (cap & 7) as u32)
}
/// ECAP bits 17:8, IRO: offset of the IOTLB registers, in 16-byte units.
pub const fn ecap_iro(ecap: u64) -> usize {
    (((ecap >> 8) & 0x3ff) * 16) as usize
}

/// 11.4.8.1 IOTLB Invalidate Register, at ECAP.IRO + 8 (64-bit).
pub const IOTLB_REG: usize = 8;
/// 11.4.8.2 Invalidate Address Register, at ECAP.IRO (64-bit): address
/// in bits 63:12, address mask (log2 of pages) in bits 5:0.
pub const IVA_REG: usize = 0;
/// Invalidation Queue Head Register (64-bit): the offset of the next
/// descriptor the unit fetches, in bits 18:4 (16-byte descriptors).
pub const IQH: usize = 0x80;
/// Invalidation Queue Tail Register (64-bit): the offset of the next
/// descriptor software writes, in bits 18:4; writing it hands the unit
/// every descriptor before it.
pub const IQT: usize = 0x88;
/// Invalidation Queue Address Register (64-bit): the queue's base in bits
/// 63:12, bit 11 (DW) clear for 128-bit descriptors, and in bits 2:0 the
/// size (2^QS pages of 256 descriptors).
pub const IQA: usize = 0x90;
/// Descriptors in a one-page queue (QS = 0).
pub const QUEUE_DESCRIPTORS: u32 = 256;
/// 6.5.2.1 Context-cache Invalidate Descriptor: type 1 in bits 3:0,
/// granularity in bits 5:4 (01: global).
pub const DESC_CONTEXT_GLOBAL: u64 = 0x1 | 1 << 4;
/// 6.5.2.3 IOTLB Invalidate Descriptor: type 2 in bits 3:0, granularity in
/// bits 5:4 (01 global, 10 domain, 11 page), DW (bit 6) and DR (bit 7) to
/// drain writes and reads first, the domain in bits 31:16; the second
/// quadword holds the page address in bits 63:12 (and AM, IH below).
pub const DESC_IOTLB: u64 = 0x2 | 1 << 6 | 1 << 7;
/// IOTLB descriptor granularity: global.
pub const DESC_IOTLB_GLOBAL: u64 = 1 << 4;
/// IOTLB descriptor granularity: domain-selective.
pub const DESC_IOTLB_DOMAIN: u64 = 2 << 4;
/// IOTLB descriptor granularity: page-selective.
pub const DESC_IOTLB_PAGE: u64 = 3 << 4;
/// 6.5.2.8 Invalidation Wait Descriptor: type 5 in bits 3:0, SW (bit 5):
/// write the status data (bits 63:32) to the status address (second
/// quadword, bits 63:2) once every descriptor before it is done; FN (bit
/// 6): fetch nothing after it until then.
pub const DESC_WAIT: u64 = 0x5 | 1 << 5 | 1 << 6;

/// Fault recording register, high half, bits 39:32, FR: the fault reason.
pub const fn frcd_reason(high: u64) -> u8 {
    (high >> 32) as u8
}
/// Bits 15:0, SID: the requester's bus, device and function.
pub const fn frcd_source(high: u64) -> u16 {
    high as u16
}

/// Fault reason 5: a write to a page without write permission (or not
/// mapped at all: second-level entries have no present bit).
pub const REASON_WRITE: u8 = 5;
/// Fault reason 6: a read of a page without read permission (or not
/// mapped).
pub const REASON_READ: u8 = 6;

/// Context entry, high half, bits 2:0, AW = 010: 48-bit, 4-level tables.
pub const CONTEXT_AW_4LEVEL: u64 = 2;
/// Context entry, high half, bits 23:8: the domain id.
pub const fn context_domain(id: u16) -> u64 {
    (id as u64) << 8
}

bitflags! {
    /// 11.4.2 Capability Register (CAP) bits the driver reads.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Cap: u64 {
        /// Bit 4, RWBF (11.4.2, 6.8): table writes need a write-buffer flush (or an invalidation) to be seen.
        const RWBF = 1 << 4;
        /// Bit 7, CM (11.4.2, 6.1): Caching Mode: not-present entries may be cached; domain id 0 is reserved.
        const CM = 1 << 7;
        /// Bit 10, SAGAW bit 2 (11.4.2): 48-bit, 4-level second-level tables, the only layout the driver builds.
        const SAGAW_4LEVEL = 1 << (8 + 2);
        /// Bit 39, PSI (11.4.2): page-selective IOTLB invalidation is supported.
        const PSI = 1 << 39;
    }
}

bitflags! {
    /// 11.4.3 Extended Capability Register (ECAP) bits the driver reads.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Ecap: u64 {
        /// Bit 1, QI (11.4.3, 6.5): queued invalidation, the only kind units of version 6 and later have.
        const QI = 1 << 1;
    }
}

bitflags! {
    /// 11.4.4 Global Command Register (GCMD) commands. A write sets every
    /// command at once, so the driver writes the persistent states GSTS
    /// reports, minus [`Gcmd::ONE_SHOT`], with its own command added (QEMU
    /// acts again on any one-shot bit left set).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Gcmd: u32 {
        /// Bit 31, TE (11.4.4): enable translation (GSTS.TES confirms).
        const TE = 1 << 31;
        /// Bit 30, SRTP (11.4.4): latch RTADDR as the root table, one-shot (GSTS.RTPS confirms).
        const SRTP = 1 << 30;
        /// Bit 29, SFL (11.4.4): set the fault log pointer, one-shot (never used here).
        const SFL = 1 << 29;
        /// Bit 27, WBF (11.4.4, 6.8): flush the write buffer, one-shot (GSTS.WBFS clears when done).
        const WBF = 1 << 27;
        /// Bit 26, QIE (11.4.4): enable queued invalidation (GSTS.QIES confirms).
        const QIE = 1 << 26;
        /// Bit 24, SIRTP (11.4.4): set the interrupt remapping table pointer, one-shot (never used here).
        const SIRTP = 1 << 24;
        /// The one-shot commands (11.4.4): never carried over from GSTS into a new GCMD write.
        const ONE_SHOT = Self::SRTP.bits() | Self::SFL.bits() | Self::WBF.bits() | Self::SIRTP.bits();
    }
}

bitflags! {
    /// 11.4.5 Global Status Register (GSTS) bits the driver polls.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Gsts: u32 {
        /// Bit 31, TES (11.4.5): translation is enabled.
        const TES = 1 << 31;
        /// Bit 30, RTPS (11.4.5): the root table pointer is set.
        const RTPS = 1 << 30;
        /// Bit 27, WBFS (11.4.5): a write-buffer flush is in progress.
        const WBFS = 1 << 27;
        /// Bit 26, QIES (11.4.5): queued invalidation is on.
        const QIES = 1 << 26;
    }
}

bitflags! {
    /// 11.4.7 Context Command Register (CCMD, 64-bit).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Ccmd: u64 {
        /// Bit 63, ICC (11.4.7): invalidate the context cache; hardware clears it when done.
        const ICC = 1 << 63;
        /// Bits 62:61 = 01, CIRG global (11.4.7): every context-cache entry.
        const GLOBAL = 1 << 61;
    }
}

bitflags! {
    /// 11.4.8.1 IOTLB Invalidate Register (at ECAP.IRO + 8); the domain id
    /// goes in bits 47:32.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Iotlb: u64 {
        /// Bit 63, IVT (11.4.8.1): invalidate; hardware clears it when done.
        const IVT = 1 << 63;
        /// Bits 61:60 = 01, IIRG global (11.4.8.1): every IOTLB entry.
        const GLOBAL = 1 << 60;
        /// Bits 61:60 = 10, IIRG domain-selective (11.4.8.1): the domain's entries.
        const DOMAIN = 2 << 60;
        /// Bits 61:60 = 11, IIRG page-selective (11.4.8.1): the page in IVA, in the domain.
        const PAGE = 3 << 60;
        /// Bit 49, DR (11.4.8.1): drain reads before the invalidation completes.
        const DR = 1 << 49;
        /// Bit 48, DW (11.4.8.1): drain writes before the invalidation completes.
        const DW = 1 << 48;
    }
}

bitflags! {
    /// 11.4.9.1 Fault Status Register (FSTS) bits the driver reads and clears.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Fsts: u32 {
        /// Bit 0, PFO (11.4.9.1): a fault was lost, every record full; write 1 to clear.
        const PFO = 1 << 0;
        /// Bit 1, PPF (11.4.9.1): a fault recording register holds a fault.
        const PPF = 1 << 1;
        /// Bit 4, IQE (11.4.9.1, 6.5.2.10): the queue met a descriptor it could not process; write 1 to clear.
        const IQE = 1 << 4;
    }
}

bitflags! {
    /// 11.4.9.2 Fault Event Control Register (FECTL).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Fectl: u32 {
        /// Bit 31, IM (11.4.9.2): fault events masked (the reset value).
        const IM = 1 << 31;
        /// Bit 30, IP (11.4.9.2): a fault event is pending, held back by IM.
        const IP = 1 << 30;
    }
}

bitflags! {
    /// 11.4.14 Fault Recording Register, high quadword (at +8); the reason
    /// and the requester are fields ([`frcd_reason`], [`frcd_source`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Frcd: u64 {
        /// Bit 63, F (11.4.14): a fault is recorded; write 1 to clear.
        const F = 1 << 63;
        /// Bit 62, T (11.4.14): the faulting request was a read (0: a write).
        const T = 1 << 62;
    }
}

bitflags! {
    /// 9.1 Root Entry, low quadword (16 bytes per bus, 256 per table); bits
    /// 63:12 hold the bus's context table.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RootEntry: u64 {
        /// Bit 0, P (9.1): present.
        const P = 1 << 0;
    }
}

bitflags! {
    /// 9.3 Context Entry, low quadword (16 bytes per device and function);
    /// bits 63:12 hold the second-level tables, and TT (bits 3:2) = 00
    /// sends untranslated requests through them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ContextEntry: u64 {
        /// Bit 0, P (9.3): present.
        const P = 1 << 0;
    }
}
