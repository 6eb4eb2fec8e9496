//! Everything that knows QEMU's command line and processes: the pure argv builder
//! ([`cmdline`]), the only place that spawns processes ([`launcher`]) accelerator
//! detection ([`accel`]) and the profiles (`os_variant`) the argv is built from
//! ([`profile`]).

pub mod accel;
pub mod boot_order;
pub mod cmdline;
pub mod launcher;
pub mod profile;
