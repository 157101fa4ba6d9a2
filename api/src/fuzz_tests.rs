//! Fuzzing of what the daemons accept from the network and from users:
//! every input is refused with an error or taken, never a panic, and what
//! is taken stays within bounds. `bench/fuzz.sh` runs these far longer
//! than CI does.

use crate::error::RemoteError;
use crate::piece::{Bitmap, Layout, MAX_PIECES};
use crate::proto::*;
use crate::task::{TaskId, normalize_url};
use proptest::prelude::*;
use prost::Message;

/// Decodes `bytes` as `M`, and if that works, re-encodes and decodes again.
fn round_trip<M: Message + Default + PartialEq>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = M::decode(bytes) {
        let again = M::decode(message.encode_to_vec().as_slice()).expect("re-decodes");
        prop_assert!(again == message);
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_message_a_daemon_accepts_decodes_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        round_trip::<AnnounceHostRequest>(&bytes)?;
        round_trip::<RegisterPeerRequest>(&bytes)?;
        round_trip::<GetParentsRequest>(&bytes)?;
        round_trip::<ReportPiecesRequest>(&bytes)?;
        round_trip::<ReportTaskMetaRequest>(&bytes)?;
        round_trip::<LeaveHostRequest>(&bytes)?;
        round_trip::<LeaveTaskRequest>(&bytes)?;
        round_trip::<SeedSessionRequest>(&bytes)?;
        round_trip::<SeedCommand>(&bytes)?;
        round_trip::<GetParentsResponse>(&bytes)?;
        round_trip::<RegisterPeerResponse>(&bytes)?;
        round_trip::<DownloadRequest>(&bytes)?;
        round_trip::<RegisterTaskRequest>(&bytes)?;
        round_trip::<EnsureRangeRequest>(&bytes)?;
        round_trip::<TaskMeta>(&bytes)?;
        round_trip::<ErrorDetail>(&bytes)?;
    }

    #[test]
    fn any_layout_is_refused_or_bounded(length in any::<u64>(), piece in any::<u64>()) {
        if let Ok(layout) = Layout::new(length, piece) {
            prop_assert!(u64::from(layout.piece_count()) <= MAX_PIECES);
            let last = layout.piece_count().saturating_sub(1);
            prop_assert!(layout.piece_range(last).end <= length);
        }
    }

    #[test]
    fn any_bitmap_bytes_give_a_bitmap_of_the_size_asked(count in 0u32..100_000, bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        let map = Bitmap::from_bytes(count, &bytes);
        prop_assert_eq!(map.len(), count);
        prop_assert!(map.iter_ones().all(|n| n < count));
    }

    #[test]
    fn any_status_details_are_read_without_panicking(code in 0i32..17, details in proptest::collection::vec(any::<u8>(), 0..256), message in ".{0,64}") {
        let status = tonic::Status::with_details(tonic::Code::from_i32(code), message, details.into());
        let _ = RemoteError::from_status(&status);
    }

    #[test]
    fn any_text_is_a_task_id_or_refused(text in ".{0,80}") {
        if let Ok(id) = text.parse::<TaskId>() {
            prop_assert_eq!(id.to_string(), text);
        }
    }

    #[test]
    fn any_url_is_normalised_or_refused_and_normalising_is_stable(url in "(https?|ftp)://[a-zA-Z0-9.:@%/?#=&_-]{0,60}") {
        if let Ok(normal) = normalize_url(&url) {
            let again = normalize_url(&normal);
            prop_assert_eq!(again, Ok(normal));
        }
    }

    #[test]
    fn any_config_file_is_taken_or_refused(text in r#"[a-z_ ="\[\],0-9\n.-]{0,200}"#) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let argv = ["demo".to_string(), "--config".into(), path.display().to_string()];
        let _ = crate::config::parse_from::<FuzzArgs, _>(argv);
    }
}

#[derive(clap::Parser, Debug)]
struct FuzzArgs {
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[arg(long, value_delimiter = ',')]
    list: Vec<String>,
    #[arg(long)]
    flag: bool,
}
