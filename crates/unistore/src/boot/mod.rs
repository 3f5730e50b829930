//! Booting: what a boot loader reads and what the kernel is told.
//!
//! * [`bls`]: BLS Type 1 entries (`loader/entries/*.conf`, the staged
//!   `entries.staged/` swapped in at finalize), their file names and sort
//!   keys, and the kernel/initrd pairs they name (`boot/bootc_composefs-<id>/`);
//! * [`systemd_boot`]: the loader on the ESP, from the image;
//! * [`migrate`]: bringing boot directories written by older versions to
//!   today's names, safely against interruption.
//!
//! Entries are the truth of a composefs host: a deployment is live exactly
//! when an entry names it. Partitions, the ESP and boot loader installation
//! belong here too.

pub mod bls;
pub mod migrate;
pub mod systemd_boot;
