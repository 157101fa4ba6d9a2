//! Output to something that is not a regular file: standard output (`-O -`),
//! a pipe, or a device such as `/dev/null`.
//!
//! Such a target cannot be replaced by a rename (renaming over `/dev/null`
//! would turn it into an ordinary file for the whole machine) and cannot be
//! rewound, so nothing is written until peerd holds every piece and any
//! `--digest` has been checked against its cached copy. Then the bytes are
//! streamed from the cache, in order, once.

use api::digest::FileDigest;
use api::proto::TaskInfo;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct StreamOutput {
    /// `None` is standard output.
    target: Option<PathBuf>,
    content_path: PathBuf,
    content_length: u64,
}

impl StreamOutput {
    /// Whether `target` must be streamed to rather than replaced: `-`, or
    /// an existing path that is not a regular file or directory.
    pub fn wanted_for(target: &Path) -> bool {
        if target.as_os_str() == "-" {
            return true;
        }
        std::fs::metadata(target).is_ok_and(|m| !m.is_file() && !m.is_dir())
    }

    pub fn new(target: &Path) -> StreamOutput {
        StreamOutput {
            target: (target.as_os_str() != "-").then(|| target.to_path_buf()),
            content_path: PathBuf::new(),
            content_length: 0,
        }
    }

    fn name(&self) -> String {
        match &self.target {
            Some(path) => path.display().to_string(),
            None => "standard output".to_string(),
        }
    }

    fn cached_copy(&self) -> Result<File, String> {
        File::open(&self.content_path).map_err(|e| {
            format!(
                "cannot read peerd's cached copy {}: {e}; is dfget allowed to read peerd's data directory?",
                self.content_path.display()
            )
        })
    }
}

impl super::Output for StreamOutput {
    fn copy_pieces(&mut self, info: &TaskInfo, _pieces: &[u32]) -> Result<(), String> {
        if self.content_path.as_os_str().is_empty() && !info.content_path.is_empty() {
            self.content_path = PathBuf::from(&info.content_path);
        }
        Ok(())
    }

    fn finish(&mut self, content_length: u64) -> Result<(), String> {
        self.content_length = content_length;
        Ok(())
    }

    fn sha256(&self) -> Result<FileDigest, String> {
        let reader = std::io::BufReader::with_capacity(1 << 20, self.cached_copy()?);
        FileDigest::of_reader(std::io::Read::take(reader, self.content_length))
            .map_err(|e| format!("reading peerd's cached copy failed: {e}"))
    }

    fn commit(self: Box<Self>) -> Result<(), String> {
        use std::io::Read;
        let mut from = self.cached_copy()?.take(self.content_length);
        let copied = match &self.target {
            // Opened without create or truncate: it is a device or a pipe.
            Some(path) => OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut to| std::io::copy(&mut from, &mut to)),
            None => {
                let mut stdout = std::io::stdout().lock();
                std::io::copy(&mut from, &mut stdout).and_then(|n| stdout.flush().map(|()| n))
            }
        };
        match copied {
            Ok(n) if n == self.content_length => Ok(()),
            Ok(n) => Err(format!(
                "wrote only {n} of {} bytes to {}: peerd's cached copy was cut short; run dfget again",
                self.content_length,
                self.name()
            )),
            Err(e) => Err(format!("writing to {} failed: {e}", self.name())),
        }
    }

    fn discard(self: Box<Self>) {}
}
