//! Everything that knows QEMU's command line and processes: the pure argv builder
//! ([`cmdline`]), the only place that spawns processes ([`launcher`]) and accelerator
//! detection ([`accel`]).

pub mod accel;
pub mod boot_order;
pub mod cmdline;
pub mod launcher;
