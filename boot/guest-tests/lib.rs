//! Nothing to link: this package only holds `tests/qemu.rs`, which boots
//! the kernel in QEMU through `qemu-run.sh`. It lives outside the published
//! `dmaengine` package because it needs the workspace's kernel.
