//! Everything that knows QEMU's command line and processes: the pure argv builder
//! ([`cmdline`]), the host checks whose results it takes ([`prepare`]: disk chains,
//! boot files, the user QEMU drops to), the only place that spawns processes
//! ([`launcher`]), accelerator detection ([`accel`]) and the profiles (`os_variant`)
//! the argv is built from ([`profile`]), and where each device is plugged
//! ([`addresses`]).

pub mod accel;
pub mod addresses;
pub mod boot_order;
pub mod cmdline;
pub mod launcher;
pub mod prepare;
pub mod profile;
