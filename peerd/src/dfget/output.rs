//! The output file: written under a temporary name next to the target and
//! renamed into place only when complete and verified.
//!
//! When peerd's cache is on the same filesystem as the output, the output
//! becomes a hard link to the cached copy once the download is complete:
//! no byte is written twice. peerd notices if anyone later writes to that
//! shared file and verifies the cache again before using it. Elsewhere, or
//! where the link is not allowed, each piece is copied in the kernel as
//! soon as peerd has verified it.

use api::digest::FileDigest;
use api::proto::TaskInfo;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub struct PartialOutput {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    content: Option<File>,
    content_path: PathBuf,
    /// The cache is on the output's filesystem: link instead of copying.
    link: bool,
    piece_length: u64,
    content_length: u64,
}

impl PartialOutput {
    pub fn create(target: &Path) -> Result<PartialOutput, String> {
        if target.is_dir() {
            return Err(format!(
                "output {} is a directory; give a file name with -O",
                target.display()
            ));
        }
        let name = target
            .file_name()
            .ok_or_else(|| format!("output {} has no file name", target.display()))?
            .to_string_lossy();
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = dir.join(format!(".{name}.dfget-{}.part", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| format!("cannot write output in {}: {e}", dir.display()))?;
        Ok(PartialOutput {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
            content: None,
            content_path: PathBuf::new(),
            link: false,
            piece_length: 0,
            content_length: 0,
        })
    }

    fn io_error(&self, e: std::io::Error) -> String {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            format!(
                "no space left on device writing {}; free space or choose another -O",
                self.target.display()
            )
        } else {
            format!("writing {} failed: {e}", self.target.display())
        }
    }

    /// Copies in the kernel (copy_file_range), so the bytes never pass
    /// through dfget and a reflinking filesystem may share them instead.
    /// Across filesystems the kernel may refuse; then copy by hand.
    fn copy_range(&self, start: u64, len: u64) -> std::io::Result<()> {
        let (Some(from), Some(to)) = (&self.content, &self.file) else {
            return Ok(());
        };
        let mut off_in = start as i64;
        let mut off_out = start as i64;
        let mut left = len as usize;
        while left > 0 {
            // SAFETY: both descriptors are open for the call and the offsets
            // are valid pointers to locals.
            let n = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    &mut off_in,
                    to.as_raw_fd(),
                    &mut off_out,
                    left,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                let unsupported = matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                );
                if unsupported {
                    return copy_by_hand(from, to, off_in as u64, left);
                }
                return Err(e);
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "peerd's cached copy is shorter than expected",
                ));
            }
            left -= n as usize;
        }
        Ok(())
    }
}

impl super::Output for PartialOutput {
    /// Copies pieces that peerd reports present from its content file.
    fn copy_pieces(&mut self, info: &TaskInfo, pieces: &[u32]) -> Result<(), String> {
        if pieces.is_empty() {
            return Ok(());
        }
        if self.content.is_none() {
            let meta = info.meta.clone().unwrap_or_default();
            self.piece_length = meta.piece_length.max(1);
            self.content_length = meta.content_length;
            let content = File::open(&info.content_path)
                .map_err(|e| format!("cannot read peerd's cached copy {}: {e}; is dfget allowed to read peerd's data directory?", info.content_path))?;
            self.link = same_filesystem(&content, &self.temp);
            self.content_path = PathBuf::from(&info.content_path);
            self.content = Some(content);
        }
        if self.link {
            return Ok(());
        }
        for &n in pieces {
            let start = u64::from(n) * self.piece_length;
            let len = self
                .piece_length
                .min(self.content_length.saturating_sub(start));
            self.copy_range(start, len).map_err(|e| self.io_error(e))?;
        }
        Ok(())
    }

    /// Completes the output: links it to the cached copy, or gives the
    /// copy its exact length.
    fn finish(&mut self, content_length: u64) -> Result<(), String> {
        if self.link {
            let _ = std::fs::remove_file(&self.temp);
            match std::fs::hard_link(&self.content_path, &self.temp) {
                Ok(()) => return Ok(()),
                // E.g. protected_hardlinks for another user: copy instead,
                // which is correct, only slower.
                Err(_) => {
                    let file = OpenOptions::new()
                        .write(true)
                        .read(true)
                        .create_new(true)
                        .open(&self.temp)
                        .map_err(|e| self.io_error(e))?;
                    self.file = Some(file);
                    self.link = false;
                    self.copy_range(0, content_length)
                        .map_err(|e| self.io_error(e))?;
                }
            }
        }
        if let Some(file) = &self.file {
            file.set_len(content_length).map_err(|e| self.io_error(e))?;
        }
        Ok(())
    }

    fn sha256(&self) -> Result<FileDigest, String> {
        let file = File::open(&self.temp).map_err(|e| self.io_error(e))?;
        FileDigest::of_reader(std::io::BufReader::with_capacity(1 << 20, file))
            .map_err(|e| self.io_error(e))
    }

    fn commit(mut self: Box<Self>) -> Result<(), String> {
        self.file.take();
        std::fs::rename(&self.temp, &self.target).map_err(|e| {
            let _ = std::fs::remove_file(&self.temp);
            format!(
                "cannot move the download into place at {}: {e}",
                self.target.display()
            )
        })
    }

    fn discard(mut self: Box<Self>) {
        self.file.take();
        let _ = std::fs::remove_file(&self.temp);
    }
}

fn same_filesystem(a: &File, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

fn copy_by_hand(from: &File, to: &File, mut offset: u64, mut left: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; left.min(1 << 20)];
    while left > 0 {
        let n = left.min(buf.len());
        from.read_exact_at(&mut buf[..n], offset)?;
        to.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
        left -= n;
    }
    Ok(())
}

impl Drop for PartialOutput {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
