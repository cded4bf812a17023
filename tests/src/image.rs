//! Reading and writing disk images from outside QEMU with `qemu-io`: how the
//! tests put known data on a stopped VM's disk and check what a restore wrote.

use std::path::Path;
use std::process::Command;

fn qemu_io(image: &Path, args: &[&str], command: &str) -> (bool, String) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .args(args)
        .arg("-c")
        .arg(command)
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("cannot run qemu-io (is qemu-utils installed?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Checks that `[offset, offset + len)` of a qcow2 image holds `pattern`
/// (0 = zeros). `qemu-io` reports a mismatch in its output, not its status.
pub fn assert_image_pattern(image: &Path, pattern: u8, offset: u64, len: u64) {
    let (ok, text) = qemu_io(
        image,
        &["-r", "-U"],
        &format!("read -P {pattern:#04x} {offset} {len}"),
    );
    assert!(
        ok && text.contains(&format!("read {len}/{len}")) && !text.contains("failed"),
        "{} at {offset}+{len} is not {pattern:#04x}: {text}",
        image.display()
    );
}

/// Writes `len` bytes (qemu-io units: `4M`) of `pattern` at `offset` into a
/// qcow2 image that no VM is using.
pub fn write_image_pattern(image: &Path, pattern: u8, offset: u64, len: &str) {
    let (ok, text) = qemu_io(
        image,
        &[],
        &format!("write -P {pattern:#04x} {offset} {len}"),
    );
    assert!(
        ok && !text.contains("failed"),
        "qemu-io write into {}: {text}",
        image.display()
    );
}

/// `sha256sum FILE`'s digest, lower-case hex.
pub fn sha256_file(file: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
