//! Registers of an Intel VT-d DMA-remapping unit and the in-memory
//! structures it reads. Source: Intel Virtualization Technology for
//! Directed I/O, Architecture Specification (rev. 4), chapter 9 "Translation
//! Structure Formats" and chapter 11 "Register Descriptions" (section numbers
//! below); the QEMU behaviour the driver relies on is noted where it is used.

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

/// CAP bits 12:8, SAGAW: bit 2 set means 48-bit, 4-level second-level
/// tables are supported (the only layout this driver uses).
pub const CAP_SAGAW_4LEVEL: u64 = 1 << (8 + 2);
/// CAP bits 33:24, FRO: offset of the first fault recording register, in
/// 16-byte units.
pub const fn cap_fro(cap: u64) -> usize {
    (((cap >> 24) & 0x3ff) * 16) as usize
}
/// CAP bits 47:40, NFR: number of fault recording registers, minus one.
pub const fn cap_nfr(cap: u64) -> usize {
    ((cap >> 40) & 0xff) as usize + 1
}
/// CAP bits 2:0, ND: the unit takes 2^(4 + 2 * ND) domain ids (VT-d spec
/// 11.4.2, Capability Register; QEMU reports ND = 6: 16-bit ids).
pub const fn cap_domains(cap: u64) -> u32 {
    1 << (4 + 2 * (cap & 7) as u32)
}
/// CAP bit 7, CM (spec 11.4.2, 6.1): Caching Mode: the unit may cache
/// not-present and erroneous entries, so making an entry present needs an
/// invalidation too, and domain id 0 is reserved.
pub const CAP_CM: u64 = 1 << 7;
/// CAP bit 4, RWBF (spec 11.4.2, 6.8): Required Write-Buffer Flushing: the
/// unit may not see writes to its tables until software flushes its write
/// buffer (GCMD.WBF) or invalidates (which flushes it implicitly).
pub const CAP_RWBF: u64 = 1 << 4;
/// CAP bit 39, PSI: page-selective IOTLB invalidation is supported.
pub const CAP_PSI: u64 = 1 << 39;
/// ECAP bit 1, QI: queued invalidation is supported (units of VT-d
/// version 6 and later support no other, spec 6.5).
pub const ECAP_QI: u64 = 1 << 1;
/// ECAP bits 17:8, IRO: offset of the IOTLB registers, in 16-byte units.
pub const fn ecap_iro(ecap: u64) -> usize {
    (((ecap >> 8) & 0x3ff) * 16) as usize
}

/// GCMD bit 31, TE: enable translation. GCMD bit 30, SRTP: set the root
/// table pointer. GSTS has the matching status bits (TES, RTPS).
pub const GCMD_TE: u32 = 1 << 31;
/// GCMD bit 30, SRTP.
pub const GCMD_SRTP: u32 = 1 << 30;
/// GCMD bit 26, QIE: enable queued invalidation (GSTS bit 26, QIES, says
/// it is on).
pub const GCMD_QIE: u32 = 1 << 26;
/// GCMD bit 27, WBF (spec 11.4.4): flush the write buffer (only on a unit
/// with CAP.RWBF); GSTS bit 27, WBFS, stays set until the flush is done.
pub const GCMD_WBF: u32 = 1 << 27;
/// GSTS bit 27, WBFS: a write-buffer flush is in progress.
pub const GSTS_WBFS: u32 = 1 << 27;
/// GSTS bit 26, QIES.
pub const GSTS_QIES: u32 = 1 << 26;
/// GSTS bit 31, TES: translation is enabled.
pub const GSTS_TES: u32 = 1 << 31;
/// GSTS bit 30, RTPS: the root table pointer is set.
pub const GSTS_RTPS: u32 = 1 << 30;
/// The GSTS bits that are persistent states rather than one-shot commands:
/// a GCMD write must carry them (11.4.4: software reads GSTS, masks the
/// one-shot bits, ORs the command; QEMU acts again on any one-shot bit left
/// set).
pub const GSTS_PERSISTENT: u32 = 0x96ff_ffff;

/// CCMD bit 63, ICC: invalidate the context cache (cleared by hardware
/// when done).
pub const CCMD_ICC: u64 = 1 << 63;
/// CCMD bits 62:61 = 01: global invalidation.
pub const CCMD_GLOBAL: u64 = 1 << 61;

/// 11.4.8.1 IOTLB Invalidate Register, at ECAP.IRO + 8 (64-bit).
pub const IOTLB_REG: usize = 8;
/// 11.4.8.2 Invalidate Address Register, at ECAP.IRO (64-bit): address
/// in bits 63:12, address mask (log2 of pages) in bits 5:0.
pub const IVA_REG: usize = 0;
/// IOTLB bit 63, IVT: invalidate (cleared by hardware when done).
pub const IOTLB_IVT: u64 = 1 << 63;
/// IOTLB bits 61:60 = 01: global invalidation.
pub const IOTLB_GLOBAL: u64 = 1 << 60;
/// IOTLB bits 61:60 = 10: domain-selective invalidation (domain in bits
/// 47:32).
pub const IOTLB_DOMAIN: u64 = 2 << 60;
/// IOTLB bits 61:60 = 11: page-selective invalidation (domain in bits
/// 47:32, address in IVA).
pub const IOTLB_PAGE: u64 = 3 << 60;
/// IOTLB bits 49:48, DR and DW: drain reads and writes first.
pub const IOTLB_DRAIN: u64 = 3 << 48;

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
/// FSTS bit 4, IQE: the unit found a descriptor it could not process
/// (the queue then stops; write 1 to clear).
pub const FSTS_IQE: u32 = 1 << 4;

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

/// FSTS bit 1, PPF: a fault recording register holds a fault.
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS bit 0, PFO: a fault was lost because every register was full
/// (write 1 to clear).
pub const FSTS_PFO: u32 = 1 << 0;
/// FECTL bit 31, IM: fault interrupts masked (the reset value).
pub const FECTL_IM: u32 = 1 << 31;
/// FECTL bit 30, IP: a fault event is pending, held back by IM.
pub const FECTL_IP: u32 = 1 << 30;

/// 11.4.14 Fault Recording Register, high half (at +8): bit 63, F: a fault
/// is recorded (write 1 to clear).
pub const FRCD_F: u64 = 1 << 63;
/// Bit 62, T: the faulting request was a read (0: a write).
pub const FRCD_T_READ: u64 = 1 << 62;
/// Bits 39:32, FR: the fault reason.
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

/// 9.1 Root Entry (16 bytes, 256 per table, one per bus), low half: bit 0,
/// P: present; bits 63:12: the bus's context table.
pub const ROOT_PRESENT: u64 = 1 << 0;
/// 9.3 Context Entry (16 bytes, 256 per table, one per device and
/// function), low half: bit 0, P: present; bits 3:2, TT = 00: untranslated
/// requests go through the second-level tables at bits 63:12.
pub const CONTEXT_PRESENT: u64 = 1 << 0;
/// Context entry, high half, bits 2:0, AW = 010: 48-bit, 4-level tables.
pub const CONTEXT_AW_4LEVEL: u64 = 2;
/// Context entry, high half, bits 23:8: the domain id.
pub const fn context_domain(id: u16) -> u64 {
    (id as u64) << 8
}
