//! Where the controller and agent binaries under test are.

use std::path::PathBuf;

/// The `lifeboat` controller binary: `$LIFEBOAT_BIN`, or the one in this
/// test's cargo target directory.
pub fn controller_binary() -> PathBuf {
    locate("lifeboat", "LIFEBOAT_BIN")
}

/// The `lifeboat-agent` binary: `$LIFEBOAT_AGENT_BIN`, or the one in this
/// test's cargo target directory.
pub fn agent_binary() -> PathBuf {
    locate("lifeboat-agent", "LIFEBOAT_AGENT_BIN")
}

fn locate(name: &str, override_var: &str) -> PathBuf {
    let path = match std::env::var_os(override_var) {
        Some(path) => PathBuf::from(path),
        None => target_profile_dir().join(name),
    };
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: build it with \
             `cargo build -p lifeboat -p lifeboat-agent` (tests/run does), \
             or point {override_var} at it",
            path.display()
        );
    }
    // Absolute: agents are started through `nsenter` in cluster hosts,
    // where the working directory is not ours.
    std::path::absolute(&path).unwrap_or(path)
}

/// `target/<profile>`: a test executable is `target/<profile>/deps/<test>-<hash>`.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .expect("test executable has a parent directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent()
            .expect("deps has a parent directory")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}
