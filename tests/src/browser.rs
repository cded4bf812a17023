//! The web console in a real browser: Debian's Chromium, driven by
//! `tests/browser/screenshot.mjs` (Playwright), logs in through the login
//! form and screenshots pages into `tests/artifacts/` for people to look at.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::controller::{Controller, ADMIN_USER};
use crate::host_lock::HostLock;
use crate::scratch::unique_name;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
/// A rendered page of text is well above this; an empty PNG is below.
const MIN_SCREENSHOT_BYTES: u64 = 2048;

/// Logs in to `controller` as admin in Chromium, screenshots the dashboard
/// `/` and every page in `pages` (paths such as `/vms/ID`); returns the PNG
/// paths. A page `PATH#FIELD=VALUE` submits the form holding FIELD with
/// VALUE and expects it refused (400) with the value kept and the reason
/// next to the field. Panics with the script's output if login fails, a
/// page does not answer 200 or shows no text, or a refusal is not shown so.
pub fn browser_screenshots(controller: &Controller, pages: &[&str]) -> Vec<PathBuf> {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    install_node_modules(&browser_dir);
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(unique_name("screenshots"));
    std::fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));

    let mut command = Command::new("node");
    command
        .arg(browser_dir.join("screenshot.mjs"))
        .arg("--url")
        .arg(controller.url())
        .arg("--user")
        .arg(ADMIN_USER)
        .arg("--password")
        .arg(controller.admin_password())
        .arg("--out")
        .arg(&out_dir)
        .arg("--ca")
        .arg(controller.ca_pem());
    for page in pages {
        command.arg("--page").arg(page);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "screenshot.mjs failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    let mut expected = vec![out_dir.join("dashboard.png")];
    for page in pages {
        expected.push(out_dir.join(png_name(page)));
    }
    for png in &expected {
        check_png(png);
    }
    expected
}

/// The file screenshot.mjs writes for a page: the path without its leading
/// slashes, every run of other characters than `[A-Za-z0-9._-]` as `-`.
fn png_name(page: &str) -> String {
    let mut name = String::new();
    for c in page.trim_start_matches('/').chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    name + ".png"
}

/// `npm ci` once per checkout; the lock keeps parallel tests from racing.
fn install_node_modules(browser_dir: &Path) {
    let installed = || {
        browser_dir
            .join("node_modules/playwright-core/package.json")
            .is_file()
    };
    if installed() {
        return;
    }
    let _lock = HostLock::acquire("npm-ci");
    if installed() {
        return;
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(browser_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm: {e}"));
    assert!(
        output.status.success(),
        "npm ci in {} failed: {}",
        browser_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn check_png(path: &Path) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
    assert!(
        bytes.starts_with(PNG_SIGNATURE),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() as u64 >= MIN_SCREENSHOT_BYTES,
        "{} is only {} bytes: an empty page?",
        path.display(),
        bytes.len()
    );
}
