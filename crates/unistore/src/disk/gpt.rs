//! bootc's partition table for `install to-disk`, written by `sfdisk`.
//!
//! | # | name | type | size |
//! |---|---|---|---|
//! | 1 | `BIOS-BOOT` | BIOS boot `21686148-6449-6E6F-744E-656564454649` | 1 MiB |
//! | 2 | `EFI-SYSTEM` | ESP `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` | 1 GiB (composefs backend) |
//! | 3 | `root` | x86-64 root `4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709` | the rest, or `--root-size` |
//!
//! sfdisk aligns partitions to 1 MiB; the layout actually written is read
//! back with `sfdisk -J` ([`read`]), so offsets never come from arithmetic
//! alone.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// GPT type of a BIOS boot partition.
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT type of an EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type of an x86-64 root partition (Discoverable Partitions).
pub const ROOT_TYPE_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

const MIB: u64 = 1 << 20;
/// The BIOS boot partition's size.
pub const BIOS_BOOT_SIZE: u64 = MIB;
/// The ESP's size with the composefs backend (bootc: 1 GiB; 512 MiB ostree).
pub const ESP_SIZE: u64 = 1024 * MIB;
/// What the table itself and alignment take: the first 1 MiB, the backup
/// table at the end (rounded up to 1 MiB).
pub const OVERHEAD: u64 = 2 * MIB;

/// One partition as sfdisk reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Partition {
    /// First sector (512 bytes).
    pub start: u64,
    /// Size in sectors.
    pub size: u64,
    /// GPT type GUID (upper case).
    #[serde(rename = "type")]
    pub type_guid: String,
    /// Partition name.
    #[serde(default)]
    pub name: String,
}

impl Partition {
    /// Byte offset of the partition.
    pub fn offset(&self) -> u64 {
        self.start * 512
    }
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.size * 512
    }
}

/// The sfdisk script of bootc's table; `root_size` in bytes, `None` for
/// the rest of the disk.
pub fn script(root_size: Option<u64>) -> String {
    let root = match root_size {
        Some(b) => format!("size={}MiB, ", b.div_ceil(MIB)),
        None => String::new(),
    };
    format!(
        "label: gpt\n\
         size={}MiB, type={BIOS_BOOT_TYPE}, name=\"BIOS-BOOT\"\n\
         size={}MiB, type={ESP_TYPE}, name=\"EFI-SYSTEM\"\n\
         {root}type={ROOT_TYPE_X86_64}, name=\"root\"\n",
        BIOS_BOOT_SIZE / MIB,
        ESP_SIZE / MIB,
    )
}

/// Writes the table onto `disk` (a file or a block device), replacing any.
pub fn write(disk: &Path, root_size: Option<u64>) -> Result<()> {
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--wipe", "always", "--wipe-partitions", "always"])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running sfdisk (package fdisk)")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(script(root_size).as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "sfdisk could not write the partition table on {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Parses `sfdisk -J` output.
pub fn parse(json: &[u8]) -> Result<Vec<Partition>> {
    #[derive(serde::Deserialize)]
    struct Out {
        partitiontable: Table,
    }
    #[derive(serde::Deserialize)]
    struct Table {
        label: String,
        #[serde(default)]
        partitions: Vec<Partition>,
    }
    let o: Out = serde_json::from_slice(json).context("parsing sfdisk -J output")?;
    if o.partitiontable.label != "gpt" {
        bail!("the partition table is {}, not gpt", o.partitiontable.label);
    }
    Ok(o.partitiontable.partitions)
}

/// Reads the table of `disk`.
pub fn read(disk: &Path) -> Result<Vec<Partition>> {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(disk)
        .output()
        .context("running sfdisk -J")?;
    if !out.status.success() {
        bail!(
            "sfdisk -J {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&out.stdout)
}

/// The ESP and the root partition of bootc's table on `disk`.
pub fn esp_and_root(parts: &[Partition]) -> Result<(&Partition, &Partition)> {
    let find = |t: &str, what: &str| {
        parts
            .iter()
            .find(|p| p.type_guid.eq_ignore_ascii_case(t))
            .with_context(|| format!("the new partition table has no {what} partition"))
    };
    Ok((
        find(ESP_TYPE, "EFI system")?,
        find(ROOT_TYPE_X86_64, "root")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_bootcs_table() {
        let s = script(None);
        assert!(s.starts_with("label: gpt\n"));
        assert!(s.contains(&format!(
            "size=1MiB, type={BIOS_BOOT_TYPE}, name=\"BIOS-BOOT\""
        )));
        assert!(s.contains(&format!(
            "size=1024MiB, type={ESP_TYPE}, name=\"EFI-SYSTEM\""
        )));
        assert!(s.ends_with(&format!("type={ROOT_TYPE_X86_64}, name=\"root\"\n")));
        assert!(script(Some(5 * MIB + 1)).contains("size=6MiB, type=4F68"));
    }

    #[test]
    fn parses_sfdisk_json() {
        let j = br#"{"partitiontable":{"label":"gpt","id":"X","device":"d","unit":"sectors",
            "firstlba":2048,"lastlba":6291422,"sectorsize":512,"partitions":[
            {"node":"d1","start":2048,"size":2048,"type":"21686148-6449-6E6F-744E-656564454649","uuid":"a","name":"BIOS-BOOT"},
            {"node":"d2","start":4096,"size":2097152,"type":"C12A7328-F81F-11D2-BA4B-00A0C93EC93B","uuid":"b","name":"EFI-SYSTEM"},
            {"node":"d3","start":2101248,"size":4188160,"type":"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709","uuid":"c","name":"root"}]}}"#;
        let p = parse(j).unwrap();
        let (esp, root) = esp_and_root(&p).unwrap();
        assert_eq!(esp.offset(), 4096 * 512);
        assert_eq!(esp.bytes(), ESP_SIZE);
        assert_eq!(root.name, "root");
        assert!(parse(br#"{"partitiontable":{"label":"dos","partitions":[]}}"#).is_err());
        assert!(esp_and_root(&p[..1]).is_err());
    }
}
