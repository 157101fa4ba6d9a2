//! dfget: download a URL through the cluster into a file.
//!
//! The bytes are fetched by the local peerd (so they land in its cache and
//! are shared with other hosts); dfget copies each piece into a temporary
//! file next to the output as soon as peerd has verified it, and renames the
//! file into place only when every piece (and `--digest`, if given) checks
//! out. A failed or interrupted dfget leaves no output file behind.

mod output;
mod stream;

use api::cli::{Failure, exit, fail, from_remote, from_status, parse_headers};
use api::digest::FileDigest;
use api::local::LocalClient;
use api::proto::{DownloadRequest, Header, TaskInfo, TaskSource};
use api::task::TaskId;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use output::PartialOutput;
use std::io::IsTerminal;
use std::path::PathBuf;
use stream::StreamOutput;

#[derive(Parser, Debug)]
#[command(
    name = "dfget",
    version,
    about = "Download a URL through the dffs P2P cluster"
)]
pub struct Args {
    /// The URL to download (http or https).
    pub url: String,
    /// Where to write the file; `-` is standard output. A device or pipe
    /// (e.g. /dev/null) is written to, not replaced.
    #[arg(short = 'O', long = "output", required_unless_present = "id")]
    pub output: Option<PathBuf>,
    /// peerd's Unix socket.
    #[arg(long, default_value = "/run/dffs/peerd.sock", env = "DFFS_SOCKET")]
    pub socket: PathBuf,
    /// Header sent to the origin, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Makes the same URL another task (e.g. a version).
    #[arg(long, default_value = "")]
    pub tag: String,
    /// Names the application; like --tag, part of the task-id.
    #[arg(long, default_value = "")]
    pub application: String,
    /// Expected digest of the whole file, sha256:HEX.
    #[arg(long)]
    pub digest: Option<FileDigest>,
    /// Print the task-id and exit.
    #[arg(long)]
    pub id: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let id = TaskId::from_source(&args.url, &args.tag, &args.application)
        .map_err(|e| fail(exit::USAGE, e.to_string()))?;
    if args.id {
        println!("{id}");
        return Ok(());
    }
    let headers = parse_headers(&args.headers)?;
    let output = args.output.clone().expect("clap requires -O without --id");
    let mut partial: Box<dyn Output> = if StreamOutput::wanted_for(&output) {
        Box::new(StreamOutput::new(&output))
    } else {
        Box::new(PartialOutput::create(&output).map_err(|e| fail(exit::OUTPUT, e))?)
    };
    let result = download(&args, headers, partial.as_mut()).await;
    match result {
        Ok(()) => partial.commit().map_err(|e| fail(exit::OUTPUT, e)),
        Err(failure) => {
            partial.discard();
            Err(failure)
        }
    }
}

/// Where the downloaded bytes go. Implementations write nothing visible at
/// the target until `commit`, which runs only after every piece and any
/// `--digest` checked out.
trait Output {
    /// Takes note of pieces that peerd has just verified.
    fn copy_pieces(&mut self, info: &TaskInfo, pieces: &[u32]) -> Result<(), String>;
    /// Called once every piece is present.
    fn finish(&mut self, content_length: u64) -> Result<(), String>;
    /// The SHA-256 of what `commit` would deliver.
    fn sha256(&self) -> Result<FileDigest, String>;
    /// Delivers the output to its target.
    fn commit(self: Box<Self>) -> Result<(), String>;
    /// Gives up, leaving nothing behind.
    fn discard(self: Box<Self>);
}

/// Longest peerd may take to start a download: it may first wait for
/// another host to resolve the task at the origin.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn download(
    args: &Args,
    headers: Vec<Header>,
    partial: &mut dyn Output,
) -> Result<(), Failure> {
    let client = LocalClient::connect(&args.socket)
        .await
        .map_err(|e| api::cli::peerd_unreachable(&args.socket, &e))?;
    let request = DownloadRequest {
        source: Some(TaskSource {
            url: args.url.clone(),
            tag: args.tag.clone(),
            application: args.application.clone(),
        }),
        headers,
        task_id: String::new(),
        in_order: false,
    };
    let mut stream = client
        .download(request, START_TIMEOUT)
        .await
        .map_err(|e| from_remote(&e, &args.url))?;
    let bar = progress_bar(args.quiet);
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(fail(
                    exit::OTHER,
                    "peerd ended the download without finishing it; see peerd's log",
                ));
            }
            Err(s) => {
                bar.finish_and_clear();
                return Err(from_status(&s, &args.url));
            }
        };
        let info = message.task.unwrap_or_default();
        let meta = info.meta.clone().unwrap_or_default();
        partial
            .copy_pieces(&info, &message.new_pieces)
            .map_err(|e| fail(exit::OUTPUT, e))?;
        bar.set_length(meta.content_length);
        bar.set_position(message.completed_bytes);
        if message.done {
            bar.finish_and_clear();
            partial
                .finish(meta.content_length)
                .map_err(|e| fail(exit::OUTPUT, e))?;
            break;
        }
    }
    if let Some(expected) = &args.digest {
        let actual = partial.sha256().map_err(|e| fail(exit::OUTPUT, e))?;
        if &actual != expected {
            return Err(fail(
                exit::DIGEST_MISMATCH,
                format!(
                    "digest mismatch for {}: expected {expected}, got {actual}; the output was not written",
                    args.url
                ),
            ));
        }
    }
    Ok(())
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
