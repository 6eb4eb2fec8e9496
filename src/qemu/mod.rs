//! Everything that knows QEMU's command line and processes: the pure argv builder
//! ([`cmdline`]), the host checks whose results it takes ([`prepare`]: disk chains,
//! boot files, the user QEMU drops to), the only place that spawns processes
//! ([`launcher`]) and accelerator detection ([`accel`]).

pub mod accel;
pub mod boot_order;
pub mod cmdline;
pub mod launcher;
pub mod prepare;
