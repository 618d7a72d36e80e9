//! A small tmpfs mounted where a component writes, to fill its disk on purpose (the
//! disk-full scenarios of `docs/reliability.md`). Mounting needs root; a test that
//! cannot mount fails, naming the command and its error, and never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory; unmounted when dropped (also when the test
/// panics).
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Creates `dir` and mounts a tmpfs of `size` (as `mount -o size=` takes it:
    /// `256k`, `1m`) on it.
    ///
    /// # Panics
    ///
    /// When the mount fails (not root, no tmpfs), with the command's error.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("the mount point");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .args(["tmpfs"])
            .arg(dir));
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    /// Makes the tmpfs `size` big (`mount -o remount,size=`), its files kept: room
    /// again after the disk was full.
    ///
    /// # Panics
    ///
    /// When the remount fails.
    pub fn resize(&self, size: &str) {
        run(Command::new("mount")
            .arg("-o")
            .arg(format!("remount,size={size}"))
            .arg(&self.dir));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a child still holding a file open (killed, not yet reaped) must not
        // leave the mount behind.
        match Command::new("umount").arg("-l").arg(&self.dir).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "umount -l {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("umount -l {}: {e}", self.dir.display()),
        }
    }
}

/// Runs `cmd` and returns its stdout; panics with its stderr when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {} (the disk-full tests mount a tmpfs and must run as root)",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
